"""Style targets kept across jobs: studios reuse a handful of styles, and a style's Gram
matrices at a working size do not depend on the photo."""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

__all__ = ["StyleTargetCache", "tensor_digest"]


@dataclass
class StyleTargetCache:
    """Gram targets by (style pixels, layers, pooling, normalisation, precision).

    Keyed by a digest of the style tensor itself, so the same style file at the same
    working size hits the cache whichever job asks for it. Bounded (LRU): each entry is
    a few MB at most (C x C matrices), but a daemon runs for months.
    """

    max_entries: int = 32
    hits: int = 0
    misses: int = 0
    _entries: OrderedDict[tuple[Any, ...], dict[str, torch.Tensor]] = field(default_factory=OrderedDict)

    def get_or_compute(
        self, key: tuple[Any, ...], compute: Callable[[], dict[str, torch.Tensor]]
    ) -> dict[str, torch.Tensor]:
        if key in self._entries:
            self.hits += 1
            self._entries.move_to_end(key)
            return self._entries[key]
        self.misses += 1
        value = compute()
        self._entries[key] = value
        while len(self._entries) > self.max_entries:
            self._entries.popitem(last=False)
        return value


def tensor_digest(t: torch.Tensor) -> str:
    data = t.detach().to("cpu", torch.float32).contiguous().numpy().tobytes()
    return hashlib.sha1(data).hexdigest() + str(tuple(t.shape))
