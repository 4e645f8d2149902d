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
from ..names import printable
from .claims import Claim

__all__ = ["FatalDeviceError", "JobEnd", "JobEvents", "JobResult", "JobRunner"]


class FatalDeviceError(RuntimeError):
    """A GPU error other than out-of-memory: the process should end for systemd to
    restart it with a fresh context; the job stays claimed and resumes."""


class JobEnd(StrEnum):
    """How a claimed job ended, as the service counts it."""

    DONE = "done"
    FAILED = "failed"
    STOPPED = "stopped"
    DUPLICATE = "duplicate"
    # Could not finish for a reason that may pass (a full disk, a folder that refuses
    # the original): the claim stays and is tried again later.
    WAITING = "waiting"


@dataclass(frozen=True)
class JobResult:
    """How a job ended, with what the one log line of its end says."""

    end: JobEnd
    output: str | None = None  # done, duplicate: the result
    kind: FailureKind | None = None  # failed
    message: str = ""  # failed: the sentence; duplicate: which job made the result
    step: int = 0  # stopped: where it resumes
    disk_full: bool = False  # waiting: for room on the disk (tries not counted as attempts)
    where: str | None = None  # waiting: the folder that is full or refuses

    def line(self, source: str, seconds: float) -> str:
        """The one log line of a job's end; ``source`` is escaped (a file name with a
        newline must not forge a second line)."""
        source = printable(source)
        if self.end is JobEnd.DONE:
            return f"done {source} -> {self.output} in {seconds:.1f} s"
        if self.end is JobEnd.FAILED:
            return f"failed {source} ({self.kind}) in {seconds:.1f} s: {self.message}"
        if self.end is JobEnd.STOPPED:
            return f"stopped {source} at step {self.step}; it resumes from there at the next start"
        if self.end is JobEnd.WAITING:
            return f"waiting {source}: {self.message}; it is tried again later"
        return f"skipped {source}: {self.message}; result is {self.output}"


@dataclass
class JobEvents:
    """Callbacks for the console and sd_notify; all optional."""

    on_start: Callable[[Claim, JobSpec], None] | None = None
    on_step: Callable[[Claim, StepInfo], None] | None = None


class JobRunner(Protocol):
    events: JobEvents

    def run(self, claim: Claim, should_stop: Callable[[], bool]) -> JobResult: ...
