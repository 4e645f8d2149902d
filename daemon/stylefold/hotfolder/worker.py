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
from ..failures import FailureKind, classify
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
from .runner import JobEnd, JobEvents

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

    def run(self, claim: Claim, should_stop: Callable[[], bool]) -> JobEnd:
        started = time.perf_counter()
        spec = claim.meta.spec
        attempt = self.journal.start_attempt(
            claim.job_id, name=claim.meta.name, source=claim.meta.source,
            sha256=spec.input.sha256 if spec else "", preset_key=spec.result_key() if spec else "")
        try:
            return self._run(claim, attempt, should_stop, started)
        except FatalDeviceError:
            raise
        except Exception as exc:  # one bad job never stops the daemon
            failure = classify(exc)
            logger.exception("%s failed", claim.meta.source)
            return self._fail(claim, failure.kind, failure.message, started)

    def _run(self, claim: Claim, attempt: int, should_stop: Callable[[], bool], started: float) -> JobEnd:
        spec, failure = claim.meta.spec, claim.meta.failure
        if failure is not None or spec is None:
            kind = failure.kind if failure else FailureKind.INTERNAL
            return self._fail(claim, kind, failure.message if failure else "the job has no description", started)
        if attempt > MAX_ATTEMPTS:
            return self._fail(claim, FailureKind.INTERNAL,
                              f"this file stopped the daemon {attempt - 1} times and was set aside", started)
        previous = self.journal.find_done(spec.input.sha256, spec.result_key())
        if previous is not None and previous.output and Path(previous.output).exists():
            logger.info("%s: same photo and preset as job %s; result is %s", claim.meta.source, previous.id,
                        previous.output)
            self._finish(claim, previous.output)
            return JobEnd.DUPLICATE
        if self.events.on_start:
            self.events.on_start(claim, spec)
        rendered = Rendered.load(claim.folder)
        if rendered is None:
            outcome = run_job(spec, self.resident, self._callbacks(claim, should_stop), self._resume(claim))
            if isinstance(outcome, Stopped):
                self._stopped(claim, spec, outcome.checkpoint)
                return JobEnd.STOPPED
            if isinstance(outcome, Failed):
                if outcome.kind == FailureKind.DEVICE_ERROR:
                    raise FatalDeviceError(outcome.message)
                return self._fail(claim, outcome.kind, outcome.message, started)
            assert isinstance(outcome, Done)
            rendered = outcome.rendered
            rendered.save(claim.folder)
        paths = publish(rendered, self.hot.outbox, self.hot.logs, reserved=_load_reserved(claim.folder),
                        on_reserve=lambda p: _save_reserved(claim.folder, p))
        self._finish(claim, str(paths.image))
        logger.info("done %s -> %s in %.1f s", claim.meta.source, paths.image, time.perf_counter() - started)
        return JobEnd.DONE

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
        logger.info("%s: stopped at step %d; checkpoint saved", claim.meta.source, checkpoint.state.step)
        claim.release()

    def _finish(self, claim: Claim, output: str) -> None:
        self._move_originals(claim, self.hot.done)
        self.journal.set_state(claim.job_id, JobState.DONE, output=output)
        claim.finish()

    def _move_originals(self, claim: Claim, dest: Path,
                        before_move: Callable[[Path], None] | None = None) -> Path:
        moved = move_no_clobber(claim.image, dest, companions=(".json", ".error.json"), before_move=before_move)
        if claim.sidecar is not None and claim.sidecar.exists():
            # Recorded before the sidecar moves: after a crash here, recovery sends the
            # sidecar after its image instead of back to the inbox as an orphan.
            claim.meta.final = FinalMove(dest=dest.name, image=moved.name)
            claim.save_meta()
            move_no_clobber(claim.sidecar, dest, f"{moved.stem}.json")
        return moved

    def _fail(self, claim: Claim, kind: FailureKind, message: str, started: float) -> JobEnd:
        """The error file is in place before the original appears in failed/ (SPEC §5):
        a client watching failed/ never sees a photo without its reason."""
        written: list[Path] = []

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
        self.journal.set_state(claim.job_id, JobState.FAILED, error_kind=kind.value, error=message)
        claim.finish()
        logger.error("failed %s (%s): %s", claim.meta.source, kind.value, message)
        return JobEnd.FAILED


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
