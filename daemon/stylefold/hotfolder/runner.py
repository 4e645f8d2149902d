"""What the service asks of whatever runs its jobs: the local worker today, a queue of
remote workers next. Torch-free, so the service never loads torch to name it."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum
from typing import Protocol

from ..engine.steps import StepInfo
from ..failures import FailureKind
from ..job.spec import JobSpec
from .claims import Claim

__all__ = ["JobEnd", "JobEvents", "JobResult", "JobRunner"]


class JobEnd(StrEnum):
    """How a claimed job ended, as the service counts it."""

    DONE = "done"
    FAILED = "failed"
    STOPPED = "stopped"
    DUPLICATE = "duplicate"


@dataclass(frozen=True)
class JobResult:
    """How a job ended, with what the one log line of its end says."""

    end: JobEnd
    output: str | None = None  # done, duplicate: the result
    kind: FailureKind | None = None  # failed
    message: str = ""  # failed: the sentence; duplicate: which job made the result
    step: int = 0  # stopped: where it resumes

    def line(self, source: str, seconds: float) -> str:
        if self.end is JobEnd.DONE:
            return f"done {source} -> {self.output} in {seconds:.1f} s"
        if self.end is JobEnd.FAILED:
            return f"failed {source} ({self.kind}) in {seconds:.1f} s: {self.message}"
        if self.end is JobEnd.STOPPED:
            return f"stopped {source} at step {self.step}; it resumes from there at the next start"
        return f"skipped {source}: {self.message}; result is {self.output}"


@dataclass
class JobEvents:
    """Callbacks for the console and sd_notify; all optional."""

    on_start: Callable[[Claim, JobSpec], None] | None = None
    on_step: Callable[[Claim, StepInfo], None] | None = None


class JobRunner(Protocol):
    events: JobEvents

    def run(self, claim: Claim, should_stop: Callable[[], bool]) -> JobResult: ...
