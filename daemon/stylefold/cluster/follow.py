"""Following one job on the broker until it ends: progress, checkpoints and the preview in, worker
deaths counted, redeliveries sent, a stop asked for on the daemon's SIGTERM."""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from ..engine.steps import StepInfo
from ..failures import FailureKind
from ..hotfolder.claims import Claim
from ..hotfolder.worker import MAX_ATTEMPTS
from ..job.run import Failed
from ..job.spec import JobSpec
from ..names import printable
from .dispatch import Delivery, Dispatch
from .protocol import Keys, Outcome, text
from .store import TransferTooLarge, get_capped

__all__ = ["Follow", "Stop"]

logger = logging.getLogger(__name__)

POLL_S = 0.25
STOP_WAIT_S = 30.0  # within the unit's TimeoutStopSec (90 s), with room for the rest


@dataclass
class Stop:
    """The daemon is stopping: the job resumes at its next start (from ``step``)."""

    step: int


@dataclass
class Follow:
    dispatch: Dispatch
    claim: Claim
    spec: JobSpec
    state: Delivery
    should_stop: Callable[[], bool]
    on_step: Callable[[StepInfo, str], None]
    on_checkpoint: Callable[[bytes], None]
    on_preview: Callable[[bytes, str, float], None]  # the PNG, the worker, its seconds
    keys: Keys = field(init=False)
    source: str = field(init=False)
    _seen_alive: float = 0.0
    _missing_since: float | None = None
    _worker: str = ""
    _step: int = 0
    _cancel_at: float | None = None
    _checkpoint_step: int = 0

    def __post_init__(self) -> None:
        self.keys = Keys(self.claim.job_id)
        self.source = printable(self.claim.meta.source)

    @property
    def client(self) -> Any:
        return self.dispatch.client

    def run(self) -> dict[str, bytes] | Failed | Stop:
        """The render's files, a failure, or a stop."""
        self._attach_or_send()
        while True:
            self._drain_events()
            outcome = self._outcome()
            if outcome is not None:
                end = self._ended(outcome)
                if end is not None:
                    return end
                continue
            if self.should_stop():
                end = self._stopping()
                if end is not None:
                    return end
            failed = self._check_lease()
            if failed is not None:
                return failed

    # ------------------------------------------------------------ sending

    def _attach_or_send(self) -> None:
        delivery = self.state.delivery
        if delivery is not None:
            current = self.client.get(self.keys.delivery)
            if self.dispatch.outcome(self.keys, delivery) is not None or (
                    current is not None and text(current) == delivery):
                logger.info("%s: following its delivery on the broker (the daemon restarted)", self.source)
                self._seen_alive = time.monotonic()
                return
        self._send("sent")

    def _send(self, why: str) -> None:
        delivery = self.dispatch.send(self.spec, self.claim.folder, self.claim.checkpoint, self.state)
        self._seen_alive, self._missing_since = time.monotonic(), None
        logger.info("%s %s to the workers (delivery %s)", why, self.source, delivery[:8])

    # ------------------------------------------------------------ what comes back

    def _drain_events(self) -> None:
        popped = self.client.blpop([self.keys.events], timeout=POLL_S)
        while popped is not None:
            try:
                self._event(json.loads(popped[1]))
            except (ValueError, TypeError, KeyError) as exc:
                logger.debug("an unreadable event of %s is ignored (%s)", self.source, exc)
            popped = self.client.lpop(self.keys.events)
            popped = (None, popped) if popped is not None else None

    def _event(self, event: dict[str, Any]) -> None:
        kind, worker = event.get("event"), str(event.get("worker", "?"))
        if kind == "start":
            self._worker = worker
            logger.info("%s runs on worker %s (%s)", self.source, printable(worker),
                        printable(str(event.get("device"))))
        elif kind == "step":
            self._worker = worker
            info = StepInfo(**{k: event[k] for k in ("step", "steps", "style_loss", "content_loss", "tv_loss",
                                                     "total_loss", "elapsed_s")})
            self._step = info.step
            self.on_step(info, worker)
        elif kind == "checkpoint":
            self._checkpoint_step = int(event.get("step", 0))
            data = self.dispatch.checkpoint(self.keys)
            if data is not None:
                self.on_checkpoint(data)
        elif kind == "preview":
            self._preview(worker, event.get("seconds"))
        elif kind == "refused":
            logger.warning("worker %s refused %s: its weights %s are not this daemon's", printable(worker),
                           self.source, printable(str(event.get("weights"))))

    def _preview(self, worker: str, seconds: Any) -> None:
        try:
            data = get_capped(self.client, self.keys.preview, self.dispatch.max_transfer, "the preview")
        except TransferTooLarge as exc:  # a courtesy: the job goes on without it
            logger.warning("%s: preview of worker %s refused (%s)", self.source, printable(worker), exc)
            return
        if data is not None:
            self.on_preview(data, worker, float(seconds) if isinstance(seconds, int | float) else 0.0)

    def _outcome(self) -> Outcome | None:
        assert self.state.delivery is not None
        return self.dispatch.outcome(self.keys, self.state.delivery)

    def _ended(self, outcome: Outcome) -> dict[str, bytes] | Failed | Stop | None:
        if outcome.end == "done":
            files = self.dispatch.rendered_files(self.keys, outcome)
            if files is not None:
                return files
            self._send("the render arrived incomplete; sent")
            return None
        if outcome.end == "failed":
            return Failed(outcome.kind or FailureKind.INTERNAL, outcome.message)
        if outcome.end == "stopped" and self._cancel_at is not None:
            self._save_checkpoint()
            return Stop(outcome.step)
        if outcome.end == "device_error":
            return self._death(outcome.worker, f"its device failed ({outcome.message})")
        self._save_checkpoint()  # retry (the worker shut down, lost files) or an old stop
        self._send(f"{outcome.message or 'a retry'}: sent")
        return None

    def _save_checkpoint(self) -> None:
        data = self.dispatch.checkpoint(self.keys)
        if data is not None:
            self.on_checkpoint(data)

    # ------------------------------------------------------------ leases and deaths

    def _check_lease(self) -> Failed | None:
        now = time.monotonic()
        held = text(self.client.get(self.keys.lease))
        delivery = self.state.delivery
        assert delivery is not None
        if held is not None:
            worker, _, leased = held.partition("|")
            if leased == delivery:
                self._seen_alive, self._worker = now, worker
                if self.client.get(self.keys.delivery) is None:  # the broker lost its data; the worker lives
                    self.client.set(self.keys.delivery, delivery, ex=7 * 86_400)
                    self.client.set(self.keys.started, delivery, ex=7 * 86_400)
            return None
        grace = self.dispatch.lease_s * 1.5
        if now - self._seen_alive < grace:
            return None
        started = self.client.get(self.keys.started)
        if started is not None and text(started) == delivery:
            return self._death(self._worker or "?", "it stopped renewing its lease")
        if self.client.get(self.keys.delivery) is None:
            # The broker lost the message with its data (a restart without its dump).
            self._save_checkpoint()
            self._send("the broker lost it; sent")
        else:
            self._seen_alive = now  # queued: waiting for a free worker
        return None

    def _death(self, worker: str, why: str) -> Failed | None:
        state = self.state
        state.deaths += 1
        state.workers.append(worker)
        state.save(self.claim.folder)
        self._save_checkpoint()
        if state.deaths >= MAX_ATTEMPTS:
            names = ", ".join(printable(w) for w in state.workers)
            self.client.delete(self.keys.delivery)  # a late redelivery is dropped
            return Failed(FailureKind.INTERNAL,
                          f"this file stopped {state.deaths} workers ({names}) and was set aside")
        step = self._checkpoint_step
        logger.warning("worker %s lost %s: %s (%d of %d); it goes to another worker%s", printable(worker),
                       self.source, why, state.deaths, MAX_ATTEMPTS, f" from step {step}" if step else "")
        self._send("sent")
        return None

    def _stopping(self) -> Stop | None:
        """Ask the worker to checkpoint and stop; a job no worker has started yet is
        simply withdrawn (a queued message of it is then dropped as stale)."""
        now = time.monotonic()
        delivery = self.state.delivery
        assert delivery is not None
        if self._cancel_at is None:
            self._cancel_at = now
            started = self.client.get(self.keys.started)
            if started is None or text(started) != delivery:
                self.client.delete(self.keys.delivery)
                return Stop(0)
            self.client.set(self.keys.cancel, delivery, ex=3600)
            logger.info("%s: asked worker %s to checkpoint and stop", self.source, printable(self._worker))
        elif now - self._cancel_at > STOP_WAIT_S:
            logger.warning("%s: worker %s did not stop in %.0f s; the job resumes from its last checkpoint",
                           self.source, printable(self._worker), STOP_WAIT_S)
            return Stop(self._step)
        return None

