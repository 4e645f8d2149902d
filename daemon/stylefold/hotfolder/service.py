"""The daemon: wires the inbox watcher, the worker, the console view and sd_notify.

``run_once()`` handles one job (an interrupted claim first, then the oldest ready
file); ``run()`` repeats it until stopped; ``run(once=True)`` drains the inbox and
returns (what ``serve --once`` and the tests use). Claiming a file makes its job
description (``describe``); running it is the ``JobRunner``'s business (the local
worker, handed in by the CLI, so this module never loads torch).

A warm stop (``signals.install_signal_handlers``, ``request_stop``) sets ``stop``: the
running job stops at its next step, checkpoints, and the loop returns.

Nothing the filesystem does escapes the loop: a claim that a full disk refuses leaves
the file in the inbox (``SpaceWatch`` says so once), a job that cannot finish waits
(``Parking``), and anything else is logged and looked at again after a pause.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from ..config import Config
from ..engine.steps import StepInfo
from ..failures import is_disk_full
from ..job.spec import Caps, JobSpec
from ..names import printable
from ..presets import PresetLibrary
from .admin import clock
from .claims import Claim, claim, claimed_here, interrupted_claims
from .describe import describe
from .journal import Journal
from .layout import HotFolder
from .origins import Rejected, SidecarPreset
from .runner import FatalDeviceError, JobEnd, JobEvents, JobResult, JobRunner
from .sdnotify import WatchdogGate
from .waits import DISK_RETRY_S, Parking, SpaceWatch
from .watcher import Candidate, Inbox, InboxWatcher, Waiting

__all__ = ["Service", "ServiceView", "caps_of"]

logger = logging.getLogger(__name__)

SIDE_SCAN_S = 1.0  # how often a running job's steps make room for the inbox
TROUBLE_PAUSE_S = 5.0  # after an unexpected error in the loop, before the next try


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
    # Set to end the idle wait early: by the watcher, by request_stop, and by the
    # caller's signal handler (hand the same event to both).
    wake: threading.Event = field(default_factory=threading.Event)

    def __post_init__(self) -> None:
        self.hot.ensure()
        self.library = PresetLibrary.for_config(self.config)
        self.caps = caps_of(self.config)
        self.inbox = Inbox(self.hot, self.config.settle_s, self.config.pair_timeout_s,
                           has_preset=lambda name: self.library.find(name) is not None,
                           default_preset=self.config.default_preset)
        self.watcher = InboxWatcher(self.inbox, self.wake, poll=self.config.poll)
        self.runner.events = JobEvents(on_start=self._on_start, on_step=self._on_step)
        # A journal write waiting out another process's lock calls this between tries:
        # the worker is blocked in it, and nothing else would feed the watchdog.
        also = self.journal.on_wait  # a hook set by whoever made the journal runs too

        def on_journal_wait() -> None:
            self._ping_watchdog()
            if also is not None:
                also()

        self.journal.on_wait = on_journal_wait
        self._stop = self.stop
        self.gate = WatchdogGate(["watcher", "worker"])
        self._last_reconcile = 0.0
        self._last_ping = 0.0
        self._last_side_scan = 0.0
        self._current: str | None = None
        self.space = SpaceWatch()
        self.parking = Parking()
        self._claims_held_until = 0.0  # no new claims before this (the disk was full)
        self._paused_until = 0.0  # the loop met an unexpected error: pause before the next try
        self._trouble_said: set[str] = set()

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
        try:
            self.inbox.scan(time.monotonic())
        except OSError as exc:  # an unreadable inbox: said, and looked at again in the loop
            logger.error("cannot read the inbox %s now (%s); trying again", self.hot.inbox, exc)
        self._notify("ready")
        self._status()
        logger.info("serving %s (%d files waiting)", self.hot.root, self.inbox.waiting())
        try:
            while not self._stop.is_set():
                if self.run_once():
                    continue
                if once and self.inbox.waiting() == 0:
                    break
                try:
                    self._idle()
                except Exception as exc:  # never the end of the daemon: pause, then go on
                    logger.exception("the idle loop failed (%s); going on in %.0f s", exc, TROUBLE_PAUSE_S)
                    self._stop.wait(TROUBLE_PAUSE_S)
        finally:
            self._notify("stopping")
            self.watcher.stop()
            summary = ", ".join(f"{k} {v}" for k, v in sorted(self.counts.items())) or "no jobs"
            logger.info("stopped: %s", summary)
        return 1 if once and self.counts.get(JobEnd.FAILED.value) else 0

    def run_once(self) -> bool:
        """Handle one job if there is one; True if one was handled. Never raises: what
        goes wrong with the folders is logged (each kind of trouble once) and tried again
        after a pause."""
        now = time.monotonic()
        if now < self._paused_until:
            return False
        try:
            return self._run_once(now)
        except Exception as exc:
            self._paused_until = time.monotonic() + TROUBLE_PAUSE_S
            if is_disk_full(exc):
                self.space.filled(self.hot.state, f"{exc}")
                return False
            said = f"{type(exc).__name__}: {exc}"
            if said not in self._trouble_said:
                self._trouble_said.add(said)
                logger.exception("the inbox cannot be handled now (%s); trying again every %.0f s",
                                 exc, TROUBLE_PAUSE_S)
            return False

    def _run_once(self, now: float) -> bool:
        due = self.parking.next_due()
        if (now - self._last_reconcile >= self.config.scan_interval_s or self._last_reconcile == 0.0
                or (due is not None and due <= now)):
            self._last_reconcile = now
            interrupted = self._next_interrupted(now)
            if interrupted is not None:
                logger.info("resuming interrupted job %s (%s)", interrupted.job_id, interrupted.meta.source)
                self._last_reconcile = 0.0  # look again right after: there may be more
                self._work(interrupted)
                return True
        self.inbox.scan(now)
        if now < self._claims_held_until:
            return False  # waiting for disk space: the inbox stays as it is
        for candidate in self.inbox.ready(now):
            taken = self._claim(candidate)
            if taken is not None:
                self._status()  # the queue shrank: say so before the job's first step
                self._work(taken)
                return True
            if now < self._claims_held_until:
                break
        return False

    def _next_interrupted(self, now: float) -> Claim | None:
        """The first interrupted claim that is not parked until later. After a full pass,
        parked claims that were not seen (finished or taken by another daemon) are
        forgotten."""
        seen = set()
        for found in interrupted_claims(self.hot):
            if self.parking.due(found.job_id, now):
                return found
            seen.add(found.job_id)
            found.release()
        self.parking.keep_only(seen)
        return None

    def next_retry(self, now: float) -> float | None:
        """When (monotonic, after ``now``) the idle loop must wake for a parked claim, a
        held inbox or the end of a pause. Times gone by do not count: a claim parked by
        this process but held by another daemon stays "due" and must not spin the loop."""
        times = [t for t in (self.parking.next_due(), self._claims_held_until, self._paused_until)
                 if t is not None and t > now]
        return min(times, default=None)

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
        except Exception as exc:  # nothing about one file may stop the daemon; claim() undoes itself
            if is_disk_full(exc):
                self._claims_held_until = time.monotonic() + DISK_RETRY_S
                self.space.filled(self.hot.work, f"cannot claim {candidate.source} (a claim needs a few KiB)")
            elif (said := f"{candidate.source}: {exc}") not in self._trouble_said:  # once per file and reason
                self._trouble_said = set() if len(self._trouble_said) > 1000 else self._trouble_said
                self._trouble_said.add(said)  # EXDEV: inbox/ and .stylefold/ on two filesystems (see doctor)
                logger.error("cannot claim %s (%s); it stays in the inbox and is tried again", candidate.source, exc)
            return None
        if taken is None:  # a sibling lane (serve --broker) that took it says so itself: DEBUG then
            level = logging.DEBUG if claimed_here(candidate.path) else logging.INFO
            logger.log(level, "%s was taken by another process (or removed)", candidate.source)
        else:
            self.space.room()
        return taken

    def _work(self, job: Claim) -> None:
        started = time.monotonic()
        name = job.meta.source
        running, self._current = self._current, name
        try:
            result = self._run_job(job)
        finally:
            self._current = running  # None, or the job this one failed beside
        seconds = time.monotonic() - started
        self.counts[result.end.value] = self.counts.get(result.end.value, 0) + 1
        if result.end is JobEnd.WAITING:
            self._park(job, result, name, seconds)
        else:
            self.parking.release(job.job_id)
            # The one line a job's end gets, on a terminal and in the journal alike.
            (logger.error if result.end is JobEnd.FAILED else logger.info)(result.line(name, seconds))
            if result.end in (JobEnd.DONE, JobEnd.FAILED, JobEnd.DUPLICATE):
                self.space.room()
        if self.view is not None:
            self.view.job_ended(name, result.end.value, seconds)
        self._status()

    def _run_job(self, job: Claim) -> JobResult:
        """The runner's result; what escapes it (or the description) makes the job wait."""
        try:
            if job.meta.spec is None and job.meta.failure is None:
                # A fresh claim, or one interrupted before its description was written.
                describe(job, self.hot, self.library, self.caps)
            return self.runner.run(job, should_stop=self._stop.is_set)
        except FatalDeviceError:
            raise
        except Exception as exc:
            if not is_disk_full(exc):
                logger.exception("%s could not be run", job.meta.source)
            job.release()
            return JobResult(JobEnd.WAITING, message=f"it could not be run ({exc})", disk_full=is_disk_full(exc),
                             where=str(job.folder))

    def _park(self, job: Claim, result: JobResult, name: str, seconds: float) -> None:
        delay, first = self.parking.park(job.job_id, time.monotonic(), disk_full=result.disk_full)
        if result.disk_full:
            self.space.filled(Path(result.where) if result.where else self.hot.state, f"{name}: {result.message}")
        elif first:
            logger.warning("%s (next try in %.0f s)", result.line(name, seconds), delay)
        else:
            logger.debug("%s (next try in %.0f s)", result.line(name, seconds), delay)

    def _idle(self) -> None:
        """Sleep until something can have changed: a filesystem event, a file settling or
        timing out (``next_wakeup``), a parked claim or a held inbox due (``next_retry``),
        the watchdog's interval, or ``scan_interval_s``. Only times still to come count:
        one in the past (a preset.json older than pair_timeout_s, a pause that is over)
        made the loop rescan every 50 ms forever (issue 13)."""
        self._status()
        self._ping_watchdog()
        now = time.monotonic()
        waits = [self.config.scan_interval_s]
        interval = getattr(self.notifier, "watchdog_interval_s", None)
        if interval:
            waits.append(interval)
        upcoming = self.inbox.next_wakeup(now)
        if upcoming is not None:
            waits.append(upcoming + 0.01)
        retry = self.next_retry(now)
        if retry is not None:
            waits.append(retry - now + 0.01)
        woken = self.wake.wait(max(0.05, min(waits)))
        self.wake.clear()
        if woken and not self._stop.is_set():
            # An event only means "look sooner", and a copy in progress sends one per
            # write: gathering them for a moment keeps a busy writer from making a busy loop.
            self._stop.wait(min(0.25, self.config.settle_s / 2))

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
        # Escaped: STATUS= is one line of the notify protocol, and a name is anyone's.
        current = printable(self._current) if self._current else None
        if current and info is not None:
            text += f"; {current} step {info.step}/{info.steps}"
        elif current:
            text += f"; {current}"
        if self.space.full:
            text += "; waiting for disk space"
        if self.parking:
            text += f"; {len(self.parking)} waiting to be finished"
        self._notify("status", text)

    def _notify(self, what: str, *args: Any) -> None:
        if self.notifier is not None:
            method: Callable[..., bool] = getattr(self.notifier, what)
            method(*args)

