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
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F

from .carry import carry_optimizer_state
from .features import FeatureExtractor
from .layers import LAYER_NAMES, min_side
from .steps import StepInfo
from .stylize import EngineState, StyleParams, StyleResult, StyleTargetCache, best_from_payload, best_payload, stylize

__all__ = ["PyramidState", "Scale", "Tile", "bytes_per_pixel", "plan_key", "plan_pyramid", "resize",
           "resize_short", "stylize_pyramid"]

# Channels of each VGG19 layer (the same for a conv and its ReLU).
_CHANNELS = {1: 64, 2: 128, 3: 256, 4: 512, 5: 512}
# Activations and their gradients both live during the backward pass, plus the
# optimiser's image-sized state: measured RSS at 512x682 (book, fp32) was within this.
_LIVE_FACTOR = 2.5
MIN_COARSE_SIDE = 256
OVERLAP = 64
# Optimisers whose state carries from scale to scale (carry.py). Measured A/B, the whole
# result's loss at equal steps (tests/benchmarks/bench_carry_compile.py carry --size 64
# --steps 40: 32x48 whole, then 2 tiles): Adam carried ended 20% lower than fresh (11% at
# 96 px, 6 tiles); L-BFGS carried ended 3.8x higher (its curvature pairs do not survive
# the change of scale), so L-BFGS starts each scale afresh.
CARRIED_OPTIMIZERS: tuple[str, ...] = ("adam",)


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
                 overlap: int = OVERLAP, coarse: tuple[int, int] | None = None) -> list[Scale]:
    """Scales from coarse to fine, each twice the previous, the last at (height, width).

    ``coarse`` = (side, fine_steps), coarse to fine for speed (preset ``coarse_to_fine``):
    the coarsest scale is the smallest halving whose shorter side is still at least
    ``side``, it gets ``steps`` and every finer scale ``fine_steps``.
    Otherwise, one scale when the whole image fits ``max_pixels`` (then the result is
    exactly a single-scale run), else the coarsest scale is the largest that fits whole,
    but not below MIN_COARSE_SIDE on the shorter side, and gets ``steps``; each finer
    scale refines and gets half as many (at least a fifth of ``steps``, at least 1).
    Either way, scales above the budget are split into overlapping tiles of at most
    ``max_pixels``.
    """
    floor = min_side(layers)
    if coarse is not None:
        side, fine_steps = coarse
        halvings = 0
        while min(height, width) >> (halvings + 1) >= max(side, floor):
            halvings += 1
        if halvings:
            sizes = [(round(height / 2**k), round(width / 2**k)) for k in range(halvings, -1, -1)]
            return [Scale(h, w, steps if i == 0 else fine_steps, _tiles(h, w, max_pixels, overlap, floor))
                    for i, (h, w) in enumerate(sizes)]
    if height * width <= max_pixels:
        return [Scale(height, width, steps, (Tile(0, 0, height, width),))]
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


@dataclass
class PyramidState:
    """Where a coarse-to-fine run stands: the scale and tile in progress, the previous
    scale's result, this scale's tiles blended so far, and the engine state of the tile
    in progress (None at a tile boundary). Enough to resume, bit for bit."""

    plan_key: list[tuple[int, int, int, int]]  # (height, width, steps, tiles) per scale
    scale: int
    tile: int
    steps_done: int  # steps run before this tile, all scales and tiles together
    previous: torch.Tensor | None
    canvas: torch.Tensor | None
    weight: torch.Tensor | None
    tile_state: EngineState | None
    early_stops: list[dict[str, Any]] = field(default_factory=list)
    carried: dict[str, Any] | None = None  # the previous scale's optimiser state (carry.py)

    @property
    def global_step(self) -> int:
        """The last step run, numbered as in the loss log."""
        return self.steps_done + (self.tile_state.step if self.tile_state is not None else 0)

    def to_payload(self) -> dict[str, Any]:
        tile = self.tile_state
        return {"plan_key": [list(k) for k in self.plan_key], "scale": self.scale, "tile": self.tile,
                "steps_done": self.steps_done, "previous": self.previous, "canvas": self.canvas,
                "weight": self.weight, "early_stops": self.early_stops, "carried": self.carried,
                "tile_state": None if tile is None else {"step": tile.step, "image": tile.image,
                                                         "optimizer": tile.optimizer_state,
                                                         "recent_totals": tile.recent_totals,
                                                         "best": best_payload(tile.best)}}

    @classmethod
    def from_payload(cls, data: dict[str, Any]) -> PyramidState:
        tile = data["tile_state"]
        state = None if tile is None else EngineState(int(tile["step"]), tile["image"], tile["optimizer"],
                                                      [float(x) for x in tile.get("recent_totals", [])],
                                                      best_from_payload(tile.get("best")))
        return cls([(int(h), int(w), int(n), int(t)) for h, w, n, t in data["plan_key"]], int(data["scale"]),
                   int(data["tile"]), int(data["steps_done"]), data["previous"], data["canvas"], data["weight"],
                   state, list(data.get("early_stops", [])), data.get("carried"))


def plan_key(plan: Sequence[Scale]) -> list[tuple[int, int, int, int]]:
    return [(s.height, s.width, s.steps, len(s.tiles)) for s in plan]


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
    resume: PyramidState | None = None,
    on_state: Callable[[PyramidState], None] | None = None,
    state_every: int = 0,
    on_scale: Callable[[int, torch.Tensor], None] | None = None,
    carry_optimizer: bool = True,
) -> StyleResult:
    """Run ``plan`` on ``content`` (at the final size). Step numbers and elapsed time
    continue across scales and tiles, so the loss log reads as one run.

    ``on_state`` gets a ``PyramidState`` every ``state_every`` steps of a tile and at
    every tile's end; ``resume`` continues from one. ``on_scale(index, image)`` gets
    each scale's result (the coarsest is the job's preview). ``carry_optimizer``: a
    scale made in one piece hands its optimiser's state on to the next (carry.py)."""
    key = plan_key(plan)
    if resume is not None and resume.plan_key != key:
        raise ValueError("the checkpoint is of another coarse-to-fine plan")
    run = _Run(extractor, params, plan, key, sum(s.steps * len(s.tiles) for s in plan), on_step, should_stop,
               style_cache, on_state, state_every, carry_optimizer, done=resume.steps_done if resume else 0,
               early_stops=list(resume.early_stops) if resume else [], carried=resume.carried if resume else None)
    image: torch.Tensor | None = resume.previous if resume else None
    for index in range(resume.scale if resume else 0, len(plan)):
        scale = plan[index]
        here = resume if resume is not None and resume.scale == index else None
        scaled_content = resize(content, scale.height, scale.width)
        short = round(style_scale * min(scale.height, scale.width))
        scaled_styles = [(resize_short(s, short), w) for s, w in styles]
        if here is not None and here.canvas is not None and here.weight is not None:
            canvas, weight = here.canvas.clone(), here.weight.clone()
        else:
            canvas, weight = torch.zeros_like(scaled_content), torch.zeros_like(scaled_content[:, :1])
        for number in range(here.tile if here else 0, len(scale.tiles)):
            tile_resume = here.tile_state if here is not None and number == here.tile else None
            stopped = run.tile(index, number, scaled_content, scaled_styles, image, canvas, weight, tile_resume)
            if stopped is not None:
                return stopped
        image = (canvas / weight.clamp_min(1e-8)).clamp(0, 1)
        if on_snapshot is not None:
            on_snapshot(run.done, image)  # one snapshot per scale: the progress sheet shows the pyramid
        if on_scale is not None:
            on_scale(index, image)
    assert image is not None
    last = run.early_stops[-1] if run.early_stops else None
    state = run.last.state if run.last is not None else EngineState(run.done, image, {})
    return StyleResult(image=image, history=run.history, stopped=False, state=state,
                       early_stop=(int(last["step"]), str(last["reason"])) if last else None,
                       pyramid=PyramidState(key, len(plan), 0, run.done, image, None, None, None, run.early_stops))


@dataclass
class _Run:
    """A coarse-to-fine run in progress: its callbacks, and the step count, loss rows,
    early stops and carried optimiser state that go on from tile to tile."""

    extractor: FeatureExtractor
    params: StyleParams
    plan: Sequence[Scale]
    key: list[tuple[int, int, int, int]]
    total_steps: int
    on_step: Callable[[StepInfo], None] | None
    should_stop: Callable[[], bool] | None
    style_cache: StyleTargetCache | None
    on_state: Callable[[PyramidState], None] | None
    state_every: int
    carry_optimizer: bool
    done: int = 0
    elapsed: float = 0.0  # of this run; a resumed run's caller adds the time before it
    history: list[StepInfo] = field(default_factory=list)
    early_stops: list[dict[str, Any]] = field(default_factory=list)
    carried: dict[str, Any] | None = None  # the previous scale's optimiser state
    last: StyleResult | None = None

    def tile(self, index: int, number: int, content: torch.Tensor, styles: list[tuple[torch.Tensor, float]],
             previous: torch.Tensor | None, canvas: torch.Tensor, weight: torch.Tensor,
             tile_resume: EngineState | None) -> StyleResult | None:
        """Optimise tile ``number`` of scale ``index`` and blend it into ``canvas``;
        the interrupted run's result if ``should_stop`` stopped it, else None."""
        scale, params = self.plan[index], self.params
        tile = scale.tiles[number]
        crop = (slice(None), slice(None), slice(tile.top, tile.top + tile.height),
                slice(tile.left, tile.left + tile.width))
        offset, base_elapsed, carried = self.done, self.elapsed, self.carried

        def step(info: StepInfo) -> None:
            info = dataclasses.replace(info, step=info.step + offset, steps=self.total_steps,
                                       elapsed_s=info.elapsed_s + base_elapsed)
            self.history.append(info)
            if self.on_step is not None:
                self.on_step(info)

        def where(tile_state: EngineState | None) -> PyramidState:
            # canvas and weight are filled in place: they hold the tiles so far.
            return PyramidState(self.key, index, number, offset, previous, canvas, weight, tile_state,
                                list(self.early_stops), carried)

        def tile_checkpoint(state: EngineState) -> None:
            if self.on_state is not None:
                self.on_state(where(state))

        start_state = None
        if carried is not None and tile_resume is None and index > 0:
            before = self.plan[index - 1]
            start_state = carry_optimizer_state(carried, params.optimizer, (before.height, before.width),
                                                (scale.height, scale.width),
                                                (tile.top, tile.left, tile.height, tile.width))
        start = None if previous is None else resize(previous, scale.height, scale.width)[crop]
        result = stylize(
            self.extractor, content[crop], styles, dataclasses.replace(params, steps=scale.steps),
            on_step=step, should_stop=self.should_stop, style_cache=self.style_cache, init_image=start,
            resume=tile_resume, on_state=tile_checkpoint if self.on_state is not None else None,
            state_every=self.state_every, init_optimizer_state=start_state,
        )
        self.last, self.done = result, offset + result.state.step
        self.elapsed = self.history[-1].elapsed_s if self.history else self.elapsed
        if result.stopped:
            return StyleResult(image=result.image, history=self.history, stopped=True, state=result.state,
                               pyramid=where(result.state))
        if result.early_stop is not None:
            self.early_stops.append({"scale": index, "tile": number, "step": offset + result.early_stop[0],
                                     "reason": result.early_stop[1]})
        mask = _feather(tile, scale, OVERLAP)
        canvas[crop] += result.image * mask
        weight[crop] += mask
        if number + 1 == len(scale.tiles):
            # Only a scale made in one piece has a whole-image state to hand on.
            carries = self.carry_optimizer and params.optimizer in CARRIED_OPTIMIZERS and len(scale.tiles) == 1
            self.carried = result.state.optimizer_state if carries else None
        if self.on_state is not None:
            self.on_state(PyramidState(self.key, index, number + 1, self.done, previous, canvas, weight, None,
                                       list(self.early_stops), self.carried))
        return None


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


def resize(image: torch.Tensor, height: int, width: int) -> torch.Tensor:
    if image.shape[-2:] == (height, width):
        return image
    return F.interpolate(image, size=(height, width), mode="bilinear", align_corners=False,
                         antialias=True).clamp(0, 1)


def resize_short(image: torch.Tensor, short: int) -> torch.Tensor:
    h, w = image.shape[-2:]
    if min(h, w) == short:
        return image
    scale = short / min(h, w)
    return resize(image, max(1, round(h * scale)), max(1, round(w * scale)))
