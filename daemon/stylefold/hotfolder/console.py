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
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from ..engine.steps import StepInfo
from ..job.spec import JobSpec

__all__ = ["ServeConsole", "StepReporter", "console", "is_interactive",
           "step_reporter"]

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


def rate_and_eta(info: StepInfo) -> tuple[float, float]:
    """Steps per second so far and seconds left at that rate (NaN while unknown)."""
    rate = info.step / info.elapsed_s if info.elapsed_s > 0 else 0.0
    eta = (info.steps - info.step) / rate if rate > 0 else float("nan")
    return rate, eta


class StepReporter:
    """Receives each step of one job; shows a bar or logs a line every few seconds."""

    def __init__(self, label: str, total: int, progress: Progress | None, log_every_s: float) -> None:
        self.label = label
        self.total = total
        self._progress = progress
        self._task = progress.add_task(label, total=total, losses="", rate="") if progress else None
        self._log_every_s = log_every_s
        self._last_log = time.monotonic()

    def __call__(self, info: StepInfo) -> None:
        rate, eta = rate_and_eta(info)
        if self._progress is not None and self._task is not None:
            self._progress.update(
                self._task, completed=info.step,
                losses=f"total {info.total_loss:.4g}  style {info.style_loss:.4g}  content {info.content_loss:.4g}",
                rate=f"{rate:.2f} steps/s",
            )
            return
        now = time.monotonic()
        if now - self._last_log >= self._log_every_s or info.step == info.steps:
            self._last_log = now
            logger.info(
                "%s: step %d/%d total=%.4g style=%.4g content=%.4g %.2f steps/s ETA %.0fs",
                self.label, info.step, info.steps, info.total_loss, info.style_loss,
                info.content_loss, rate, eta,
            )


@contextmanager
def step_reporter(label: str, total: int, log_every_s: float = 10.0) -> Iterator[StepReporter]:
    if not is_interactive():
        yield StepReporter(label, total, None, log_every_s)
        return
    columns = (
        TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
        TextColumn("{task.fields[losses]}"), TextColumn("{task.fields[rate]}"), TimeRemainingColumn(),
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
        self._waiting = 0
        self._job: str | None = None
        self._steps = 0
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

    def queue(self, waiting: int) -> None:
        self._waiting = waiting
        self._refresh()

    def job_started(self, name: str, spec: JobSpec) -> None:
        preset = spec.preset
        self._job, self._steps, self._info = name, preset.steps, None
        self._last_log = time.monotonic()
        logger.info("job start %s (%d steps, size %d)", name, preset.steps, preset.size)
        self._refresh()

    def step(self, name: str, info: StepInfo) -> None:
        self._info = info
        now = time.monotonic()
        if not self.interactive and now - self._last_log >= self.log_every_s:
            self._last_log = now
            rate, eta = rate_and_eta(info)
            logger.info("job %s step %d/%d total=%.4g %.2f steps/s ETA %.0fs", name, info.step, info.steps,
                        info.total_loss, rate, eta)
        self._refresh()

    def job_ended(self, name: str, outcome: str, seconds: float) -> None:
        logger.info("job end %s: %s in %.1f s", name, outcome, seconds)
        self._recent = [(name, outcome, seconds), *self._recent][:8]
        self._job, self._info = None, None
        self._refresh()

    def _refresh(self) -> None:
        if self._live is not None:
            self._live.update(self._render())

    def _render(self) -> Any:
        from rich.table import Table

        table = Table(title=f"stylefold: {self._waiting} waiting", expand=False, show_header=True)
        table.add_column("job")
        table.add_column("progress")
        table.add_column("losses")
        table.add_column("rate / ETA")
        if self._job is not None:
            info = self._info
            if info is None:
                table.add_row(self._job, "starting", "", "")
            else:
                rate, eta = rate_and_eta(info)
                losses = f"total {info.total_loss:.4g} style {info.style_loss:.4g} content {info.content_loss:.4g}"
                table.add_row(self._job, f"{info.step}/{info.steps}", losses,
                              f"{rate:.2f} steps/s, {eta if eta == eta else 0.0:.0f}s left")
        for name, outcome, seconds in self._recent:
            table.add_row(name, outcome, "", f"{seconds:.1f}s")
        return table
