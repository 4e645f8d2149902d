"""One delivery on a worker: a hostile message in, a render (or a failure) back out.

The message is validated (``RenderMessage``, then ``JobSpec``'s own checks), refused
when made for other weights, re-checked against this worker's own caps, and only then
run; it never names a file this worker reads: inputs come from the content cache by
sha256. Every use of ``run_job`` and ``JobCallbacks`` is in ``_render``.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
import time
import uuid
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import redis
from PIL import Image
from pydantic import ValidationError

from ..engine.steps import StepInfo
from ..failures import FailureKind, JobFailure, classify, one_line
from ..job.checkpoint import Checkpoint
from ..job.preview import PreviewImage
from ..job.run import Done, Failed, JobCallbacks, Outcome, Resident, Stopped, run_job
from ..job.spec import Caps, JobSpec
from ..names import printable
from .lease import Heartbeat, Running
from .preview import encode_preview
from .protocol import JOB_TTL_S, Keys, RenderMessage, text
from .protocol import Outcome as Ending
from .store import ContentCache, TransferTooLarge, get_capped

__all__ = ["DeviceFailed", "Executor"]

logger = logging.getLogger(__name__)

EVENT_EVERY_S = 0.5


class DeviceFailed(Exception):
    """The device failed (not out of memory): the worker process must end."""


@dataclass
class Executor:
    client: redis.Redis
    heartbeat: Heartbeat
    resident: Resident
    cache: ContentCache
    weights: str
    caps: Caps
    max_transfer: int
    name: str

    def handle(self, body: Any) -> None:
        """The task body. Raises only ``DeviceFailed``; everything else is an outcome or
        a dropped message, logged."""
        try:
            message = RenderMessage.model_validate(body)
        except (ValidationError, TypeError, ValueError) as exc:
            logger.error("refused a malformed message: %s", one_line(str(exc))[:500])
            return
        if message.spec.job_id != message.job_id:
            logger.error("refused a message whose job id is not its description's")
            return
        keys = Keys(message.job_id)
        source = printable(message.spec.input.name)
        if message.weights != self.weights:
            logger.error("refused %s: made for weights %s, this worker holds %s", source, message.weights,
                         self.weights)
            self._push(keys, {"event": "refused", "worker": self.name, "weights": self.weights})
            return
        current = self.client.get(keys.delivery)
        if current is None or text(current) != message.delivery:
            logger.info("dropped a stale delivery of %s (the daemon gave it another)", source)
            return
        running = Running(keys, message.job_id, message.delivery, source, f"{self.name}|{message.delivery}")
        # Before the lease: a worker that dies right after taking it is still seen to
        # have started this delivery (the daemon then counts its death and sends it again).
        self.client.set(keys.started, message.delivery, ex=JOB_TTL_S)
        if not self.heartbeat.acquire(running):
            logger.info("dropped a redelivery of %s: another worker holds its lease and runs it", source)
            return
        try:
            self._push(keys, {"event": "start", "worker": self.name, "device": str(self.resident.device)})
            ending = self._run(message, running)
            if ending is not None:
                self._end(keys, running, ending)
            if ending is not None and ending.end == "device_error":
                raise DeviceFailed(ending.message)
        finally:
            self.heartbeat.release()

    def _run(self, message: RenderMessage, running: Running) -> Ending | None:
        started = time.perf_counter()
        try:
            self.caps.check(message.spec.preset)  # this worker's own caps, whatever the message says
            spec = self._localise(message.spec)
            if spec is None:
                return self._ending(running, "retry", message="its files are no longer on the broker")
            resume = self._resume(running.keys, spec)
            outcome = self._render(spec, running, message.checkpoint_every, resume)
        except JobFailure as exc:
            return self._ending(running, "failed", kind=exc.kind, message=str(exc))
        except Exception as exc:  # one bad job never stops the worker
            failure = classify(exc)
            if failure.kind == FailureKind.INTERNAL:
                logger.exception("%s failed", running.source)
            return self._ending(running, "failed", kind=failure.kind, message=failure.message)
        seconds = time.perf_counter() - started
        if isinstance(outcome, Done):
            files = self._upload_render(running.keys, outcome)
            logger.info("done %s in %.1f s", running.source, seconds)
            return self._ending(running, "done", files=files)
        if isinstance(outcome, Stopped):
            self._save_checkpoint(running.keys, outcome.checkpoint)
            if running.why_stop == "lost":
                logger.info("left %s at step %d to the worker that holds it", running.source,
                            outcome.checkpoint.step)
                return None
            reason = "shutdown" if running.why_stop == "" else running.why_stop
            logger.info("stopped %s at step %d (%s)", running.source, outcome.checkpoint.step, reason)
            # A warm shutdown of the worker: its job goes to another (retry); a cancel
            # from the daemon: the daemon resumes it later (stopped).
            return self._ending(running, "stopped" if reason == "cancel" else "retry",
                                step=outcome.checkpoint.step, message=f"worker {reason}")
        assert isinstance(outcome, Failed)
        if outcome.kind == FailureKind.DEVICE_ERROR:
            logger.critical("device error on %s: %s", running.source, outcome.message)
            return self._ending(running, "device_error", kind=outcome.kind, message=outcome.message)
        logger.warning("failed %s (%s): %s", running.source, outcome.kind, outcome.message)
        return self._ending(running, "failed", kind=outcome.kind, message=outcome.message)

    def _ending(self, running: Running, end: str, **values: Any) -> Ending:
        return Ending(delivery=running.delivery, worker=self.name, end=end, **values)  # type: ignore[arg-type]

    def _render(self, spec: JobSpec, running: Running, checkpoint_every: int,
                resume: Checkpoint | None) -> Outcome:
        """The one place this module calls the job's code."""
        keys, last = running.keys, [0.0]

        def on_step(info: StepInfo) -> None:
            now = time.monotonic()
            if now - last[0] >= EVENT_EVERY_S or info.step == info.steps:
                last[0] = now
                self._push(keys, {"event": "step", "worker": self.name, **asdict(info)})

        def on_checkpoint(cp: Checkpoint) -> None:
            try:
                self._save_checkpoint(keys, cp)
            except Exception as exc:  # the job goes on; a death now costs the steps since the last one
                logger.warning("%s: checkpoint not sent (%s)", running.source, exc)

        def on_preview(preview: PreviewImage) -> str | None:
            try:
                data = encode_preview(preview)
                if len(data) > self.max_transfer:
                    raise TransferTooLarge("the preview", len(data), self.max_transfer)
                self.client.set(keys.preview, data, ex=JOB_TTL_S)
                self._push(keys, {"event": "preview", "worker": self.name, "seconds": preview.seconds})
            except (TransferTooLarge, redis.RedisError) as exc:  # a courtesy: it costs the preview, not the job
                logger.warning("%s: preview not sent (%s)", running.source, exc)
                return None
            return "sent"  # the coordinator's report names the file it wrote

        callbacks = JobCallbacks(on_step=on_step, on_checkpoint=on_checkpoint, checkpoint_every=checkpoint_every,
                                 should_stop=running.stop.is_set, on_preview=on_preview)
        return run_job(spec, self.resident, callbacks, resume)

    # ------------------------------------------------------------ content

    def _localise(self, spec: JobSpec) -> JobSpec | None:
        """``spec`` with its files in this worker's cache (None: the broker lost them)."""
        photo = self.cache.fetch(self.client, spec.input.sha256, self.max_transfer, f"the photo {spec.input.name}")
        styles = []
        for style in spec.styles:
            path = self.cache.fetch(self.client, style.sha256, self.max_transfer, f"the style {style.name}")
            if path is None:
                return None
            styles.append(style.model_copy(update={"path": str(path)}))
        if photo is None:
            return None
        for path, what in [(photo, spec.input.name)] + [(Path(s.path), s.name) for s in styles]:
            self._check_pixels(path, what)
        return spec.model_copy(update={"input": spec.input.model_copy(update={"path": str(photo)}),
                                       "styles": tuple(styles)})

    def _check_pixels(self, path: Path, what: str) -> None:
        try:
            with Image.open(path) as image:  # the header only
                pixels = image.width * image.height
        except Exception:  # run_job names what is wrong with it
            return
        if pixels > self.caps.max_input_pixels:
            raise JobFailure(f"{printable(what)} has {pixels} pixels; this worker allows at most "
                             f"{self.caps.max_input_pixels} (config max_input_pixels)", kind=FailureKind.TOO_LARGE)

    def _resume(self, keys: Keys, spec: JobSpec) -> Checkpoint | None:
        data = get_capped(self.client, keys.checkpoint, self.max_transfer, "the checkpoint")
        if data is None:
            return None
        with tempfile.TemporaryDirectory(dir=self.cache.folder) as tmp:
            path = Path(tmp) / "checkpoint.pt"
            path.write_bytes(data)
            try:
                checkpoint = Checkpoint.load(path)  # weights_only: data, never code
            except Exception as exc:  # a damaged checkpoint costs its steps
                logger.warning("%s: checkpoint unreadable (%s); starting over", spec.input.name, exc)
                return None
        logger.info("%s: resuming at step %d", printable(spec.input.name), checkpoint.step)
        return checkpoint

    def _save_checkpoint(self, keys: Keys, checkpoint: Checkpoint) -> None:
        with tempfile.TemporaryDirectory(dir=self.cache.folder) as tmp:
            path = Path(tmp) / "checkpoint.pt"
            checkpoint.save(path)
            data = path.read_bytes()
        if len(data) > self.max_transfer:
            raise TransferTooLarge("the checkpoint", len(data), self.max_transfer)
        self.client.set(keys.checkpoint, data, ex=JOB_TTL_S)
        self._push(keys, {"event": "checkpoint", "worker": self.name, "step": checkpoint.step})

    def _upload_render(self, keys: Keys, done: Done) -> dict[str, str]:
        import hashlib

        with tempfile.TemporaryDirectory(dir=self.cache.folder) as tmp:
            done.rendered.save(Path(tmp))
            files = {p.name: p.read_bytes() for p in Path(tmp).iterdir() if p.is_file()}
        total = sum(len(v) for v in files.values())
        if total > self.max_transfer:
            raise TransferTooLarge("the result", total, self.max_transfer)
        pipe = self.client.pipeline()
        pipe.delete(keys.rendered)
        pipe.hset(keys.rendered, mapping=files)  # type: ignore[arg-type]
        pipe.expire(keys.rendered, JOB_TTL_S)
        pipe.execute()
        return {name: hashlib.sha256(data).hexdigest() for name, data in files.items()}

    # ------------------------------------------------------------ the end

    def _end(self, keys: Keys, running: Running, ending: Ending) -> None:
        """Record the outcome, unless the job went to another delivery meanwhile."""
        current = self.client.get(keys.delivery)
        if current is not None and text(current) != running.delivery:
            logger.info("%s: its outcome is dropped, the daemon gave it to another worker", running.source)
            return
        self.client.set(keys.outcome, ending.model_dump_json(), ex=JOB_TTL_S)
        self._push(keys, {"event": "end", "worker": self.name, "end": ending.end})

    def _push(self, keys: Keys, event: dict[str, Any]) -> None:
        pipe = self.client.pipeline()
        pipe.rpush(keys.events, json.dumps(event))
        pipe.ltrim(keys.events, -1000, -1)  # a daemon away for long: its backlog stays bounded
        pipe.expire(keys.events, JOB_TTL_S)
        pipe.execute()


def new_delivery() -> str:
    return uuid.uuid4().hex


def exit_for_device(message: str, flush: Callable[[], None]) -> None:
    """A device error: leave at once with status 1, for systemd to restart the worker
    with a fresh GPU context (Celery's warm shutdown would take the next job first)."""
    logger.critical("device error, exiting for a restart: %s", message)
    flush()
    os._exit(1)
