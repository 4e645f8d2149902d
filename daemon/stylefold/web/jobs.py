"""Jobs as the API shows them, and the files of a job, found by its id only.

A job's files are never named by the URL: the journal gives the result's name (always
directly in ``outbox/``, whatever path the daemon recorded), the logs share its base
name, and the original is found where the job left it (its claim folder while it runs,
``done/`` through the report, ``failed/`` through the error file). Each is then opened
by ``open_inside`` from the folder it must be in.
"""

from __future__ import annotations

import json
import re
import time
from dataclasses import dataclass
from pathlib import PurePosixPath
from typing import Any

from ..hotfolder import live
from ..hotfolder.claims import JOB_FILE, ORIGINALS, ClaimMeta, is_held
from ..hotfolder.journal import JobRecord, JobState
from ..hotfolder.layout import HotFolder, is_image
from .safefiles import OpenedFile, UnsafePath, open_inside

__all__ = ["JOB_ID", "STATES", "FileKind", "JobFiles", "job_view"]

JOB_ID = re.compile(r"^[0-9a-z][0-9a-z-]{0,63}$")
# The API's states (SPEC §7); the journal's "queued" (stopped, resumes) is waiting.
STATES = {"waiting": (JobState.QUEUED,), "running": (JobState.RUNNING,), "done": (JobState.DONE,),
          "failed": (JobState.FAILED,)}
API_STATE = {JobState.QUEUED: "waiting", JobState.RUNNING: "running", JobState.DONE: "done",
             JobState.FAILED: "failed"}
FileKind = str  # result, original, losses.csv, preview, report, plot, current
MAX_JSON = 1 << 20


@dataclass
class JobFiles:
    hot: HotFolder

    def open(self, record: JobRecord, kind: FileKind) -> OpenedFile:
        """The file ``kind`` of the job; UnsafePath (404) when it has none."""
        if kind == "current":
            return open_inside(live.live_dir(self.hot), f"{record.id}/{live.IMAGE_FILE}")
        if kind == "original":
            return self._original(record)
        base = self.result_name(record)
        if base is None:
            raise UnsafePath("this job has no result")
        stem = PurePosixPath(base).stem
        where = {"result": (self.hot.outbox, base), "losses.csv": (self.hot.logs, f"{stem}.losses.csv"),
                 "report": (self.hot.logs, f"{stem}.json"), "plot": (self.hot.logs, f"{stem}.losses.png"),
                 "preview": (self.hot.outbox / "previews", f"{stem}.jpg")}
        if kind not in where:
            raise UnsafePath(f"no file {kind!r}")
        folder, name = where[kind]
        return open_inside(folder, name)

    @staticmethod
    def result_name(record: JobRecord) -> str | None:
        if record.state is not JobState.DONE or not record.output:
            return None
        return _plain_name(record.output)

    def claim_meta(self, job_id: str) -> ClaimMeta | None:
        try:
            raw = open_inside(self.hot.work, f"{job_id}/{JOB_FILE}").read(MAX_JSON)
            return ClaimMeta.from_bytes(raw)
        except (UnsafePath, ValueError):
            return None

    def report(self, record: JobRecord) -> dict[str, Any] | None:
        try:
            data = json.loads(self.open(record, "report").read(MAX_JSON))
        except (UnsafePath, ValueError):
            return None
        return data if isinstance(data, dict) else None

    def failed_original(self, record: JobRecord) -> tuple[str, str | None] | None:
        """A failed job's original and sidecar still in failed/: their paths there."""
        error_name = _plain_name(record.output or "")
        folder = PurePosixPath(record.source).parent
        if record.state is not JobState.FAILED or error_name is None or not error_name.endswith(".error.json"):
            return None
        try:
            body = json.loads(open_inside(self.hot.failed, str(folder / error_name)).read(MAX_JSON))
            name = _plain_name(str(body["file"]))
        except (UnsafePath, ValueError, KeyError, TypeError):
            return None
        if name is None or not is_image(name):
            return None  # a sidecar whose image never came (no_image) has nothing to retry
        try:
            open_inside(self.hot.failed, str(folder / name)).close()
        except UnsafePath:
            return None
        sidecar = str(folder / f"{PurePosixPath(name).stem}.json")
        try:
            open_inside(self.hot.failed, sidecar).close()
        except UnsafePath:
            return str(folder / name), None
        return str(folder / name), sidecar

    def _original(self, record: JobRecord) -> OpenedFile:
        if record.state in (JobState.RUNNING, JobState.QUEUED):
            meta = self.claim_meta(record.id)
            if meta is None or _plain_name(meta.name) is None:
                raise UnsafePath("the job's claim is gone")
            return open_inside(self.hot.work, f"{record.id}/{ORIGINALS}/{meta.name}")
        if record.state is JobState.FAILED:
            found = self.failed_original(record)
            if found is None:
                raise UnsafePath("the original is no longer in failed/")
            return open_inside(self.hot.failed, found[0])
        report = self.report(record) or {}
        moved = _plain_name(str((report.get("input") or {}).get("path") or ""))
        if moved is None:
            raise UnsafePath("the report does not say where the original went")
        return open_inside(self.hot.done, str(PurePosixPath(record.source).parent / moved))


def _plain_name(path: str) -> str | None:
    name = PurePosixPath(path.replace("\\", "/")).name
    return name if name and name not in (".", "..") and "\x00" not in name else None


def job_view(record: JobRecord, files: JobFiles, *, detail: bool = False) -> dict[str, Any]:
    """A job as ``/api/jobs`` and ``/api/status`` show it."""
    progress = record.progress or {}
    view: dict[str, Any] = {
        "id": record.id, "name": record.name, "source": record.source, "state": API_STATE[record.state],
        "step": progress.get("step"), "steps": progress.get("steps"), "total_loss": progress.get("total_loss"),
        "created": record.created, "updated": record.updated, "attempts": record.attempts,
        "result": files.result_name(record),
        "error": {"kind": record.error_kind, "error": record.error} if record.state is JobState.FAILED else None,
    }
    if record.state in (JobState.RUNNING, JobState.QUEUED):
        view.update(_running(record, files))
    if record.state is JobState.FAILED:
        view["retryable"] = files.failed_original(record) is not None
    if detail:
        view["preset"] = _preset(record, files)
        if record.state is JobState.DONE and view["preset"]:
            # A finished job's progress is cleared from the journal; its report has the steps.
            view["step"] = (files.report(record) or {}).get("steps_run")
            view["steps"] = (view["preset"].get("effective") or {}).get("steps")
    return view


def _running(record: JobRecord, files: JobFiles) -> dict[str, Any]:
    progress = record.progress or {}
    folder = files.hot.work / record.id
    claim = "running" if is_held(folder) else ("interrupted" if folder.is_dir() else "stale")
    step, steps, elapsed = progress.get("step"), progress.get("steps"), progress.get("elapsed_s")
    rate = eta = None
    if isinstance(step, int) and isinstance(elapsed, int | float) and elapsed > 0 and step > 0:
        rate = step / elapsed
        if isinstance(steps, int):
            eta = max(0.0, (steps - step) / rate)
    meta = files.claim_meta(record.id)
    preset = meta.spec.preset_source if meta is not None and meta.spec is not None else None
    has_image = (live.live_dir(files.hot) / record.id / live.IMAGE_FILE).is_file()
    return {"claim": claim, "rate": rate, "eta_s": eta, "preset_source": preset, "has_current": has_image,
            "age_s": round(time.time() - record.updated, 1)}


def _preset(record: JobRecord, files: JobFiles) -> dict[str, Any] | None:
    """The effective preset: from the claim while the job lives, then from its report."""
    meta = files.claim_meta(record.id)
    if meta is not None and meta.spec is not None:
        effective: dict[str, Any] = meta.spec.preset.effective()
        return {"source": meta.spec.preset_source, "effective": effective}
    report = files.report(record) if record.state is JobState.DONE else None
    preset = (report or {}).get("preset")
    return preset if isinstance(preset, dict) else None
