"""VGG19 layer names, shared by the preset schema and the engine without importing torch.

Names follow Simonyan & Zisserman's configuration E: five blocks of 2, 2, 4, 4, 4
convolutions, each followed by its ReLU, and a pooling layer closing each block. The
order is torchvision's ``vgg19().features`` order, index for index.
"""

from __future__ import annotations

from collections.abc import Iterable

__all__ = ["LAYER_NAMES", "TAPPABLE_LAYERS", "min_side"]

_BLOCKS: tuple[int, ...] = (2, 2, 4, 4, 4)


def _layer_names() -> tuple[str, ...]:
    names: list[str] = []
    for block, convs in enumerate(_BLOCKS, start=1):
        for conv in range(1, convs + 1):
            names += [f"conv{block}_{conv}", f"relu{block}_{conv}"]
        names.append(f"pool{block}")
    return tuple(names)


LAYER_NAMES: tuple[str, ...] = _layer_names()
TAPPABLE_LAYERS: tuple[str, ...] = tuple(n for n in LAYER_NAMES if not n.startswith("pool"))


def min_side(layers: Iterable[str]) -> int:
    """Smallest image side for which every pooling before the deepest of ``layers``
    still has a 2x2 window (each pooling halves the side; below 1 px torch fails)."""
    deepest = max((LAYER_NAMES.index(name) for name in layers), default=0)
    pools = sum(1 for name in LAYER_NAMES[:deepest] if name.startswith("pool"))
    return int(2**pools)
