"""The worker loop's one step: a claimed job from its description to done/ or failed/.

Every end puts the original (and its sidecar) in done/ or failed/, except a graceful
stop, which leaves the claim folder with a checkpoint for the next start, and a wait
(``JobEnd.WAITING``): the job could not finish for a reason that may pass (a full
disk, a read-only or unmounted ``done/``), so its claim stays, unlocked, and the
service tries it again later while other jobs run. A job's attempts are counted
before it starts, so a file that keeps killing the process, or keeps meeting a folder
it cannot be moved into, is failed as poison after ``MAX_ATTEMPTS``. A full disk is
not counted: more room helps it, retrying is all there is to do.
The one hot-folder module that loads torch and PIL (through ``job``).
"""

from __future__ import annotations

import errno
import json
import logging
import os
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from ..engine.steps import StepInfo
from ..failures import FailureKind, JobFailure, classify, is_disk_full, one_line
from ..fsops import atomic_write, move_no_clobber, write_atomic
from ..job.checkpoint import Checkpoint, Rendered
from ..job.preview import PreviewImage
from ..job.publish import publish
from ..job.run import Done, Failed, JobCallbacks, Resident, Stopped, run_job
from ..job.spec import JobSpec
from ..media.outputs import OutputPaths, publish_preview
from ..names import fit
from .claims import Claim, FailureNote, FinalMove
from .journal import JobState, Journal
from .layout import HotFolder
from .origins import describe_origin
from .runner import FatalDeviceError, JobEnd, JobEvents, JobResult

__all__ = ["FatalDeviceError", "Wait", "Worker"]

logger = logging.getLogger(__name__)

MAX_ATTEMPTS = 3
RESULT_FILE = "result.json"
PROGRESS_EVERY_S = 2.0
# Errors naming a file that no retry can fix (the name itself is refused).
_BAD_NAME = (errno.ENAMETOOLONG, errno.EINVAL, errno.EILSEQ)


class Wait(Exception):
    """The job cannot go on now for a reason that may pass (``counts``: whether the try
    counts towards poison; a full disk does not)."""

    def __init__(self, message: str, *, counts: bool, where: Path | None = None) -> None:
        super().__init__(message)
        self.counts = counts
        self.where = where


@dataclass
class Worker:
    hot: HotFolder
    journal: Journal
    resident: Resident
    checkpoint_every: int = 50
    events: JobEvents = field(default_factory=JobEvents)
    # Renders that a full disk kept from being published or saved, by job id: the retry
    # publishes them instead of optimising again.
    _unpublished: dict[str, Rendered] = field(default_factory=dict)

    def run(self, claim: Claim, should_stop: Callable[[], bool]) -> JobResult:
        """Never raises, except ``FatalDeviceError``."""
        started = time.perf_counter()
        try:
            try:
                attempt = self._start_attempt(claim)
                return self._run(claim, attempt, should_stop, started)
            except (Wait, FatalDeviceError):
                raise
            except Exception as exc:  # one bad job never stops the daemon
                if is_disk_full(exc):
                    raise Wait(f"the disk is full ({exc})", counts=False) from exc
                failure = classify(exc)
                if not isinstance(exc, JobFailure):
                    logger.exception("%s failed", claim.meta.source)
                return self._fail(claim, failure.kind, failure.message, started)
        except Wait as wait:
            return self._wait(claim, wait)

    def _start_attempt(self, claim: Claim) -> int:
        spec = claim.meta.spec
        try:
            return self.journal.start_attempt(
                claim.job_id, name=claim.meta.name, source=claim.meta.source,
                sha256=spec.input.sha256 if spec else claim.meta.sha256,
                preset_key=spec.result_key() if spec else "")
        except Exception as exc:  # sqlite3.Error: full, locked, read-only
            raise Wait(f"the journal cannot record the job ({exc})", counts=False,
                        where=self.journal.path.parent) from exc

    def _run(self, claim: Claim, attempt: int, should_stop: Callable[[], bool], started: float) -> JobResult:
        spec, failure = claim.meta.spec, claim.meta.failure
        if failure is not None or spec is None:
            kind = failure.kind if failure else FailureKind.INTERNAL
            return self._fail(claim, kind, failure.message if failure else "the job has no description", started)
        if attempt > MAX_ATTEMPTS:
            trouble = claim.meta.trouble
            why = (f"could not be finished in {attempt - 1} tries (last: {trouble})" if trouble
                   else f"stopped the daemon {attempt - 1} times")
            return self._fail(claim, FailureKind.INTERNAL, f"this file {why} and was set aside", started)
        previous = self.journal.find_done(spec.input.sha256, spec.result_key())
        if previous is not None and previous.output and Path(previous.output).exists():
            self._finish(claim, spec, previous.output)
            return JobResult(JobEnd.DUPLICATE, output=previous.output,
                             message=f"same photo and preset as job {previous.id}")
        if self.events.on_start:
            self.events.on_start(claim, spec)
        rendered = self._unpublished.get(claim.job_id) or Rendered.load(claim.folder)
        if rendered is None:
            made = self._render(claim, spec, should_stop, started)
            if isinstance(made, JobResult):
                return made
            rendered = made
            self._keep(claim, rendered)
        paths = self._publish(claim, rendered)
        self._unpublished.pop(claim.job_id, None)
        moved = self._finish(claim, spec, str(paths.image))
        _record_where_the_original_went(paths.report, claim, moved)
        return JobResult(JobEnd.DONE, output=str(paths.image))

    def _render(self, claim: Claim, spec: JobSpec, should_stop: Callable[[], bool],
                started: float) -> Rendered | JobResult:
        """The optimisation: its render, or how the job ended without one. Here: in this
        process (``run_job``); a remote runner overrides it to send the job to a worker."""
        outcome = run_job(spec, self.resident, self._callbacks(claim, should_stop), self._resume(claim))
        if isinstance(outcome, Stopped):
            self._stopped(claim, spec, outcome.checkpoint)
            return JobResult(JobEnd.STOPPED, step=outcome.checkpoint.step)
        if isinstance(outcome, Failed):
            if outcome.kind == FailureKind.DEVICE_ERROR:
                raise FatalDeviceError(outcome.message)
            return self._fail(claim, outcome.kind, outcome.message, started)
        assert isinstance(outcome, Done)
        return outcome.rendered

    def _keep(self, claim: Claim, rendered: Rendered) -> None:
        """Save the render in the claim (a crash from here publishes it, once); on a full
        disk keep it in memory for the retry instead."""
        try:
            rendered.save(claim.folder)
        except OSError as exc:
            if not is_disk_full(exc):
                raise
            self._unpublished[claim.job_id] = rendered
            _remove_partial_render(claim.folder)
            raise Wait(f"the finished render cannot be saved: the disk is full ({exc})", counts=False,
                        where=claim.folder) from exc

    def _publish(self, claim: Claim, rendered: Rendered) -> OutputPaths:
        try:
            return publish(rendered, self.hot.outbox, self.hot.logs, reserved=_load_reserved(claim.folder),
                           on_reserve=lambda p: _save_reserved(claim.folder, p))
        except OSError as exc:
            self._unpublished.setdefault(claim.job_id, rendered)
            if is_disk_full(exc):
                needed = rendered.image.width * rendered.image.height * 3
                if not _could_ever_fit(self.hot.outbox, needed):
                    raise JobFailure(f"the result (about {needed >> 20} MiB) is larger than the whole filesystem "
                                     f"of {self.hot.outbox}", kind=FailureKind.DISK_FULL) from exc
                raise Wait(f"the result cannot be written: the disk is full ({exc}); about "
                            f"{max(1, needed >> 20)} MiB needed", counts=False, where=self.hot.outbox) from exc
            if exc.errno in _BAD_NAME:
                raise JobFailure(f"the result cannot be named in {self.hot.outbox}: {exc.strerror}",
                                 kind=FailureKind.INTERNAL) from exc
            raise Wait(f"the result cannot be written ({exc})", counts=True, where=self.hot.outbox) from exc

    # ------------------------------------------------------------ steps

    def _callbacks(self, claim: Claim, should_stop: Callable[[], bool]) -> JobCallbacks:
        from .live import LiveFeed  # the status page's live view (loss curve, current image)

        last_progress, live = [0.0], LiveFeed(self.hot, claim.job_id)

        def on_step(info: StepInfo) -> None:
            live.step(info.step, info.steps, info.total_loss, info.style_loss, info.content_loss, info.tv_loss)
            now = time.monotonic()
            if now - last_progress[0] >= PROGRESS_EVERY_S or info.step == info.steps:
                last_progress[0] = now
                self._record(self.journal.set_progress, claim.job_id, {"step": info.step, "steps": info.steps,
                                                         "total_loss": info.total_loss, "elapsed_s": info.elapsed_s})
            if self.events.on_step:
                self.events.on_step(claim, info)

        unsaved = [False]

        def on_checkpoint(cp: Checkpoint) -> None:
            try:
                cp.save(claim.checkpoint)
            except OSError as exc:  # the job goes on; a crash now costs the steps since the last one
                if not unsaved[0]:
                    logger.warning("%s: checkpoint not saved (%s); the job goes on without it",
                                   claim.meta.source, exc)
                unsaved[0] = True
            live.image(cp.state.image)

        def on_preview(preview: PreviewImage) -> str:
            path = publish_preview(preview.image, self.hot.outbox, self.hot.logs, preview.base, exif=preview.exif)
            logger.info("preview of %s: %s (%.1f s)", claim.meta.source, path, preview.seconds)
            return str(path)

        return JobCallbacks(on_step=on_step, on_checkpoint=on_checkpoint,
                            checkpoint_every=self.checkpoint_every, should_stop=should_stop, on_preview=on_preview)

    def _resume(self, claim: Claim) -> Checkpoint | None:
        if not claim.checkpoint.is_file():
            return None
        try:
            checkpoint = Checkpoint.load(claim.checkpoint)
        except Exception as exc:  # a damaged checkpoint costs its steps, not the job
            logger.warning("%s: checkpoint unreadable (%s); starting over", claim.meta.source, exc)
            return None
        logger.info("%s: resuming at step %d", claim.meta.source, checkpoint.step)
        return checkpoint

    def _stopped(self, claim: Claim, spec: JobSpec, checkpoint: Checkpoint) -> None:
        try:
            checkpoint.save(claim.checkpoint)
        except OSError as exc:
            logger.warning("%s: checkpoint not saved (%s); it resumes from its last saved one",
                           claim.meta.source, exc)
        self._record(self.journal.set_progress, claim.job_id,
                     {"step": checkpoint.step, "steps": spec.preset.steps, "stopped": True})
        self._record(self.journal.set_state, claim.job_id, JobState.QUEUED)
        self._record(self.journal.undo_attempt, claim.job_id)  # a graceful stop is not a crash
        claim.release()

    def _wait(self, claim: Claim, wait: Wait) -> JobResult:
        """Leave the claim for a later try: unlocked, with what it met recorded."""
        claim.meta.trouble = one_line(str(wait))
        try:
            claim.save_meta()
        except OSError:
            pass  # job.json keeps its last state; the reason is in the log line
        if not wait.counts:
            self._record(self.journal.undo_attempt, claim.job_id)
        self._record(self.journal.set_state, claim.job_id, JobState.QUEUED)
        claim.release()
        return JobResult(JobEnd.WAITING, message=str(claim.meta.trouble), disk_full=not wait.counts,
                         where=str(wait.where) if wait.where else None)

    def _record(self, write: Callable[..., object], *args: object, **kwargs: object) -> None:
        """A journal write the job's outcome does not depend on: a full or locked journal
        costs the record, not the job (the folders say where every file is)."""
        try:
            write(*args, **kwargs)
        except Exception as exc:
            logger.warning("the journal could not record %s (%s)", getattr(write, "__name__", "a change"), exc)

    def _finish(self, claim: Claim, spec: JobSpec, output: str) -> Path:
        moved = self._move_originals(claim, self.hot.done)
        self._record(self.journal.set_state, claim.job_id, JobState.DONE, output=output)
        claim.finish()
        self._clear_earlier_failures(spec.input.sha256)
        return moved

    def _move_originals(self, claim: Claim, base: Path,
                        before_move: Callable[[Path], None] | None = None) -> Path:
        """Into done/ or failed/, in the subfolder it came from (inbox/book/x.jpg ends
        in done/book/x.jpg), under a free name. A folder that refuses it (read-only,
        full, gone) makes the job wait, never escape."""
        dest = base / Path(claim.meta.source).parent
        folder = dest.relative_to(self.hot.root).as_posix()

        def chosen(target: Path) -> None:
            if before_move is not None:
                before_move(target)
            # Recorded before the image moves: to another filesystem a move is a copy,
            # and after a crash between the copy and the unlink, recovery must know the
            # copy there is this job's (claims.interrupted_claims); after a crash between
            # the image and its sidecar, the sidecar follows the image.
            claim.meta.final = FinalMove(dest=folder, image=target.name)
            claim.save_meta()

        try:
            moved = move_no_clobber(claim.image, dest, companions=(".json", ".error.json"), before_move=chosen)
        except OSError as exc:
            claim.meta.final = None
            raise self._refused(dest, exc) from exc
        if claim.sidecar is not None and os.path.lexists(claim.sidecar):  # a dangling link moves too
            try:
                move_no_clobber(claim.sidecar, dest, fit(moved.stem, ".json"))
            except OSError as exc:
                # The image is there; the sidecar follows it at the next try (recovery).
                raise self._refused(dest, exc) from exc
        return moved

    def _refused(self, dest: Path, exc: OSError) -> Wait:
        what = "the disk is full" if is_disk_full(exc) else exc.strerror or str(exc)
        return Wait(f"the original cannot be moved to {dest.relative_to(self.hot.root).as_posix()}/: {what}",
                     counts=not is_disk_full(exc), where=dest)

    def _clear_earlier_failures(self, sha256: str) -> None:
        """A photo that failed, was put back into the inbox and now succeeded: its old
        error file in failed/ (whose photo is gone from there) no longer says anything
        true, so it goes."""
        for record in self.journal.failed_with(sha256):
            error_file = Path(record.output) if record.output else None
            if error_file is None or not error_file.is_file():
                continue
            try:
                original = error_file.with_name(json.loads(error_file.read_bytes())["file"])
            except (OSError, ValueError, KeyError, TypeError):
                continue
            if not original.exists():
                error_file.unlink(missing_ok=True)
                logger.info("removed %s: its photo was retried and is done", error_file.name)

    def _fail(self, claim: Claim, kind: FailureKind, message: str, started: float) -> JobResult:
        """The error file is in place before the original appears in failed/ (SPEC §5):
        a client watching failed/ never sees a photo without its reason."""
        written: list[Path] = []
        message = one_line(message)

        def write_error(target: Path) -> None:
            path = target.with_name(fit(target.stem, ".error.json"))
            spec = claim.meta.spec
            body = {"kind": kind.value, "error": message, "file": target.name, "source": claim.meta.source,
                    "sha256": spec.input.sha256 if spec else claim.meta.sha256 or None,
                    "job_id": claim.job_id, "preset": describe_origin(claim.meta.origin),
                    "seconds": round(time.perf_counter() - started, 3)}
            data = (json.dumps(body, indent=2) + "\n").encode()
            try:
                atomic_write(path, lambda f: f.write(data), overwrite=False)
            except FileExistsError:
                raise
            except OSError as exc:  # a full disk must not turn one failure into a crash loop
                logger.error("could not write %s: %s", path.name, exc)
                return
            written.append(path)

        # Kept with the claim first: if failed/ refuses the original, the next try moves
        # it there without running the job again.
        claim.meta.failure = FailureNote(kind=kind, message=message)
        try:
            moved = self._move_originals(claim, self.hot.failed, before_move=write_error)
        except Wait:
            for orphan in written:  # no original beside it: the next try writes it again
                orphan.unlink(missing_ok=True)
            raise
        error_file = moved.with_name(fit(moved.stem, ".error.json"))
        for stale in written:  # names given up because the original's name was taken meanwhile
            if stale != error_file:
                stale.unlink(missing_ok=True)
        self._record(self.journal.set_state, claim.job_id, JobState.FAILED, error_kind=kind.value, error=message,
                     output=str(error_file) if error_file.is_file() else None)
        claim.finish()
        return JobResult(JobEnd.FAILED, kind=kind, message=message)


def _record_where_the_original_went(report_path: Path, claim: Claim, moved: Path) -> None:
    """The report's input names where the photo came from and where it is now (its
    claim folder, where it was rendered from, is gone)."""
    try:
        report = json.loads(report_path.read_bytes())
        report["input"].update({"source": f"inbox/{claim.meta.source}", "path": str(moved)})
        write_atomic(report_path, (json.dumps(report, indent=2) + "\n").encode())
    except (OSError, ValueError, KeyError, TypeError) as exc:  # the result is out; the report is a record
        logger.warning("%s: could not record where the original went (%s)", report_path.name, exc)


def _could_ever_fit(folder: Path, needed: int) -> bool:
    """Whether ``needed`` bytes fit on the filesystem of ``folder`` once it is empty."""
    try:
        return shutil.disk_usage(folder).total >= needed
    except OSError:
        return True


def _remove_partial_render(folder: Path) -> None:
    for name in ("rendered.json", "rendered.png"):
        (folder / name).unlink(missing_ok=True)


def _save_reserved(folder: Path, paths: OutputPaths) -> None:
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
