"""The inbox paths this process is claiming, for the log of ``serve --broker``'s lanes.

The lanes (``[cluster] slots`` Services in one process) race for every new file; the
one that wins says so, and a lane that lost to a sibling lane need not say at INFO that
"another process" took it. A path counts as this process's while one of its claims of
it is under way (noted before the rename, so that a loser looking the moment the
winner's rename is done finds it) and for ``REMEMBER_S`` seconds after one took it: a
loser learns of its loss within milliseconds.
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from pathlib import Path

__all__ = ["REMEMBER_S", "begin_claim", "claimed_here", "end_claim", "not_claimed"]

REMEMBER_S = 10.0

_under_way: Counter[Path] = Counter()  # inbox path -> claims of it in progress here
_taken: dict[Path, float] = {}  # inbox path -> when a claim here took it (monotonic)
_lock = threading.Lock()


def claimed_here(image: Path) -> bool:
    """Whether a claim of ``image`` by this process is under way, or took it in the last
    ``REMEMBER_S`` seconds. Asked by a claim that has ended, so it is not counted."""
    with _lock:
        return _under_way[image] > 0 or time.monotonic() - _taken.get(image, -REMEMBER_S) < REMEMBER_S


def begin_claim(image: Path) -> None:
    with _lock:
        _under_way[image] += 1


def end_claim(image: Path, taken: bool) -> None:
    now = time.monotonic()
    with _lock:
        _under_way[image] -= 1
        if _under_way[image] <= 0:
            del _under_way[image]
        for old in [p for p, at in _taken.items() if now - at >= REMEMBER_S]:
            del _taken[old]  # a months-long run keeps only the last seconds' paths
        if taken:
            _taken[image] = now


def not_claimed(image: Path) -> None:
    """The claim that took ``image`` gave it back to the inbox: it is not this process's."""
    with _lock:
        _taken.pop(image, None)
