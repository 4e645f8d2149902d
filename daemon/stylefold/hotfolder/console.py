"""Progress for humans: a rich bar on a terminal, plain log lines elsewhere.

rich's ``Progress`` animates only on a terminal and prints nothing until it stops
otherwise, so off a terminal (systemd, pipes, CI) progress goes through ``logging``
every ``log_every_s`` seconds instead. One ``Console`` is shared with the log handler
so that log lines print above the bar, not through it.
"""

from __future__ import annotations

import logging
import os
import time
from collections import deque
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn
from rich.text import Text

from ..engine.steps import StepInfo
from ..job.spec import JobSpec
from ..names import printable
from .watcher import Waiting

__all__ = ["RateMeter", "ServeConsole", "StepReporter", "console", "eta_text", "is_interactive", "step_reporter"]

logger = logging.getLogger(__name__)

_console: Console | None = None


def console() -> Console:
    """The process's one console, on stderr (stdout stays for data such as --json)."""
    global _console
    if _console is None:
        _console = Console(stderr=True)
    return _console


def is_interactive() -> bool:
    # systemd sets JOURNAL_STREAM for services whose output goes to the journal.
    return console().is_terminal and not os.environ.get("JOURNAL_STREAM")


class RateMeter:
    """Steps per second over the last ``window`` steps, and the time left at that rate.

    Not the average since the start: a job's first steps (targets, kernel choice, a
    resume's offset) are no guide to the rest. The ETA is called a guess until it rests
    on ``min_steps`` steps spanning ``min_span_s`` seconds.
    """

    def __init__(self, window: int = 20, min_steps: int = 10, min_span_s: float = 5.0) -> None:
        self._points: deque[tuple[int, float]] = deque(maxlen=window)
        self._min_steps, self._min_span_s = min_steps, min_span_s

    def update(self, info: StepInfo) -> tuple[float, float, bool]:
        """(steps/s, seconds left or NaN, whether the ETA is still a guess)."""
        if self._points and info.step <= self._points[-1][0]:
            self._points.clear()  # a new job, or a new scale
        self._points.append((info.step, info.elapsed_s))
        (s0, t0), (s1, t1) = self._points[0], self._points[-1]
        rate = (s1 - s0) / (t1 - t0) if t1 > t0 and s1 > s0 else 0.0
        eta = (info.steps - info.step) / rate if rate > 0 else float("nan")
        guess = len(self._points) < self._min_steps or t1 - t0 < self._min_span_s
        return rate, eta, guess


def eta_text(eta: float, guess: bool) -> str:
    if eta != eta:
        return "time left unknown yet"
    return f"~{eta:.0f} s left (a first guess)" if guess else f"{eta:.0f} s left"


class StepReporter:
    """Receives each step of one job; shows a bar or logs a line every few seconds."""

    def __init__(self, label: str, total: int, progress: Progress | None, log_every_s: float) -> None:
        self.label = label
        self.total = total
        self._progress = progress
        # The description is markup: a file named "[red]x.jpg" must show as it is.
        self._task = progress.add_task(escape(printable(label)), total=total, losses="", rate="") if progress else None
        self._log_every_s = log_every_s
        self._last_log = time.monotonic()
        self._meter = RateMeter()

    def __call__(self, info: StepInfo) -> None:
        rate, eta, guess = self._meter.update(info)
        if self._progress is not None and self._task is not None:
            self._progress.update(
                self._task, completed=info.step,
                losses=f"total {info.total_loss:.4g}  style {info.style_loss:.4g}  content {info.content_loss:.4g}",
                rate=f"{rate:.2f} steps/s, {eta_text(eta, guess)}",
            )
            return
        now = time.monotonic()
        if now - self._last_log >= self._log_every_s or info.step == info.steps:
            self._last_log = now
            logger.info(
                "%s: step %d/%d total=%.4g style=%.4g content=%.4g %.2f steps/s, %s",
                self.label, info.step, info.steps, info.total_loss, info.style_loss,
                info.content_loss, rate, eta_text(eta, guess),
            )


@contextmanager
def step_reporter(label: str, total: int, log_every_s: float = 10.0) -> Iterator[StepReporter]:
    if not is_interactive():
        yield StepReporter(label, total, None, log_every_s)
        return
    columns = (
        TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
        TextColumn("{task.fields[losses]}"), TextColumn("{task.fields[rate]}"),
    )
    with Progress(*columns, console=console(), transient=False) as progress:
        yield StepReporter(label, total, progress, log_every_s)


class ServeConsole:
    """The daemon's console: a rich live view on a terminal, log lines elsewhere.

    Live view: queue depth, the running job (step/total, losses, steps/s, ETA) and the
    last results. Off a terminal: a line when a job starts and ends, and a progress line
    every ``log_every_s`` seconds (rich's Live would print nothing until it stops).
    """

    def __init__(self, log_every_s: float = 10.0) -> None:
        self.log_every_s = log_every_s
        self.interactive = is_interactive()
        self._waiting: Sequence[Waiting] = ()
        self._meter = RateMeter()
        self._eta = (0.0, float("nan"), True)
        self._job: str | None = None
        self._info: StepInfo | None = None
        self._recent: list[tuple[str, str, float]] = []
        self._last_log = 0.0
        self._live: Any = None

    def __enter__(self) -> ServeConsole:
        if self.interactive:
            from rich.live import Live

            self._live = Live(self._render(), console=console(), refresh_per_second=4, transient=False)
            self._live.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        if self._live is not None:
            self._live.__exit__(*exc)
            self._live = None

    def queue(self, waiting: Sequence[Waiting]) -> None:
        self._waiting = waiting
        self._refresh()

    def job_started(self, name: str, spec: JobSpec) -> None:
        preset = spec.preset
        self._job, self._info = name, None
        self._meter = RateMeter()
        self._last_log = time.monotonic()
        # The preset's size and steps: a job made coarse to fine or in tiles runs more
        # steps in all, which its progress lines count (step k/N).
        logger.info("job start %s (preset %s: size %d, %d steps)", name, printable(spec.preset_source[:80]),
                    preset.size, preset.steps)
        self._refresh()

    def step(self, name: str, info: StepInfo) -> None:
        self._info = info
        self._eta = self._meter.update(info)
        now = time.monotonic()
        if not self.interactive and now - self._last_log >= self.log_every_s:
            self._last_log = now
            rate, eta, guess = self._eta
            logger.info("job %s step %d/%d total=%.4g %.2f steps/s, %s", name, info.step, info.steps,
                        info.total_loss, rate, eta_text(eta, guess))
        self._refresh()

    def job_ended(self, name: str, outcome: str, seconds: float) -> None:
        # No log line: the service logs the one line of a job's end.
        self._recent = [(name, outcome, seconds), *self._recent][:8]
        if name == self._job:  # a file failed between two steps of the running job leaves it shown
            self._job, self._info = None, None
        self._refresh()

    def _refresh(self) -> None:
        if self._live is not None:
            self._live.update(self._render())

    def _render(self) -> Any:
        from rich.table import Table

        table = Table(title=f"stylefold: {len(self._waiting)} waiting", expand=False, show_header=True)
        table.add_column("job")
        table.add_column("progress")
        table.add_column("losses")
        table.add_column("rate / ETA")
        if self._job is not None:
            info = self._info
            if info is None:
                table.add_row(_shown(self._job), "starting", "", "")
            else:
                rate, eta, guess = self._eta
                losses = f"total {info.total_loss:.4g} style {info.style_loss:.4g} content {info.content_loss:.4g}"
                table.add_row(_shown(self._job), f"{info.step}/{info.steps}", losses,
                              f"{rate:.2f} steps/s, {eta_text(eta, guess)}")
        for entry in self._waiting[:8]:
            table.add_row(_shown(entry.source), "waiting", _shown(entry.reason), "")
        if len(self._waiting) > 8:
            table.add_row(f"... and {len(self._waiting) - 8} more", "waiting", "", "")
        for name, outcome, seconds in self._recent:
            table.add_row(_shown(name), outcome, "", f"{seconds:.1f}s")
        return table


def _shown(text: str) -> Text:
    """A name from the inbox as a table cell: a ``Text`` (a plain str would be parsed as
    markup, and "[/]" in a file name broke the live view), control characters escaped."""
    return Text(printable(text))
