"""A job's preview (SPEC §4 ``preview``, §5 ``outbox/previews/``): a quick result at a
small size, in the photographer's hands in seconds, before the full render.

A job renders it first, at ``preview.size`` for ``preview.steps`` steps, except a
coarse-to-fine job whose coarsest scale is no more work than that preview: its
coarsest scale's result is the preview, which costs nothing extra. Torch here, no I/O:
the picture leaves through ``JobCallbacks.on_preview``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from PIL import Image

from ..engine.features import FeatureExtractor
from ..engine.pyramid import Scale, resize, resize_short
from ..engine.stylize import StyleParams, StyleResult, StyleTargetCache, stylize
from ..presets import PreviewOptions
from .prepare import Prepared

__all__ = ["PreviewImage", "coarse_scale_is_preview", "preview_shape", "render_preview"]


@dataclass(frozen=True)
class PreviewImage:
    """What ``on_preview`` receives: the picture, the result's base name, and how it was made."""

    image: Image.Image
    base: str
    exif: bytes | None
    steps: int
    seconds: float
    coarse_scale: bool  # True: the coarsest scale of a coarse-to-fine job


def preview_shape(height: int, width: int, size: int) -> tuple[int, int]:
    """The working size with its shorter side at ``size`` (never enlarged)."""
    short = min(height, width)
    if size >= short:
        return height, width
    return max(1, round(height * size / short)), max(1, round(width * size / short))


def coarse_scale_is_preview(plan: Sequence[Scale], options: PreviewOptions) -> bool:
    """Whether a coarse-to-fine job's coarsest scale comes out no later than a preview
    of its own would (pixels times steps), so that it can be the preview for free."""
    coarsest, result = plan[0], plan[-1]
    height, width = preview_shape(result.height, result.width, options.size)
    return coarsest.height * coarsest.width * coarsest.steps <= height * width * options.steps


def render_preview(extractor: FeatureExtractor, prepared: Prepared, params: StyleParams, options: PreviewOptions,
                   *, style_scale: float, style_cache: StyleTargetCache | None,
                   should_stop: Callable[[], bool] | None) -> StyleResult:
    """The preview's optimisation: the job's own targets and parameters at a small size
    and for few steps (no snapshots, no checkpoints: it is over in seconds)."""
    height, width = preview_shape(prepared.target_content.shape[-2], prepared.target_content.shape[-1], options.size)
    content = resize(prepared.target_content, height, width)
    short = max(1, round(style_scale * min(height, width)))
    styles = [(resize_short(s, short), w) for s, w in prepared.target_styles]
    run = dataclasses.replace(params, steps=options.steps, snapshot_every=0)
    return stylize(extractor, content, styles, run, style_cache=style_cache, should_stop=should_stop)
