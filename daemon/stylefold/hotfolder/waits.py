"""Jobs that wait for the world: a full disk, a folder that refuses files.

- ``SpaceWatch``: whether the daemon is waiting for room on a disk. It logs once when
  the disk fills (what is full, how much is free, what was needed) and once when there
  is room again, never a line a second in between.
- ``Parking``: claims whose last try could not finish (``JobEnd.WAITING``), each with
  the time of its next try. A parked claim is not resumed before then, so one file that
  cannot be moved into a read-only ``done/`` does not starve the rest of the inbox by
  being "the interrupted job, resumed first" at every turn of the loop.

No torch here.
"""

from __future__ import annotations

import logging
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

__all__ = ["DISK_RETRY_S", "Parking", "SpaceWatch", "free_text", "human_size"]

logger = logging.getLogger(__name__)

DISK_RETRY_S = 5.0  # how often a job waiting for disk space tries again (cheap: one write)
FIRST_RETRY_S = 30.0  # a refused move: 30 s, 60 s, 120 s... up to MAX_RETRY_S
MAX_RETRY_S = 600.0


def free_text(where: Path) -> str:
    """"12 KiB free of 1.0 MiB on the filesystem of WHERE"."""
    try:
        usage = shutil.disk_usage(where)
    except OSError:
        return f"the filesystem of {where}"
    return f"{human_size(usage.free)} free of {human_size(usage.total)} on the filesystem of {where}"


def human_size(n: int) -> str:
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{value:.1f} TiB"  # pragma: no cover


@dataclass
class SpaceWatch:
    """Waiting for disk space, said once."""

    full_since: float | None = None
    where: Path | None = None

    @property
    def full(self) -> bool:
        return self.full_since is not None

    def filled(self, where: Path, what: str) -> None:
        """``what`` could not be written under ``where`` for want of space."""
        if self.full_since is not None:
            logger.debug("still no space: %s", what)
            return
        self.full_since, self.where = time.monotonic(), where
        logger.error("disk full: %s (%s); the inbox waits, untouched, and jobs go on by themselves once there "
                     "is room (tried again every %.0f s)", what, free_text(where), DISK_RETRY_S)

    def room(self) -> None:
        """A write that needed space succeeded."""
        if self.full_since is None:
            return
        waited = time.monotonic() - self.full_since
        logger.info("disk space is back (%s); going on after %.0f s", free_text(self.where or Path(".")), waited)
        self.full_since = self.where = None


@dataclass
class _Parked:
    due: float
    tries: int


@dataclass
class Parking:
    """Claims waiting for their next try, by job id."""

    _parked: dict[str, _Parked] = field(default_factory=dict)

    def park(self, job_id: str, now: float, *, disk_full: bool) -> tuple[float, bool]:
        """Put a claim aside; returns (seconds to its next try, whether this is its first
        wait, for a log line said once)."""
        previous = self._parked.get(job_id)
        tries = previous.tries + 1 if previous else 1
        delay = DISK_RETRY_S if disk_full else min(FIRST_RETRY_S * 2 ** (tries - 1), MAX_RETRY_S)
        self._parked[job_id] = _Parked(now + delay, tries)
        return delay, previous is None

    def release(self, job_id: str) -> None:
        self._parked.pop(job_id, None)

    def keep_only(self, job_ids: set[str]) -> None:
        """Forget every parked claim not in ``job_ids``."""
        for gone in set(self._parked) - job_ids:
            del self._parked[gone]

    def due(self, job_id: str, now: float) -> bool:
        parked = self._parked.get(job_id)
        return parked is None or parked.due <= now

    def next_due(self) -> float | None:
        """The monotonic time of the earliest next try, None if nothing is parked."""
        return min((p.due for p in self._parked.values()), default=None)

    def __len__(self) -> int:
        return len(self._parked)
