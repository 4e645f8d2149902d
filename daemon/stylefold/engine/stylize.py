"""The optimisation loop of the chapter (Gatys et al. 2015), one forward and one
backward per step.

The chapter recomputes every target and runs a separate forward pass per loss layer on
each step; the maths is the same if all layers are tapped from one pass and the targets
are computed once, which is what this module does. Style targets are also kept across
jobs in a small cache (``StyleTargetCache``) because studios reuse a handful of styles.

No I/O, no printing: progress leaves through ``on_step``/``on_snapshot`` and the caller
stops the loop through ``should_stop``.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
import torch.nn.functional as F

from .early_stop import EarlyStop, converged, push_total
from .features import FeatureExtractor
from .losses import content_loss, gram_loss, gram_matrix, style_loss, tv_loss
from .steps import StepInfo
from .targets import StyleTargetCache, tensor_digest

__all__ = [
    "Best",
    "EarlyStop",
    "Diverged",
    "EngineError",
    "EngineState",
    "StepInfo",
    "StyleParams",
    "StyleResult",
    "StyleTargetCache",
    "best_from_payload",
    "best_payload",
    "converged",
    "push_total",
    "stylize",
]

Precision = Literal["fp32", "bf16", "fp16"]
LayerWeights = tuple[tuple[str, float], ...]

# ImageNet statistics torchvision's VGG19 was trained with (used when normalize=True;
# the chapter feeds raw [0, 1] pixels).
_IMAGENET_MEAN = (0.485, 0.456, 0.406)
_IMAGENET_STD = (0.229, 0.224, 0.225)


class EngineError(Exception):
    """The optimisation cannot go on (diverged, unsupported combination)."""


class Diverged(EngineError):
    """The loss became nan or infinite: the optimisation cannot go on from here.
    ``what``: the fact alone ("the loss became nan at step 85"), without the advice."""

    def __init__(self, what: str) -> None:
        super().__init__(f"{what}: the optimisation diverged; lower lr or the loss weights, or use precision fp32")
        self.what = what


@dataclass(frozen=True)
class StyleParams:
    """Everything the loop needs, already validated and resolved (no ``auto``). No
    defaults: the preset model holds them (its defaults are the chapter's numbers)."""

    style_layers: LayerWeights
    content_layers: LayerWeights
    style_weight: float
    content_weight: float
    tv_weight: float
    steps: int
    lr: float
    optimizer: Literal["adam", "lbfgs"]
    init: Literal["noise", "content", "style"]
    pooling: Literal["avg", "max"]
    normalize: bool
    seed: int
    precision: Precision
    snapshot_every: int
    early_stop: EarlyStop | Literal[False]  # False: run every step (the chapter)


# (step, total loss, image) of the lowest-loss image an L-BFGS run has evaluated so far.
Best = tuple[int, float, torch.Tensor]


@dataclass
class EngineState:
    """Where an optimisation stands: enough to resume it after ``step`` steps.
    ``recent_totals``: the last total losses, which early stopping looks back over;
    ``best``: L-BFGS's lowest-loss image so far, which becomes the result."""

    step: int
    image: torch.Tensor
    optimizer_state: dict[str, Any]
    recent_totals: list[float] = field(default_factory=list)
    best: Best | None = None


@dataclass
class StyleResult:
    image: torch.Tensor  # (1, 3, H, W) float32 on the CPU, clamped to [0, 1]
    history: list[StepInfo]
    stopped: bool  # interrupted by should_stop: resume from ``state``
    state: EngineState
    # Converged before params.steps (early_stop): the last step run, and why.
    early_stop: tuple[int, str] | None = None
    result_step: int | None = None  # L-BFGS: the step whose image is the result (its lowest loss)
    pyramid: Any = None  # a coarse-to-fine run's PyramidState: where it stopped, or its end


def stylize(
    extractor: FeatureExtractor,
    content: torch.Tensor,
    styles: Sequence[tuple[torch.Tensor, float]],
    params: StyleParams,
    *,
    on_step: Callable[[StepInfo], None] | None = None,
    on_snapshot: Callable[[int, torch.Tensor], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
    style_cache: StyleTargetCache | None = None,
    resume: EngineState | None = None,
    on_state: Callable[[EngineState], None] | None = None,
    state_every: int = 0,
    init_image: torch.Tensor | None = None,
    init_optimizer_state: dict[str, Any] | None = None,
) -> StyleResult:
    """Optimise an image whose content matches ``content`` and whose Gram matrices
    match the weighted blend of ``styles``' (weights are normalised to sum 1).

    ``content`` and each style are (1, 3, H, W) tensors in [0, 1]; styles may have
    another size than the content (Gram matrices do not depend on it).
    ``on_state`` receives an ``EngineState`` every ``state_every`` steps (checkpoints);
    ``resume`` continues from one, bit for bit as if never interrupted.
    ``init_image`` replaces ``params.init`` (coarse-to-fine: the previous scale's result),
    and ``init_optimizer_state`` the fresh optimiser (coarse-to-fine: the previous scale's,
    carried over, see carry.py).
    """
    objective, image, optimizer, scaler = _start(extractor, content, styles, params, style_cache, resume,
                                                 init_image, init_optimizer_state)
    history: list[StepInfo] = []
    start = time.perf_counter()
    first_step = resume.step + 1 if resume else 1
    step = first_step - 1
    stopped = False
    early: tuple[int, str] | None = None
    totals = list(resume.recent_totals) if resume else []
    best = resume.best if resume else None
    for step in range(first_step, params.steps + 1):
        if should_stop is not None and should_stop():
            stopped = True
            step -= 1
            break
        # L-BFGS without a line search (one evaluation a step) can overshoot into a spike
        # and climb back: its result is the lowest-loss image it evaluated, never a spike.
        before = image.detach().clamp(0, 1) if params.optimizer == "lbfgs" else None
        s, c, t, total = _step(image, optimizer, objective, params, scaler)
        _check_finite((s, c, t, total), step)
        if before is not None and (best is None or total < best[1]):
            best = (step, total, before)
        info = StepInfo(step, params.steps, s, c, t, total, time.perf_counter() - start)
        history.append(info)
        if on_step is not None:
            on_step(info)
        if on_snapshot is not None and params.snapshot_every and step % params.snapshot_every == 0:
            on_snapshot(step, _final(image))
        if params.early_stop:
            totals = push_total(totals, total, params.early_stop.patience)
            reason = converged(totals, params.early_stop, before, image)
            if reason is not None and step < params.steps:
                early = (step, reason)
                break
        if on_state is not None and state_every and step % state_every == 0 and step < params.steps:
            on_state(EngineState(step=step, image=image.detach().to("cpu", copy=True),
                                 optimizer_state=optimizer.state_dict(), recent_totals=list(totals),
                                 best=_on_cpu(best)))

    result_image = _final(best[2] if best is not None else image)
    state = EngineState(step=step, image=image.detach().to("cpu", copy=True), optimizer_state=optimizer.state_dict(),
                        recent_totals=totals, best=_on_cpu(best))
    return StyleResult(image=result_image, history=history, stopped=stopped, state=state, early_stop=early,
                       result_step=best[0] if best is not None else None)


def best_payload(best: Best | None) -> list[Any] | None:
    """``best`` as checkpoint data (``torch.load(weights_only=True)`` reads it back)."""
    return None if best is None else [best[0], best[1], best[2]]


def best_from_payload(data: Any) -> Best | None:
    if data is None:
        return None
    step, total, image = data
    return int(step), float(total), image


def _on_cpu(best: Best | None) -> Best | None:
    return None if best is None else (best[0], best[1], best[2].to("cpu", copy=True))


def _start(extractor: FeatureExtractor, content: torch.Tensor, styles: Sequence[tuple[torch.Tensor, float]],
           params: StyleParams, style_cache: StyleTargetCache | None, resume: EngineState | None,
           init_image: torch.Tensor | None, init_optimizer_state: dict[str, Any] | None,
           ) -> tuple[_Objective, torch.Tensor, torch.optim.Optimizer, torch.amp.GradScaler | None]:
    """The objective (targets computed once), the image to optimise and its optimiser."""
    if not styles:
        raise EngineError("at least one style image is needed")
    device = extractor.device
    if params.precision == "fp16" and device.type == "cpu":
        raise EngineError("precision fp16 needs a GPU; use bf16 or fp32 on the CPU")
    content = content.to(device, torch.float32).contiguous()
    objective = _objective(extractor, content, styles, params, style_cache)
    if init_image is not None and resume is None:
        image = init_image.to(device, torch.float32).clone()
    else:
        image = _initial_image(content, styles, params, resume)
    image.requires_grad_(True)
    optimizer = _make_optimizer(image, params, resume)
    if resume is None and init_optimizer_state is not None:
        optimizer.load_state_dict(init_optimizer_state)
    scaler = torch.amp.GradScaler(device.type) if params.precision == "fp16" else None
    return objective, image, optimizer, scaler


def _check_finite(losses: Sequence[float], step: int) -> None:
    if not all(map(_finite, losses)):
        raise Diverged(f"the loss became {losses[-1]} at step {step}")


@dataclass
class _Objective:
    """The chapter's weighted loss of an image, from one forward pass through every
    tapped layer; the targets were computed once, before the first step."""

    taps: Callable[[torch.Tensor], tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]]  # features, Grams
    content_targets: dict[str, torch.Tensor]
    style_targets: dict[str, torch.Tensor]
    params: StyleParams
    parts: list[torch.Tensor] = field(default_factory=list)  # weighted losses of the latest evaluation

    def __call__(self, image: torch.Tensor) -> torch.Tensor:
        p = self.params
        feats, grams = self.taps(image)
        zero = image.new_zeros(())
        # Sum the per-layer losses, then weight, in the chapter's order of operations.
        s = sum((w * (gram_loss(grams[n], self.style_targets[n]) if n in grams else
                      style_loss(feats[n], self.style_targets[n])) for n, w in dict(p.style_layers).items()), zero)
        c = sum((w * content_loss(feats[n], self.content_targets[n]) for n, w in dict(p.content_layers).items()),
                zero)
        t = tv_loss(image) if p.tv_weight else zero
        s, c, t = s * p.style_weight, c * p.content_weight, t * p.tv_weight
        total = s + c + t
        self.parts[:] = [s.detach(), c.detach(), t.detach(), total.detach()]
        return total


def _objective(extractor: FeatureExtractor, content: torch.Tensor, styles: Sequence[tuple[torch.Tensor, float]],
               params: StyleParams, style_cache: StyleTargetCache | None) -> _Objective:
    device = extractor.device
    # channels_last makes oneDNN/cuDNN pick their fast NHWC kernels (measured ~15% per
    # step on the CPU); the optimised image itself stays contiguous for the optimisers.
    memory_format = torch.channels_last if device.type in ("cpu", "cuda") else torch.contiguous_format
    content_weights = dict(params.content_layers)
    layers = frozenset(dict(params.style_layers)) | frozenset(content_weights)
    style_convs = frozenset(n for n in dict(params.style_layers) if n.startswith("conv"))

    def taps(image: torch.Tensor, grams: frozenset[str] = style_convs) -> tuple[dict[str, torch.Tensor],
                                                                              dict[str, torch.Tensor]]:
        with _autocast(device, params.precision):
            x = _normalize(image, params.normalize).contiguous(memory_format=memory_format)
            return extractor.with_grams(x, layers, params.pooling, grams)

    def features(image: torch.Tensor) -> dict[str, torch.Tensor]:  # the targets': no Grams made to be dropped
        return taps(image, frozenset())[0]

    with torch.no_grad():
        content_targets = {name: act.float() for name, act in features(content).items() if name in content_weights}
        style_targets = _blended_style_targets(extractor, styles, params, device, style_cache, features)
    return _Objective(taps, content_targets, style_targets, params)


def _step(image: torch.Tensor, optimizer: torch.optim.Optimizer, objective: _Objective, params: StyleParams,
          scaler: torch.amp.GradScaler | None) -> list[float]:
    """One optimisation step: one forward and one backward. Returns the weighted
    losses (style, content, tv, total) of the image before the update."""

    def closure() -> torch.Tensor:
        optimizer.zero_grad(set_to_none=True)
        total = objective(image)
        (scaler.scale(total) if scaler else total).backward()  # type: ignore[no-untyped-call]
        return total

    with torch.no_grad():
        image.clamp_(0, 1)  # the chapter clamps before each step
    if params.optimizer == "lbfgs":
        optimizer.step(closure)  # type: ignore[arg-type]  # LBFGS takes a tensor-returning closure
    else:
        closure()
        if scaler:
            scaler.step(optimizer)
            scaler.update()
        else:
            optimizer.step()
    losses: list[float] = torch.stack(objective.parts).float().tolist()
    return losses


def _blended_style_targets(
    extractor: FeatureExtractor,
    styles: Sequence[tuple[torch.Tensor, float]],
    params: StyleParams,
    device: torch.device,
    cache: StyleTargetCache | None,
    features: Callable[[torch.Tensor], dict[str, torch.Tensor]],
) -> dict[str, torch.Tensor]:
    names = tuple(sorted(dict(params.style_layers)))
    total_weight = sum(w for _, w in styles)
    if total_weight <= 0:
        raise EngineError("style weights must be positive")
    blended: dict[str, torch.Tensor] = {}
    for style, weight in styles:
        def compute(style: torch.Tensor = style) -> dict[str, torch.Tensor]:
            s = style.to(device, torch.float32)
            return {name: gram_matrix(act) for name, act in features(s).items() if name in names}

        key = (tensor_digest(style), names, params.pooling, params.normalize, params.precision,
               extractor.weights, str(device))
        grams = cache.get_or_compute(key, compute) if cache is not None else compute()
        for name in names:
            part = grams[name] * (weight / total_weight) if len(styles) > 1 else grams[name]
            blended[name] = blended[name] + part if name in blended else part
    return blended


def _initial_image(
    content: torch.Tensor,
    styles: Sequence[tuple[torch.Tensor, float]],
    params: StyleParams,
    resume: EngineState | None,
) -> torch.Tensor:
    if resume is not None:
        return resume.image.to(content.device, torch.float32).clone()
    if params.init == "content":
        return content.clone()
    if params.init == "style":
        style = styles[0][0].to(content.device, torch.float32)
        return F.interpolate(style, size=content.shape[-2:], mode="bilinear", align_corners=False).clamp(0, 1)
    # The chapter's torch.randn(content.size()) after seeding; drawn on the CPU so that a
    # seed gives the same start on every device.
    generator = torch.Generator().manual_seed(params.seed)
    return torch.randn(content.shape, generator=generator).to(content.device)


def _make_optimizer(image: torch.Tensor, params: StyleParams, resume: EngineState | None) -> torch.optim.Optimizer:
    optimizer: torch.optim.Optimizer
    if params.optimizer == "lbfgs":
        if params.precision == "fp16":
            raise EngineError("optimizer lbfgs does not support precision fp16; use bf16 or fp32")
        # max_iter=1: one function evaluation per step, so steps mean the same thing
        # for both optimisers (L-BFGS keeps its history across step() calls).
        optimizer = torch.optim.LBFGS([image], lr=params.lr, max_iter=1, history_size=50)
    else:
        optimizer = torch.optim.Adam([image], lr=params.lr)
    if resume is not None:
        optimizer.load_state_dict(resume.optimizer_state)
    return optimizer


def _normalize(image: torch.Tensor, normalize: bool) -> torch.Tensor:
    if not normalize:
        return image
    mean = image.new_tensor(_IMAGENET_MEAN).view(1, 3, 1, 1)
    std = image.new_tensor(_IMAGENET_STD).view(1, 3, 1, 1)
    return (image - mean) / std


@contextlib.contextmanager
def _autocast(device: torch.device, precision: Precision) -> Iterator[None]:
    if precision == "fp32":
        yield
        return
    dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    with torch.autocast(device_type=device.type, dtype=dtype):
        yield


def _final(image: torch.Tensor) -> torch.Tensor:
    return image.detach().clamp(0, 1).to("cpu", torch.float32).contiguous()


def _finite(x: float) -> bool:
    return x == x and abs(x) != float("inf")
