"""One claimed job: preset -> render (with checkpoints) -> outputs -> move originals.

Every outcome ends with the original (and its sidecar) in done/ or failed/, except a
graceful stop, which leaves the claim folder with a checkpoint for the next start. A
job's attempts are counted before it starts, so a file that keeps killing the process
is failed as poison after ``MAX_ATTEMPTS`` instead of crashing the daemon forever.
"""

from __future__ import annotations

import errno
import hashlib
import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from typing import Any

import torch

from .claims import Claim
from .digest import sha256_file
from .engine import StepInfo
from .folders import HotFolder, move_no_clobber, write_error_file
from .jobs import JobState, Journal
from .outputs import OutputPaths
from .pipeline import Checkpoint, JobFailure, Rendered, Stylist
from .presets import Preset, PresetError, PresetLibrary, read_preset_json

__all__ = ["FatalDeviceError", "Outcome", "Worker"]

logger = logging.getLogger(__name__)

MAX_ATTEMPTS = 3
RESULT_FILE = "result.json"


class FatalDeviceError(RuntimeError):
    """A CUDA error other than out-of-memory: the process should end for systemd to
    restart it with a fresh context; the job stays claimed and resumes."""


class Outcome(str, Enum):
    DONE = "done"
    FAILED = "failed"
    STOPPED = "stopped"
    DUPLICATE = "duplicate"


@dataclass
class JobEvents:
    """Callbacks for the console and sd_notify; all optional."""

    on_start: Callable[[Claim, Preset], None] | None = None
    on_step: Callable[[Claim, StepInfo], None] | None = None


@dataclass
class Worker:
    hot: HotFolder
    journal: Journal
    stylist: Stylist
    library: PresetLibrary
    checkpoint_every: int = 50
    events: JobEvents = field(default_factory=JobEvents)

    def run(self, claim: Claim, should_stop: Callable[[], bool]) -> Outcome:
        started = time.perf_counter()
        if claim.image.is_symlink():
            # Never followed: a link could point at any file the daemon can read.
            self._start(claim, "", "")
            return self._fail(claim, "unsupported_file", f"{claim.meta['name']} is a symbolic link; links are "
                              "not followed, drop the file itself", started)
        try:
            sha = sha256_file(claim.image)
        except OSError as exc:  # unreadable (permissions): fail it, never crash-loop on it
            self._start(claim, "", "")
            return self._fail(claim, "unreadable_image", f"{claim.meta['name']} cannot be read ({exc.strerror})",
                              started)
        preset: Preset | None = None
        try:
            preset = self._preset(claim)
            styles = [(self.library.resolve_style(r.path), r.weight) for r in preset.style_refs()]
            key = _preset_key(preset, styles)
        except (PresetError, JobFailure) as exc:
            self._start(claim, sha, "")
            return self._fail(claim, getattr(exc, "kind", "invalid_preset"), str(exc), started)
        except OSError as exc:
            # The OS refusing a style path (a 300-character name is ENAMETOOLONG, an
            # unreadable style file EACCES) escaped here and stopped the daemon before the
            # attempt was counted, so the resumed claim stopped it again on every restart.
            self._start(claim, sha, "")
            style = Path(exc.filename).name[:80] if isinstance(exc.filename, str) else "the style"
            return self._fail(claim, "style_not_found", f"{style}: cannot be opened ({exc.strerror or exc})",
                              started)
        except Exception as exc:  # one bad preset never stops the daemon
            logger.exception("%s: preparing the job failed", claim.meta["source"])
            self._start(claim, sha, "")
            return self._fail(claim, "internal", f"internal error: {exc}", started)
        attempt = self._start(claim, sha, key)
        if attempt > MAX_ATTEMPTS:
            return self._fail(claim, "internal", f"this file stopped the daemon {attempt - 1} times and was set aside",
                              started)
        previous = self.journal.find_done(sha, key)
        if previous is not None and previous.output and Path(previous.output).exists():
            logger.info("%s: same photo and preset as job %s; result is %s", claim.meta["source"], previous.id,
                        previous.output)
            self._move_originals(claim, self.hot.done)
            self.journal.set_state(claim.job_id, JobState.DONE, output=previous.output)
            claim.finish()
            return Outcome.DUPLICATE
        if self.events.on_start:
            self.events.on_start(claim, preset)
        try:
            rendered = Rendered.load(claim.folder) or self._render(claim, preset, styles, should_stop, sha)
            if rendered is None:
                return Outcome.STOPPED
            paths = self._publish(claim, rendered)
        except JobFailure as exc:
            return self._fail(claim, exc.kind, exc.message, started)
        except torch.OutOfMemoryError:
            return self._fail(claim, "out_of_memory", f"out of memory at size {preset.size}; lower the preset's size",
                              started)
        except RuntimeError as exc:
            if "CUDA" in str(exc) or "cuDNN" in str(exc):
                raise FatalDeviceError(str(exc)) from exc
            logger.exception("%s failed", claim.meta["source"])
            return self._fail(claim, "internal", f"internal error: {exc}", started)
        except OSError as exc:
            if exc.errno == errno.ENOSPC:
                return self._fail(claim, "disk_full", "the disk holding the hot folder is full; free space and "
                                  "drop the photo in again", started)
            logger.exception("%s failed", claim.meta["source"])
            return self._fail(claim, "internal", f"internal error: {exc}", started)
        except Exception as exc:  # one bad job never stops the daemon
            logger.exception("%s failed", claim.meta["source"])
            return self._fail(claim, "internal", f"internal error: {exc}", started)
        self._move_originals(claim, self.hot.done)
        self.journal.set_state(claim.job_id, JobState.DONE, output=str(paths.image))
        claim.finish()
        logger.info("done %s -> %s in %.1f s", claim.meta["source"], paths.image, time.perf_counter() - started)
        return Outcome.DONE

    # ------------------------------------------------------------ steps

    def _start(self, claim: Claim, sha: str, key: str) -> int:
        return self.journal.start_attempt(claim.job_id, name=claim.meta["name"], source=claim.meta["source"],
                                          sha256=sha, preset_key=key)

    def _preset(self, claim: Claim) -> Preset:
        origin = claim.meta["origin"]
        kind = origin["kind"]
        if kind == "sidecar" and claim.sidecar is not None:
            return self._sidecar_preset(claim, claim.sidecar)
        if kind == "sidecar" and ("data" in origin or "error" in origin):  # a sidecar shared by a.jpg and a.png
            if "error" in origin:
                raise PresetError(origin["error"])
            return self.library.from_data(origin["data"], _inbox_label(claim, origin["file"]))
        if kind == "folder":
            if "error" in origin:
                raise PresetError(origin["error"])
            return self.library.from_data(origin["data"], origin["file"])
        if kind in ("named", "default"):
            return self.library.load(origin["name"])
        if kind == "unsupported":
            raise JobFailure("unsupported_file", f"{claim.meta['name']} is not an image stylefold reads "
                             "(JPEG, PNG, TIFF, WebP, BMP); export RAW and other formats first")
        if kind == "orphan_sidecar":
            raise JobFailure("no_image", f"{claim.meta['name']} is a preset sidecar whose image never arrived")
        raise JobFailure("no_preset", f"no preset for {claim.meta['source']}: no sidecar, no preset.json, "
                         "no preset named after its folder and no default_preset")

    def _sidecar_preset(self, claim: Claim, sidecar: Path) -> Preset:
        """Not ``library.load_file``: that treats the file's stem as a preset name in the
        ``extends`` chain, so ``portrait.json`` beside ``portrait.jpg`` extending the
        ``portrait`` preset failed as a loop. Errors name the sidecar as the user dropped
        it (``inbox/...``), not its path inside the claim folder."""
        label = _inbox_label(claim, sidecar.name)
        try:
            data = read_preset_json(sidecar)
        except PresetError as exc:
            raise PresetError(str(exc).replace(str(sidecar), label)) from None
        return self.library.from_data(data, label)

    def _render(self, claim: Claim, preset: Preset, styles: list[tuple[Path, float]],
                should_stop: Callable[[], bool], sha: str) -> Rendered | None:
        resume = None
        if claim.checkpoint.is_file():
            try:
                resume = Checkpoint.load(claim.checkpoint)
                logger.info("%s: resuming at step %d", claim.meta["source"], resume.state.step)
            except Exception as exc:  # a damaged checkpoint costs its steps, not the job
                logger.warning("%s: checkpoint unreadable (%s); starting over", claim.meta["source"], exc)
        last_progress = [0.0]

        def on_step(info: StepInfo) -> None:
            now = time.monotonic()
            if now - last_progress[0] >= 2.0 or info.step == info.steps:
                last_progress[0] = now
                self.journal.set_progress(claim.job_id, {"step": info.step, "steps": info.steps,
                                                         "total_loss": info.total_loss, "elapsed_s": info.elapsed_s})
            if self.events.on_step:
                self.events.on_step(claim, info)

        rendered = self.stylist.render(
            claim.image, preset, styles, preset_source=_origin_text(claim.meta["origin"]),
            on_step=on_step, should_stop=should_stop, resume=resume,
            on_checkpoint=lambda cp: cp.save(claim.checkpoint), checkpoint_every=self.checkpoint_every,
            input_sha256=sha,  # hashed once per job, for the journal and the report
        )
        if rendered.stopped:
            Checkpoint(rendered.state, rendered.rows, rendered.snapshots).save(claim.checkpoint)
            self.journal.set_progress(claim.job_id, {"step": rendered.state.step, "steps": preset.steps,
                                                     "stopped": True})
            self.journal.set_state(claim.job_id, JobState.QUEUED)
            self.journal.undo_attempt(claim.job_id)  # a graceful stop is not a crash
            logger.info("%s: stopped at step %d; checkpoint saved", claim.meta["source"], rendered.state.step)
            claim.release()
            return None
        rendered.save(claim.folder)
        return rendered

    def _publish(self, claim: Claim, rendered: Rendered) -> OutputPaths:
        reserved = _load_reserved(claim.folder)
        return self.stylist.publish(
            rendered, self.hot.outbox, self.hot.logs, reserved=reserved,
            on_reserve=lambda paths: _save_reserved(claim.folder, paths),
        ).paths

    def _move_originals(self, claim: Claim, dest: Path) -> Path:
        moved = move_no_clobber(claim.image, dest, companions=(".json", ".error.json"))
        if claim.sidecar is not None and claim.sidecar.exists():
            # Recorded before the sidecar moves: after a crash here, recovery sends the
            # sidecar after its image instead of back to the inbox as an orphan.
            claim.meta["final"] = {"dest": dest.name, "image": moved.name}
            claim.save_meta()
            move_no_clobber(claim.sidecar, dest, f"{moved.stem}.json")
        return moved

    def _fail(self, claim: Claim, kind: str, message: str, started: float) -> Outcome:
        moved = self._move_originals(claim, self.hot.failed)
        try:
            self._write_error(claim, moved, kind, message, started)
        except OSError as exc:  # a full disk must not turn one failure into a crash loop
            logger.error("could not write %s.error.json: %s", moved.stem, exc)
        self.journal.set_state(claim.job_id, JobState.FAILED, error_kind=kind, error=message)
        claim.finish()
        logger.error("failed %s (%s): %s", claim.meta.get("source"), kind, message)
        return Outcome.FAILED

    def _write_error(self, claim: Claim, moved: Path, kind: str, message: str, started: float) -> None:
        write_error_file(self.hot.failed, moved.name, kind, message, {
            "source": claim.meta.get("source"), "job_id": claim.job_id, "preset": _origin_text(claim.meta["origin"]),
            "seconds": round(time.perf_counter() - started, 3),
        })


def _inbox_label(claim: Claim, name: str) -> str:
    """A file of this job named as the user dropped it (inbox/...), not its claim path."""
    return f"inbox/{Path(claim.meta['source']).with_name(name)}"


def _preset_key(preset: Preset, styles: list[tuple[Path, float]]) -> str:
    """The effective preset plus the style files' contents: same key, same result."""
    digest = hashlib.sha256(json.dumps(preset.effective(), sort_keys=True).encode())
    for path, weight in styles:
        digest.update(f"{sha256_file(path)}:{weight}".encode())
    return digest.hexdigest()


def _origin_text(origin: dict[str, Any]) -> str:
    kind = origin.get("kind")
    if kind == "sidecar":
        return f"sidecar {origin.get('file')}"
    if kind == "folder":
        return str(origin.get("file"))
    if kind in ("named", "default"):
        return f"{kind} preset {origin.get('name')}"
    return str(kind)


def _save_reserved(folder: Path, paths: OutputPaths) -> None:
    from .outputs import write_atomic

    data = {k: str(v) for k, v in vars(paths).items()}
    write_atomic(folder / RESULT_FILE, json.dumps(data).encode())


def _load_reserved(folder: Path) -> OutputPaths | None:
    """The name recorded just before the image was linked, if the image is there:
    published by this job before a crash. Absent, the name was never taken by us."""
    try:
        data = json.loads((folder / RESULT_FILE).read_bytes())
    except (OSError, ValueError):
        return None
    paths = OutputPaths(base=data["base"], **{k: Path(v) for k, v in data.items() if k != "base"})
    return paths if paths.image.exists() else None
