"""The daemon: wires the inbox watcher, the worker, the console view and sd_notify.

``run_once()`` handles one job (an interrupted claim first, then the oldest ready
file); ``run()`` repeats it until stopped; ``run(once=True)`` drains the inbox and
returns (what ``serve --once`` and the tests use). Claiming a file makes its job
description (``describe``); running it is the ``JobRunner``'s business (the local
worker, handed in by the CLI, so this module never loads torch).

Signals: ``install_signal_handlers`` makes SIGTERM and SIGINT set the stop flag and
nothing else; the running job stops at its next step, checkpoints and the loop
returns. A second signal is the cold stop: the process exits at once (130), and the
claim, whose lock the kernel drops, resumes from its last checkpoint at the next start.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from ..config import Config
from ..engine.steps import StepInfo
from ..job.spec import Caps, JobSpec
from ..presets import PresetLibrary
from .admin import clock
from .claims import Claim, claim, interrupted_claims
from .describe import describe
from .journal import Journal
from .layout import HotFolder
from .origins import Rejected, SidecarPreset
from .runner import JobEnd, JobEvents, JobRunner
from .sdnotify import WatchdogGate
from .watcher import Candidate, Inbox, InboxWatcher, Waiting

__all__ = ["Service", "ServiceView", "caps_of", "install_signal_handlers"]

logger = logging.getLogger(__name__)

SIDE_SCAN_S = 1.0  # how often a running job's steps make room for the inbox


class ServiceView(Protocol):
    """What the console (rich live view or log lines) is told."""

    def queue(self, waiting: Sequence[Waiting]) -> None: ...
    def job_started(self, name: str, spec: JobSpec) -> None: ...
    def step(self, name: str, info: StepInfo) -> None: ...
    def job_ended(self, name: str, outcome: str, seconds: float) -> None: ...


class Notifier(Protocol):
    def ready(self) -> bool: ...
    def status(self, text: str) -> bool: ...
    def watchdog(self) -> bool: ...
    def stopping(self) -> bool: ...


def install_signal_handlers(stop: threading.Event, on_stop: Callable[[], None] = lambda: None) -> None:
    """SIGTERM/SIGINT: the first sets ``stop`` (warm stop), a second exits at once."""

    def on_signal(signum: int, _frame: Any) -> None:
        if stop.is_set():
            os._exit(130)
        stop.set()
        on_stop()

    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, on_signal)


def caps_of(config: Config) -> Caps:
    return Caps(max_steps=config.max_steps, max_size=config.max_size, max_input_pixels=config.max_input_pixels,
                memory_budget_mb=config.memory_budget_mb)


@dataclass
class Service:
    config: Config
    hot: HotFolder
    journal: Journal
    runner: JobRunner
    view: ServiceView | None = None
    notifier: Notifier | None = None
    stop: threading.Event = field(default_factory=threading.Event)
    counts: dict[str, int] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.hot.ensure()
        self.library = PresetLibrary.for_config(self.config)
        self.caps = caps_of(self.config)
        self.inbox = Inbox(self.hot, self.config.settle_s, self.config.pair_timeout_s,
                           has_preset=lambda name: self.library.find(name) is not None,
                           default_preset=self.config.default_preset)
        self.wake = threading.Event()
        self.watcher = InboxWatcher(self.inbox, self.wake, poll=self.config.poll)
        self.runner.events = JobEvents(on_start=self._on_start, on_step=self._on_step)
        self._stop = self.stop
        self.gate = WatchdogGate(["watcher", "worker"])
        self._last_reconcile = 0.0
        self._last_ping = 0.0
        self._last_side_scan = 0.0
        self._current: str | None = None

    # ------------------------------------------------------------ control

    def request_stop(self) -> None:
        """Warm stop: take no new job; the running one checkpoints at its next step."""
        self._stop.set()
        self.wake.set()

    @property
    def stopping(self) -> bool:
        return self._stop.is_set()

    def run(self, once: bool = False) -> int:
        """Serve until stopped (or, with ``once``, until the inbox is drained). Returns
        the exit code: 1 if ``once`` and a job failed, else 0."""
        self.watcher.start()
        self.inbox.scan(time.monotonic())
        self._notify("ready")
        self._status()
        logger.info("serving %s (%d files waiting)", self.hot.root, self.inbox.waiting())
        try:
            while not self._stop.is_set():
                if self.run_once():
                    continue
                if once and self.inbox.waiting() == 0:
                    break
                self._idle()
        finally:
            self._notify("stopping")
            self.watcher.stop()
            summary = ", ".join(f"{k} {v}" for k, v in sorted(self.counts.items())) or "no jobs"
            logger.info("stopped: %s", summary)
        return 1 if once and self.counts.get(JobEnd.FAILED.value) else 0

    def run_once(self) -> bool:
        """Handle one job if there is one; True if one was handled."""
        now = time.monotonic()
        if now - self._last_reconcile >= self.config.scan_interval_s or self._last_reconcile == 0.0:
            self._last_reconcile = now
            interrupted = next(interrupted_claims(self.hot), None)
            if interrupted is not None:
                logger.info("resuming interrupted job %s (%s)", interrupted.job_id, interrupted.meta.source)
                self._last_reconcile = 0.0  # look again right after: there may be more
                self._work(interrupted)
                return True
        self.inbox.scan(now)
        for candidate in self.inbox.ready(now):
            taken = self._claim(candidate)
            if taken is not None:
                self._status()  # the queue shrank: say so before the job's first step
                self._work(taken)
                return True
        return False

    # ------------------------------------------------------------ internals

    def _claim(self, candidate: Candidate) -> Claim | None:
        """Claim the file and describe its job, snapshotting its preset now."""
        sidecar = candidate.sidecar
        if isinstance(candidate.origin, SidecarPreset) and candidate.origin.shared:
            # SPEC §3: NAME.json applies to every NAME.EXT; the last image takes the file.
            sidecar = None
        self.inbox.forget(candidate.path)
        if sidecar is not None:
            self.inbox.forget(sidecar)
        try:
            taken = claim(self.hot, candidate.path, sidecar, candidate.source, candidate.origin)
        except OSError as exc:
            # EXDEV: the inbox is another filesystem (a mounted share) and cannot be
            # claimed by rename. The file stays where it is; `stylefold doctor` says why.
            logger.error("cannot claim %s: %s (inbox and .stylefold/ must be on one filesystem)",
                         candidate.source, exc)
            return None
        except Exception:  # nothing about one file may stop the daemon
            logger.exception("cannot claim %s; will look again at the next scan", candidate.source)
            return None
        if taken is None:
            logger.info("%s was taken by another process (or removed)", candidate.source)
        return taken

    def _work(self, job: Claim) -> None:
        if job.meta.spec is None and job.meta.failure is None:
            # A fresh claim, or one interrupted before its description was written.
            describe(job, self.hot, self.library, self.caps)
        started = time.monotonic()
        name = job.meta.source
        running, self._current = self._current, name
        try:
            result = self.runner.run(job, should_stop=self._stop.is_set)
        finally:
            self._current = running  # None, or the job this one failed beside
        seconds = time.monotonic() - started
        self.counts[result.end.value] = self.counts.get(result.end.value, 0) + 1
        # The one line a job's end gets, on a terminal and in the journal alike.
        (logger.error if result.end is JobEnd.FAILED else logger.info)(result.line(name, seconds))
        if self.view is not None:
            self.view.job_ended(name, result.end.value, seconds)
        self._status()

    def _idle(self) -> None:
        self._status()
        self._ping_watchdog()
        now = time.monotonic()
        waits = [self.config.scan_interval_s, 5.0]
        interval = getattr(self.notifier, "watchdog_interval_s", None)
        if interval:
            waits.append(interval)
        upcoming = self.inbox.next_wakeup(now)
        if upcoming is not None:
            waits.append(upcoming + 0.01)
        self.wake.wait(max(0.05, min(waits)))
        self.wake.clear()

    def _on_start(self, job: Claim, spec: JobSpec) -> None:
        if self.view is not None:
            self.view.job_started(job.meta.source, spec)

    def _on_step(self, job: Claim, info: StepInfo) -> None:
        if self.view is not None:
            self.view.step(job.meta.source, info)
        self._ping_watchdog()
        self._between_steps(info)
        if info.step % 10 == 0 or info.step == info.steps:
            self._status(info)

    def _between_steps(self, info: StepInfo) -> None:
        """While a job runs, the inbox's clocks keep going: files settle, pairing
        timeouts run out, and what fails without the model (an orphan sidecar, no
        preset, not an image) fails now, not after the running job."""
        now = time.monotonic()
        if now - self._last_side_scan < SIDE_SCAN_S or self._stop.is_set():
            return
        self._last_side_scan = now
        try:
            self.inbox.scan(now)
            for candidate in [c for c in self.inbox.ready(now) if isinstance(c.origin, Rejected)]:
                taken = self._claim(candidate)
                if taken is not None:
                    self._work(taken)
        except Exception:  # another file's trouble must never fail the running job
            logger.exception("handling the inbox between two steps failed; it is looked at again after the job")
        self._status(info)

    def _ping_watchdog(self) -> None:
        """WATCHDOG=1 at half of WATCHDOG_USEC, and only while the watcher thread lives
        and the worker makes progress. Called from the idle loop and from each
        optimisation step, never from a timer thread: a hung job or loop stops the
        pings and systemd restarts the process (the job resumes from its checkpoint)."""
        now = time.monotonic()
        self.watcher.supervise()
        self.gate.beat("worker", now)
        if self.watcher.alive() or not self.watcher.enabled:
            self.gate.beat("watcher", now)
        interval = getattr(self.notifier, "watchdog_interval_s", None)
        if interval is None or now - self._last_ping < interval:
            return
        if self.gate.healthy(now, max_silence_s=2 * interval):
            self._last_ping = now
            self._notify("watchdog")
        else:
            logger.warning("not pinging the watchdog: %s silent", ", ".join(self.gate.stale(now, 2 * interval)))

    def _status(self, info: StepInfo | None = None) -> None:
        if self.view is not None:
            offset = time.time() - time.monotonic()  # the queue's times are monotonic
            queue = self.inbox.queue(time.monotonic(), clock=lambda t: clock(t + offset))
            self.view.queue(queue)
            waiting = len(queue)
        else:
            waiting = self.inbox.waiting()
        text = f"{waiting} waiting"
        if self._current and info is not None:
            text += f"; {self._current} step {info.step}/{info.steps}"
        elif self._current:
            text += f"; {self._current}"
        self._notify("status", text)

    def _notify(self, what: str, *args: Any) -> None:
        if self.notifier is not None:
            method: Callable[..., bool] = getattr(self.notifier, what)
            method(*args)

