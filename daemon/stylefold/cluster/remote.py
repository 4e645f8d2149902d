"""``RemoteRunner``: the hot-folder ``Worker`` whose render happens on a broker's worker.

Everything around the render is the local worker's own code: attempts counted in the
journal before work, poison after ``MAX_ATTEMPTS`` daemon deaths, the duplicate check,
the render kept in the claim before it is published, publishing, the moves to done/ and
failed/, and waits. Only the optimisation is replaced: the job goes to the queue, its
progress comes back into the journal, its checkpoints into the claim folder, its
preview into ``outbox/previews/`` (``cluster.preview``), and its end as a ``Rendered``
loaded from the files the worker sent.

A worker that stops renewing its lease for ``lease_s`` is dead: its job is sent again
(from the last checkpoint) to whichever worker takes it; after ``MAX_ATTEMPTS`` worker
deaths (a device error counts) the file is set aside as poison.
"""

from __future__ import annotations

import logging
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import redis

from ..engine.steps import StepInfo
from ..failures import FailureKind, JobFailure
from ..fsops import write_atomic
from ..hotfolder.claims import Claim
from ..hotfolder.journal import JobState
from ..hotfolder.runner import JobEnd, JobResult
from ..hotfolder.worker import Wait, Worker
from ..job.checkpoint import Checkpoint, Rendered
from ..job.run import Done, Failed
from ..job.spec import JobSpec
from ..media import outputs
from ..names import printable
from .dispatch import Delivery, Dispatch
from .follow import Follow, Stop
from .preview import publish_remote_preview

__all__ = ["RemoteRunner", "store_checkpoint"]

logger = logging.getLogger(__name__)


@dataclass
class RemoteRunner(Worker):
    dispatch: Dispatch | None = None

    def run(self, claim: Claim, should_stop: Callable[[], bool]) -> JobResult:
        result = super().run(claim, should_stop)
        if result.end in (JobEnd.DONE, JobEnd.FAILED, JobEnd.DUPLICATE) and self.dispatch is not None:
            spec = claim.meta.spec
            self.dispatch.forget(claim.job_id, spec.input.sha256 if spec else None)
        return result

    def _render(self, claim: Claim, spec: JobSpec, should_stop: Callable[[], bool],
                started: float) -> Rendered | JobResult:
        """Worker._render with the optimisation sent to the broker."""
        outcome = self._remote(claim, spec, should_stop)
        if isinstance(outcome, Stop):
            return self._stopped_remote(claim, spec, outcome.step)
        if isinstance(outcome, Failed):
            return self._fail(claim, outcome.kind, outcome.message, started)
        return outcome.rendered

    def _remote(self, claim: Claim, spec: JobSpec, should_stop: Callable[[], bool]) -> Done | Failed | Stop:
        assert self.dispatch is not None
        from ..hotfolder.live import LiveFeed  # the status page's loss curve and current image

        live, state = LiveFeed(self.hot, claim.job_id), Delivery.load(claim.folder)
        follow = Follow(self.dispatch, claim, spec, state, should_stop,
                        on_step=lambda info, worker: self._on_remote_step(claim, info, worker, live),
                        on_checkpoint=lambda data: self._on_remote_checkpoint(claim, data, live, state),
                        on_preview=lambda data, worker, s: self._on_remote_preview(claim, spec, state, data, worker, s))
        try:
            end = follow.run()
        except JobFailure as exc:  # too large to travel
            return Failed(exc.kind, str(exc))
        except redis.RedisError as exc:
            # A wait, not a failure: the claim stays and is tried again later (not counted
            # as an attempt).
            raise Wait(f"the broker cannot be reached ({exc})", counts=False) from exc
        if isinstance(end, Stop | Failed):
            return end
        rendered = _load_render(claim.folder, end)
        if rendered is None:
            return Failed(FailureKind.INTERNAL, "the worker's render arrived damaged")
        _local_paths(rendered, spec)
        rendered.report["preview"] = state.preview  # this box's file (or none came), not the worker's word
        return Done(rendered)

    def _on_remote_step(self, claim: Claim, info: StepInfo, worker: str, live: Any) -> None:
        live.step(info.step, info.steps, info.total_loss, info.style_loss, info.content_loss, info.tv_loss)
        self._record(self.journal.set_progress, claim.job_id, {
            "step": info.step, "steps": info.steps, "total_loss": info.total_loss, "style_loss": info.style_loss,
            "content_loss": info.content_loss, "tv_loss": info.tv_loss, "elapsed_s": info.elapsed_s,
            "worker": worker})
        if self.events.on_step:
            self.events.on_step(claim, info)

    def _on_remote_preview(self, claim: Claim, spec: JobSpec, state: Delivery, data: bytes, worker: str,
                           seconds: float) -> None:
        """Publish the worker's preview as the local path does, once per job."""
        if state.preview is not None:  # a redelivery that rendered it again
            return
        base = outputs.base_name(spec.input.name, [s.name for s in spec.styles])
        try:
            path = publish_remote_preview(data, self.hot.outbox, self.hot.logs, base)
        except ValueError as exc:
            logger.warning("%s: the preview worker %s sent is ignored: %s", claim.meta.source, printable(worker), exc)
            return
        except OSError as exc:  # a full disk costs the preview, not the job
            logger.warning("%s: preview not written (%s)", claim.meta.source, exc)
            return
        state.preview = str(path)
        state.save(claim.folder)
        logger.info("preview of %s: %s (%.1f s, worker %s)", claim.meta.source, path, seconds, printable(worker))

    def _on_remote_checkpoint(self, claim: Claim, data: bytes, live: Any, state: Delivery) -> None:
        try:
            checkpoint = store_checkpoint(claim.checkpoint, data, state.preview)
        except OSError as exc:  # the job goes on; the broker keeps its copy
            logger.warning("%s: checkpoint not saved (%s)", claim.meta.source, exc)
            return
        if checkpoint is None:  # damaged: a resume will say so and start over
            logger.debug("%s: checkpoint not shown (it does not load)", claim.meta.source)
            return
        live.image(checkpoint.state.image)

    def _stopped_remote(self, claim: Claim, spec: JobSpec, step: int) -> JobResult:
        """Worker._stopped, for a checkpoint already in the claim (or none yet)."""
        if claim.checkpoint.is_file():
            try:
                self._stopped(claim, spec, Checkpoint.load(claim.checkpoint))
                return JobResult(JobEnd.STOPPED, step=step)
            except Exception as exc:  # a damaged one: resumes from the start
                logger.warning("%s: checkpoint unreadable (%s)", claim.meta.source, exc)
        self._record(self.journal.set_progress, claim.job_id, {"step": 0, "steps": spec.preset.steps,
                                                                 "stopped": True})
        self._record(self.journal.set_state, claim.job_id, JobState.QUEUED)
        self._record(self.journal.undo_attempt, claim.job_id)
        claim.release()
        return JobResult(JobEnd.STOPPED, step=step)


def _local_paths(rendered: Rendered, spec: JobSpec) -> None:
    """The report names this box's style files, as the local path's does, not the
    worker's cache."""
    styles = rendered.report.get("styles")
    if isinstance(styles, list) and len(styles) == len(spec.styles):
        for entry, style in zip(styles, spec.styles, strict=True):
            if isinstance(entry, dict):
                entry["path"] = style.path


def _load_render(folder: Path, files: dict[str, bytes]) -> Rendered | None:
    """The worker's ``Rendered.save`` files, written into the claim and loaded back."""
    incoming = folder / "remote-render"
    shutil.rmtree(incoming, ignore_errors=True)
    incoming.mkdir()
    try:
        for name, data in files.items():
            write_atomic(incoming / name, data)
        return Rendered.load(incoming)
    finally:
        shutil.rmtree(incoming, ignore_errors=True)


def store_checkpoint(path: Path, data: bytes, preview: str | None) -> Checkpoint | None:
    """Store a worker's checkpoint at ``path``, written once, with its ``preview`` made
    this box's: the file written here, or none. A worker's says only that it sent one
    ("sent"); a lane here that resumed the job from it would otherwise report that word
    as a path, or never write the preview that did not arrive. Bytes that do not load
    are stored as they came (None)."""
    try:
        checkpoint = Checkpoint.from_bytes(data)
    except Exception:  # torch raises many types for damaged bytes
        write_atomic(path, data)
        return None
    if checkpoint.preview == preview:
        write_atomic(path, data)
    else:
        checkpoint.preview = preview
        checkpoint.save(path)
    return checkpoint
