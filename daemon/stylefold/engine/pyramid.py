"""Coarse-to-fine optimisation for results larger than one optimisation can hold.

Activation memory grows with the pixel count, so a 2048-px result of a 24 MP photo
does not fit one optimisation on most machines. We optimise a pyramid instead: the
coarsest scale from the preset's ``init``, each finer scale starting from the previous
result upsampled (the scheme of Gatys et al. 2017, "Controlling Perceptual Factors",
§5), and a scale whose pixels exceed the budget is optimised in overlapping tiles that
are blended back with linear feathering. Style targets stay global (the whole style
image's Gram matrices at that scale), so every tile aims at the same style.

Pure planning functions plus a driver around ``stylize``; no I/O.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .features import FeatureExtractor
from .layers import LAYER_NAMES, min_side
from .steps import StepInfo
from .stylize import StyleParams, StyleResult, StyleTargetCache, stylize

__all__ = ["Scale", "Tile", "bytes_per_pixel", "plan_pyramid", "stylize_pyramid"]

# Channels of each VGG19 layer (the same for a conv and its ReLU).
_CHANNELS = {1: 64, 2: 128, 3: 256, 4: 512, 5: 512}
# Activations and their gradients both live during the backward pass, plus the
# optimiser's image-sized state: measured RSS at 512x682 (book, fp32) was within this.
_LIVE_FACTOR = 2.5
MIN_COARSE_SIDE = 256
OVERLAP = 64


@dataclass(frozen=True)
class Tile:
    top: int
    left: int
    height: int
    width: int


@dataclass(frozen=True)
class Scale:
    height: int
    width: int
    steps: int
    tiles: tuple[Tile, ...]  # one tile covering everything when it fits the budget


def bytes_per_pixel(layers: Sequence[str], precision: str) -> float:
    """Activation bytes per input pixel for a forward+backward up to the deepest layer."""
    deepest = max(LAYER_NAMES.index(n) for n in layers)
    floats, level = 3.0, 0
    for name in LAYER_NAMES[: deepest + 1]:
        if name.startswith("pool"):
            level += 1
            floats += _CHANNELS[level] / 4**level
        else:  # convX_Y or reluX_Y: block X
            floats += _CHANNELS[int(name[4])] / 4**level
    element = 4 if precision == "fp32" else 6  # bf16/fp16 activations plus fp32 Gram copies
    return floats * element * _LIVE_FACTOR


def plan_pyramid(height: int, width: int, steps: int, max_pixels: int, *, layers: Sequence[str],
                 overlap: int = OVERLAP) -> list[Scale]:
    """Scales from coarse to fine, each twice the previous, the last at (height, width).

    One scale when the whole image fits ``max_pixels`` (then the result is exactly a
    single-scale run). Otherwise the coarsest scale is the largest that fits whole, but
    not below MIN_COARSE_SIDE on the shorter side, and gets ``steps``; each finer scale
    refines and gets half as many (at least a fifth of ``steps``, at least 1). Scales
    above the budget are split into overlapping tiles of at most ``max_pixels``.
    """
    if height * width <= max_pixels:
        return [Scale(height, width, steps, (Tile(0, 0, height, width),))]
    floor = min_side(layers)
    factors = [1.0]
    while round(height * factors[-1]) * round(width * factors[-1]) > max_pixels:
        f = factors[-1] / 2
        if min(round(height * f), round(width * f)) < max(MIN_COARSE_SIDE, floor):
            break  # the coarsest scale is tiled too
        factors.append(f)
    factors.reverse()
    scales = []
    for i, f in enumerate(factors):
        h, w = round(height * f), round(width * f)
        n_steps = steps if i == 0 else max(1, steps // 5, steps >> i)
        scales.append(Scale(h, w, n_steps, _tiles(h, w, max_pixels, overlap, floor)))
    return scales


def _tiles(height: int, width: int, max_pixels: int, overlap: int, floor: int) -> tuple[Tile, ...]:
    if height * width <= max_pixels:
        return (Tile(0, 0, height, width),)
    side = max(floor + overlap, int(math.sqrt(max_pixels)))
    overlap = min(overlap, side // 4)
    rows = _spans(height, side, overlap)
    cols = _spans(width, side, overlap)
    return tuple(Tile(top, left, h, w) for top, h in rows for left, w in cols)


def _spans(length: int, side: int, overlap: int) -> list[tuple[int, int]]:
    """Start and length of overlapping spans covering ``length``."""
    if length <= side:
        return [(0, length)]
    count = math.ceil((length - overlap) / (side - overlap))
    step = (length - side) / (count - 1)
    return [(round(i * step), side) for i in range(count)]


def stylize_pyramid(
    extractor: FeatureExtractor,
    content: torch.Tensor,
    styles: Sequence[tuple[torch.Tensor, float]],
    params: StyleParams,
    plan: Sequence[Scale],
    *,
    style_scale: float = 1.0,
    on_step: Callable[[StepInfo], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
    style_cache: StyleTargetCache | None = None,
    on_snapshot: Callable[[int, torch.Tensor], None] | None = None,
) -> StyleResult:
    """Run ``plan`` on ``content`` (at the final size). Step numbers and elapsed time
    continue across scales and tiles, so the loss log reads as one run."""
    total_steps = sum(s.steps * len(s.tiles) for s in plan)
    done = 0
    elapsed = 0.0
    history: list[StepInfo] = []
    image: torch.Tensor | None = None
    for scale in plan:
        scaled_content = _resize(content, scale.height, scale.width)
        short = round(style_scale * min(scale.height, scale.width))
        scaled_styles = [(_resize_short(s, short), w) for s, w in styles]
        start = None if image is None else _resize(image, scale.height, scale.width)
        canvas = torch.zeros_like(scaled_content)
        weight = torch.zeros_like(scaled_content[:, :1])
        for tile in scale.tiles:
            crop = (slice(None), slice(None), slice(tile.top, tile.top + tile.height),
                    slice(tile.left, tile.left + tile.width))
            offset, base_elapsed = done, elapsed

            def step(info: StepInfo, offset: int = offset, base: float = base_elapsed) -> None:
                info = dataclasses.replace(info, step=info.step + offset, steps=total_steps,
                                           elapsed_s=info.elapsed_s + base)
                history.append(info)
                if on_step is not None:
                    on_step(info)

            result = stylize(
                extractor, scaled_content[crop], scaled_styles, dataclasses.replace(params, steps=scale.steps),
                on_step=step, should_stop=should_stop, style_cache=style_cache,
                init_image=None if start is None else start[crop],
            )
            done += len(result.history)
            elapsed = history[-1].elapsed_s if history else elapsed
            mask = _feather(tile, scale, OVERLAP)
            canvas[crop] += result.image * mask
            weight[crop] += mask
            if result.stopped:
                return StyleResult(image=(canvas / weight.clamp_min(1e-8)).clamp(0, 1), history=history,
                                   stopped=True, state=result.state)
        image = (canvas / weight.clamp_min(1e-8)).clamp(0, 1)
        if on_snapshot is not None:
            on_snapshot(done, image)  # one snapshot per scale: the progress sheet shows the pyramid
    assert image is not None
    return StyleResult(image=image, history=history, stopped=False, state=result.state)


def _feather(tile: Tile, scale: Scale, overlap: int) -> torch.Tensor:
    """Weights that rise linearly from a tile's inner edges, 1 on image borders."""
    ys = _ramp(tile.height, tile.top > 0, tile.top + tile.height < scale.height, overlap)
    xs = _ramp(tile.width, tile.left > 0, tile.left + tile.width < scale.width, overlap)
    return (ys[:, None] * xs[None, :]).view(1, 1, tile.height, tile.width)


def _ramp(length: int, start_inner: bool, end_inner: bool, overlap: int) -> torch.Tensor:
    ramp = torch.ones(length)
    n = min(overlap, length // 4)
    rising = torch.linspace(1.0 / (n + 1), 1.0, n) if n else torch.ones(0)
    if start_inner and n:
        ramp[:n] = rising
    if end_inner and n:
        ramp[length - n:] = torch.minimum(ramp[length - n:], rising.flip(0))
    return ramp


def _resize(image: torch.Tensor, height: int, width: int) -> torch.Tensor:
    if image.shape[-2:] == (height, width):
        return image
    return F.interpolate(image, size=(height, width), mode="bilinear", align_corners=False,
                         antialias=True).clamp(0, 1)


def _resize_short(image: torch.Tensor, short: int) -> torch.Tensor:
    h, w = image.shape[-2:]
    if min(h, w) == short:
        return image
    scale = short / min(h, w)
    return _resize(image, max(1, round(h * scale)), max(1, round(w * scale)))
