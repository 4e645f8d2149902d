"""The worker loop's one step: a claimed job from its description to done/ or failed/.

Every end puts the original (and its sidecar) in done/ or failed/, except a graceful
stop, which leaves the claim folder with a checkpoint for the next start. A job's
attempts are counted before it starts, so a file that keeps killing the process is
failed as poison after ``MAX_ATTEMPTS`` instead of crashing the daemon forever.
The one hot-folder module that loads torch and PIL (through ``job``).
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from ..engine.steps import StepInfo
from ..failures import FailureKind, classify, one_line
from ..fsops import atomic_write, move_no_clobber, write_atomic
from ..job.checkpoint import Checkpoint, Rendered
from ..job.publish import publish
from ..job.run import Done, Failed, JobCallbacks, Resident, Stopped, run_job
from ..job.spec import JobSpec
from ..media.outputs import OutputPaths
from .claims import Claim, FinalMove
from .journal import JobState, Journal
from .layout import HotFolder
from .origins import describe_origin
from .runner import JobEnd, JobEvents, JobResult

__all__ = ["FatalDeviceError", "Worker"]

logger = logging.getLogger(__name__)

MAX_ATTEMPTS = 3
RESULT_FILE = "result.json"
PROGRESS_EVERY_S = 2.0


class FatalDeviceError(RuntimeError):
    """A GPU error other than out-of-memory: the process should end for systemd to
    restart it with a fresh context; the job stays claimed and resumes."""


@dataclass
class Worker:
    hot: HotFolder
    journal: Journal
    resident: Resident
    checkpoint_every: int = 50
    events: JobEvents = field(default_factory=JobEvents)

    def run(self, claim: Claim, should_stop: Callable[[], bool]) -> JobResult:
        started = time.perf_counter()
        spec = claim.meta.spec
        attempt = self.journal.start_attempt(
            claim.job_id, name=claim.meta.name, source=claim.meta.source,
            sha256=spec.input.sha256 if spec else claim.meta.sha256, preset_key=spec.result_key() if spec else "")
        try:
            return self._run(claim, attempt, should_stop, started)
        except FatalDeviceError:
            raise
        except Exception as exc:  # one bad job never stops the daemon
            failure = classify(exc)
            logger.exception("%s failed", claim.meta.source)
            return self._fail(claim, failure.kind, failure.message, started)

    def _run(self, claim: Claim, attempt: int, should_stop: Callable[[], bool], started: float) -> JobResult:
        spec, failure = claim.meta.spec, claim.meta.failure
        if failure is not None or spec is None:
            kind = failure.kind if failure else FailureKind.INTERNAL
            return self._fail(claim, kind, failure.message if failure else "the job has no description", started)
        if attempt > MAX_ATTEMPTS:
            return self._fail(claim, FailureKind.INTERNAL,
                              f"this file stopped the daemon {attempt - 1} times and was set aside", started)
        previous = self.journal.find_done(spec.input.sha256, spec.result_key())
        if previous is not None and previous.output and Path(previous.output).exists():
            self._finish(claim, spec, previous.output)
            return JobResult(JobEnd.DUPLICATE, output=previous.output,
                             message=f"same photo and preset as job {previous.id}")
        if self.events.on_start:
            self.events.on_start(claim, spec)
        rendered = Rendered.load(claim.folder)
        if rendered is None:
            outcome = run_job(spec, self.resident, self._callbacks(claim, should_stop), self._resume(claim))
            if isinstance(outcome, Stopped):
                self._stopped(claim, spec, outcome.checkpoint)
                return JobResult(JobEnd.STOPPED, step=outcome.checkpoint.state.step)
            if isinstance(outcome, Failed):
                if outcome.kind == FailureKind.DEVICE_ERROR:
                    raise FatalDeviceError(outcome.message)
                return self._fail(claim, outcome.kind, outcome.message, started)
            assert isinstance(outcome, Done)
            rendered = outcome.rendered
            rendered.save(claim.folder)
        paths = publish(rendered, self.hot.outbox, self.hot.logs, reserved=_load_reserved(claim.folder),
                        on_reserve=lambda p: _save_reserved(claim.folder, p))
        moved = self._finish(claim, spec, str(paths.image))
        _record_where_the_original_went(paths.report, claim, moved)
        return JobResult(JobEnd.DONE, output=str(paths.image))

    # ------------------------------------------------------------ steps

    def _callbacks(self, claim: Claim, should_stop: Callable[[], bool]) -> JobCallbacks:
        last_progress = [0.0]

        def on_step(info: StepInfo) -> None:
            now = time.monotonic()
            if now - last_progress[0] >= PROGRESS_EVERY_S or info.step == info.steps:
                last_progress[0] = now
                self.journal.set_progress(claim.job_id, {"step": info.step, "steps": info.steps,
                                                         "total_loss": info.total_loss, "elapsed_s": info.elapsed_s})
            if self.events.on_step:
                self.events.on_step(claim, info)

        return JobCallbacks(on_step=on_step, on_checkpoint=lambda cp: cp.save(claim.checkpoint),
                            checkpoint_every=self.checkpoint_every, should_stop=should_stop)

    def _resume(self, claim: Claim) -> Checkpoint | None:
        if not claim.checkpoint.is_file():
            return None
        try:
            checkpoint = Checkpoint.load(claim.checkpoint)
        except Exception as exc:  # a damaged checkpoint costs its steps, not the job
            logger.warning("%s: checkpoint unreadable (%s); starting over", claim.meta.source, exc)
            return None
        logger.info("%s: resuming at step %d", claim.meta.source, checkpoint.state.step)
        return checkpoint

    def _stopped(self, claim: Claim, spec: JobSpec, checkpoint: Checkpoint) -> None:
        checkpoint.save(claim.checkpoint)
        self.journal.set_progress(claim.job_id, {"step": checkpoint.state.step, "steps": spec.preset.steps,
                                                 "stopped": True})
        self.journal.set_state(claim.job_id, JobState.QUEUED)
        self.journal.undo_attempt(claim.job_id)  # a graceful stop is not a crash
        claim.release()

    def _finish(self, claim: Claim, spec: JobSpec, output: str) -> Path:
        moved = self._move_originals(claim, self.hot.done)
        self.journal.set_state(claim.job_id, JobState.DONE, output=output)
        claim.finish()
        self._clear_earlier_failures(spec.input.sha256)
        return moved

    def _move_originals(self, claim: Claim, base: Path,
                        before_move: Callable[[Path], None] | None = None) -> Path:
        """Into done/ or failed/, in the subfolder it came from (inbox/book/x.jpg ends
        in done/book/x.jpg), under a free name."""
        dest = base / Path(claim.meta.source).parent
        moved = move_no_clobber(claim.image, dest, companions=(".json", ".error.json"), before_move=before_move)
        if claim.sidecar is not None and claim.sidecar.exists():
            # Recorded before the sidecar moves: after a crash here, recovery sends the
            # sidecar after its image instead of back to the inbox as an orphan.
            claim.meta.final = FinalMove(dest=dest.relative_to(self.hot.root).as_posix(), image=moved.name)
            claim.save_meta()
            move_no_clobber(claim.sidecar, dest, f"{moved.stem}.json")
        return moved

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
            path = target.with_name(f"{target.stem}.error.json")
            body = {"kind": kind.value, "error": message, "file": target.name, "source": claim.meta.source,
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

        moved = self._move_originals(claim, self.hot.failed, before_move=write_error)
        for stale in written:  # names given up because the original's name was taken meanwhile
            if stale.stem != f"{moved.stem}.error":
                stale.unlink(missing_ok=True)
        error_file = moved.with_name(f"{moved.stem}.error.json")
        self.journal.set_state(claim.job_id, JobState.FAILED, error_kind=kind.value, error=message,
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
