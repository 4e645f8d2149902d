"""What the service asks of whatever runs its jobs: the local worker today, a queue of
remote workers next. Torch-free, so the service never loads torch to name it."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum
from typing import Protocol

from ..engine.steps import StepInfo
from ..job.spec import JobSpec
from .claims import Claim

__all__ = ["JobEnd", "JobEvents", "JobRunner"]


class JobEnd(StrEnum):
    """How a claimed job ended, as the service counts it."""

    DONE = "done"
    FAILED = "failed"
    STOPPED = "stopped"
    DUPLICATE = "duplicate"


@dataclass
class JobEvents:
    """Callbacks for the console and sd_notify; all optional."""

    on_start: Callable[[Claim, JobSpec], None] | None = None
    on_step: Callable[[Claim, StepInfo], None] | None = None


class JobRunner(Protocol):
    events: JobEvents

    def run(self, claim: Claim, should_stop: Callable[[], bool]) -> JobEnd: ...
