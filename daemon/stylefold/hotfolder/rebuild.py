"""A lost journal rebuilt from what the folders say, and the daemon's way to open one.

The folders are the source of truth for where each file is (``journal.py``), and what
they hold is enough to give the journal back what it is used for:

- **done** jobs from ``outbox/logs/*.json`` (the reports, SPEC §5): the input's sha256,
  the effective preset and the styles' sha256 and weights, from which the duplicate
  check's ``preset_key`` is computed exactly as the worker does
  (``job.spec.result_key``), and the result's path. So a photo already made with the
  same preset is skipped again, not made twice (README "A photo that is not made again").
- **failed** jobs from ``failed/**/*.error.json``: kind, sentence, source, job id and
  the photo's sha256, which lets a successful retry remove its old error file. An
  error file from before the sha256 was recorded gets that of the photo beside it; if
  the photo is no longer there (put back into the inbox), the record has none, and
  that old error file stays.
- **interrupted or running** jobs from ``.stylefold/work/*/job.json`` (``ClaimMeta``):
  ``running`` when a live process holds the claim (another daemon: its later updates
  of the job land on this record), else ``queued`` (it resumes at the next look). How
  many attempts a claim already took is not kept anywhere but the lost journal: it is
  taken as ``INTERRUPTED_ATTEMPTS`` (1), as if it had crashed the process once, so a
  file that keeps killing the daemon is still set aside, one crash later at most.

Every file read is untrusted: not a regular file (a FIFO, a symlink), larger than its
cap, not JSON, wrong types: it is skipped with a warning (the first few by name, then a
count), never a traceback. Torch-free.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import os
import re
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from ..job.spec import result_key
from ..presets import Preset
from ..safeopen import open_regular, sha256_regular
from .claims import JOB_FILE, ClaimMeta, is_held
from .journal import BUSY_TIMEOUT_S, JobRecord, JobState, Journal
from .layout import HotFolder

__all__ = ["INTERRUPTED_ATTEMPTS", "open_journal", "records_from_folders"]

logger = logging.getLogger(__name__)

INTERRUPTED_ATTEMPTS = 1
MAX_REPORT_BYTES = 1 << 20
MAX_ERROR_FILE_BYTES = 64 << 10
MAX_CLAIM_BYTES = 4 << 20
MAX_NAMED_WARNINGS = 10
MAX_TEXT = 2000
_SHA256 = re.compile(r"^[0-9a-f]{64}$")


class _Bad(ValueError):
    """A file of the folders that says nothing usable; ``str()`` says why."""


def open_journal(hot: HotFolder, *, busy_timeout_s: float = BUSY_TIMEOUT_S,
                 on_wait: Callable[[], None] | None = None) -> Journal:
    """The daemon's journal: a corrupt, missing or deleted one is rebuilt from ``hot``'s
    folders (see ``Journal``); ``on_wait`` is called while another process holds it."""
    return Journal(hot.journal, rebuild=lambda: records_from_folders(hot), busy_timeout_s=busy_timeout_s,
                   on_wait=on_wait)


def records_from_folders(hot: HotFolder) -> list[JobRecord]:
    """The journal's records as the folders tell them: claims first (a job that is both
    published and still claimed is still running: its claim is what counts), then the
    reports of done jobs, then the error files of failed ones."""
    skipped = _Skipped()
    records = [*_from_claims(hot, skipped), *_from_reports(hot, skipped), *_from_error_files(hot, skipped)]
    skipped.summary()
    return records


class _Skipped:
    def __init__(self) -> None:
        self.count = 0

    def add(self, path: Path, reason: object) -> None:
        self.count += 1
        if isinstance(reason, ValidationError):  # its first errors, not its help links
            reason = "; ".join(f"{'.'.join(map(str, e['loc'])) or 'the file'}: {e['msg']}"
                               for e in reason.errors()[:3])
        if self.count <= MAX_NAMED_WARNINGS:
            logger.warning("journal rebuild: skipped %s (%s)", _shown(str(path)), _shown(str(reason)[:300]))

    def summary(self) -> None:
        if self.count > MAX_NAMED_WARNINGS:
            logger.warning("journal rebuild: skipped %d files in all that said nothing usable", self.count)


def _each(paths: Iterator[Path], parse: Callable[[Path], JobRecord | None],
          skipped: _Skipped) -> Iterator[JobRecord]:
    for path in paths:
        try:
            record = parse(path)
        except (OSError, ValueError, TypeError, KeyError, RecursionError) as exc:  # ValidationError is a ValueError
            skipped.add(path, exc)
            continue
        if record is not None:
            yield record


# ---------------------------------------------------------------- claims


def _from_claims(hot: HotFolder, skipped: _Skipped) -> Iterator[JobRecord]:
    if not hot.work.is_dir():
        return
    folders = (p for p in sorted(hot.work.iterdir()) if not p.name.startswith(".") and p.is_dir())
    yield from _each(folders, _claim_record, skipped)


def _claim_record(folder: Path) -> JobRecord | None:
    job_file = folder / JOB_FILE
    if not job_file.exists():
        return None  # a claim that never happened; the service's recovery removes it
    raw, st = _read_capped(job_file, MAX_CLAIM_BYTES)
    meta = ClaimMeta.from_bytes(raw)
    spec = meta.spec
    return JobRecord(
        id=folder.name, name=meta.name, source=meta.source,
        sha256=spec.input.sha256 if spec else meta.sha256, preset_key=spec.result_key() if spec else "",
        state=JobState.RUNNING if is_held(folder) else JobState.QUEUED, attempts=INTERRUPTED_ATTEMPTS,
        output=None, error_kind=None, error=None, created=meta.claimed_at, updated=st.st_mtime, progress=None,
    )


# ---------------------------------------------------------------- reports of done jobs


def _from_reports(hot: HotFolder, skipped: _Skipped) -> Iterator[JobRecord]:
    if not hot.logs.is_dir():
        return
    reports = (p for p in sorted(hot.logs.iterdir()) if p.suffix == ".json" and not p.name.startswith("."))
    yield from _each(reports, lambda p: _report_record(hot, p), skipped)


def _report_record(hot: HotFolder, path: Path) -> JobRecord | None:
    raw, st = _read_capped(path, MAX_REPORT_BYTES)
    report = _obj(json.loads(raw), "the report")
    if report.get("status") != "done":
        raise _Bad(f"not the report of a done job (status {str(report.get('status'))[:40]!r})")
    job_id = _str(report, "job_id")
    given = _obj(report.get("input"), "input")
    sha256 = _sha256(given.get("sha256"), "input.sha256")
    name = _str(given, "name")
    preset = Preset.model_validate(_obj(_obj(report.get("preset"), "preset").get("effective"), "preset.effective"))
    output = _str(_obj(report.get("output"), "output"), "path")
    source = given.get("source")
    return JobRecord(
        id=job_id, name=name,
        source=source.removeprefix("inbox/") if isinstance(source, str) and source.startswith("inbox/") else name,
        sha256=sha256, preset_key=result_key(preset, _styles(report.get("styles"))), state=JobState.DONE,
        attempts=1, output=_where_now(hot, output), error_kind=None, error=None,
        created=_time(report.get("started_at"), st.st_mtime), updated=_time(report.get("finished_at"), st.st_mtime),
        progress=None,
    )


def _styles(value: object) -> list[tuple[str, float]]:
    """The styles as ``result_key`` takes them: (sha256, weight), in the report's order
    (the job's order)."""
    if not isinstance(value, list) or not 1 <= len(value) <= 8:
        raise _Bad("styles: not a list of 1 to 8 styles")
    styles = []
    for i, entry in enumerate(value):
        style = _obj(entry, f"styles[{i}]")
        weight = style.get("weight")
        if isinstance(weight, bool) or not isinstance(weight, int | float):
            raise _Bad(f"styles[{i}].weight: not a number")
        styles.append((_sha256(style.get("sha256"), f"styles[{i}].sha256"), float(weight)))
    return styles


def _where_now(hot: HotFolder, output: str) -> str:
    """The result as the report names it; if the hot folder was moved since, the file of
    that name in this ``outbox/`` (the duplicate check looks whether the result exists)."""
    recorded = Path(output)
    here = hot.outbox.absolute() / recorded.name
    return str(here) if not recorded.exists() and here.is_file() else output


# ---------------------------------------------------------------- error files of failed jobs


def _from_error_files(hot: HotFolder, skipped: _Skipped) -> Iterator[JobRecord]:
    if not hot.failed.is_dir():
        return
    yield from _each(_error_files(hot.failed), _error_record, skipped)


def _error_files(failed: Path) -> Iterator[Path]:
    for dirpath, dirnames, filenames in os.walk(failed):  # symlinked folders are not followed
        dirnames.sort()
        for name in sorted(filenames):
            if name.endswith(".error.json") and not name.startswith("."):
                yield Path(dirpath) / name


def _error_record(path: Path) -> JobRecord:
    raw, st = _read_capped(path, MAX_ERROR_FILE_BYTES)
    body = _obj(json.loads(raw), "the error file")
    photo = _str(body, "file")
    if Path(photo).name != photo or photo in (".", ".."):
        raise _Bad("file: not a file name")
    return JobRecord(
        id=_str(body, "job_id"), name=photo, source=_str(body, "source"), sha256=_recorded_or_hashed(body, path, photo),
        preset_key="", state=JobState.FAILED, attempts=1, output=str(path), error_kind=_str(body, "kind")[:64],
        error=_str(body, "error")[:MAX_TEXT], created=st.st_mtime, updated=st.st_mtime, progress=None,
    )


def _recorded_or_hashed(body: dict[str, Any], path: Path, photo: str) -> str:
    """The sha256 the error file records (since it does), else that of the photo beside it."""
    recorded = body.get("sha256")
    if isinstance(recorded, str) and len(recorded) == 64 and all(c in "0123456789abcdef" for c in recorded):
        return recorded
    return _hash_if_there(path.with_name(photo))


def _hash_if_there(photo: Path) -> str:
    try:
        return sha256_regular(photo)
    except OSError:  # put back into the inbox for a retry, never there, or not a regular file
        return ""


# ---------------------------------------------------------------- reading untrusted files


def _read_capped(path: Path, cap: int) -> tuple[bytes, os.stat_result]:
    """The bytes of a regular file of at most ``cap`` bytes; never follows a symlink and
    never blocks on a FIFO."""
    with open_regular(path) as f:  # NotRegularFile (an OSError) for a FIFO, a link...
        st = os.fstat(f.fileno())
        raw = f.read(cap + 1)
    if len(raw) > cap:
        raise _Bad(f"larger than {cap // 1024} KB")
    return raw, st


def _obj(value: object, what: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise _Bad(f"{what}: not an object")
    return value


def _str(data: dict[str, Any], key: str) -> str:
    value = data.get(key)
    if not isinstance(value, str) or not value or len(value) > 8192:
        raise _Bad(f"{key}: not a text of 1 to 8192 characters")
    return value


def _sha256(value: object, what: str) -> str:
    if not isinstance(value, str) or not _SHA256.match(value):
        raise _Bad(f"{what}: not a sha256")
    return value


def _time(value: object, fallback: float) -> float:
    if isinstance(value, str):
        try:
            return dt.datetime.fromisoformat(value).timestamp()
        except (ValueError, OverflowError, OSError):
            pass
    return fallback


def _shown(text: str) -> str:
    """Control characters escaped: a file name must not forge log lines."""
    return text.encode("unicode_escape", "backslashreplace").decode("ascii") if not text.isprintable() else text
