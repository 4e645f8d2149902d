"""A job's inputs as tensors: the photo at its working size, the styles at the photo's
scale, and the targets colour preservation asks for. Every check that can refuse the
job before the optimisation (too small, too elongated a style) is made here.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from ..engine import color
from ..engine.layers import min_side
from ..engine.pyramid import resize
from ..failures import FailureKind, JobFailure
from ..media import imageio
from ..presets import Preset
from .spec import JobSpec

__all__ = ["Prepared", "prepare", "to_pil"]

StyleTensors = list[tuple[torch.Tensor, float]]


@dataclass
class Prepared:
    loaded: imageio.LoadedImage
    content: torch.Tensor  # (1, 3, H, W) in [0, 1]: the photo at its working size
    target_content: torch.Tensor  # what the content loss compares with
    target_styles: StyleTensors  # what the style loss compares with, weighted
    finish: Callable[[torch.Tensor], torch.Tensor]  # optimised image -> result pixels


def prepare(spec: JobSpec) -> Prepared:
    preset = spec.preset
    loaded = _load(Path(spec.input.path), spec.caps.max_input_pixels)
    working = imageio.fit_short_side(loaded.image, preset.size)
    needed = min_side(n for n, _ in preset.style_layer_weights() + preset.content_layer_weights())
    if min(working.size) < needed:
        raise JobFailure(f"the photo is {working.size[0]}x{working.size[1]} px; this preset's layers need at least "
                         f"{needed} px on the shorter side", kind=FailureKind.TOO_SMALL)
    content = to_tensor(working)
    style_size = max(needed, round(preset.style_scale * min(working.size)))
    styles = []
    for style in spec.styles:
        image = _load(Path(style.path), spec.caps.max_input_pixels).image
        _check_style_pixels(image, style_size, content)
        styles.append((to_tensor(imageio.resize_short_side(image, style_size)), style.weight))
    target_content, target_styles = _colour_targets(preset, content, styles)

    def finish(image: torch.Tensor) -> torch.Tensor:
        if preset.preserve_color != "luminance":
            return image
        # A preview or a coarse scale is smaller than the photo: its chroma at that size.
        photo = content if image.shape[-2:] == content.shape[-2:] else resize(content, *image.shape[-2:])
        return color.recombine_chroma(image, photo)

    return Prepared(loaded, content, target_content, target_styles, finish)


def _load(path: Path, max_pixels: int) -> imageio.LoadedImage:
    return imageio.load_image(path, max_pixels=max_pixels)


def _check_style_pixels(image: Image.Image, style_size: int, content: torch.Tensor) -> None:
    """A style is resized to the photo's scale keeping its aspect ratio: a 100000x10 px
    file would become hundreds of megapixels. Cap it like an input image."""
    w, h = image.size
    pixels = style_size * style_size * max(w, h) / min(w, h)
    if pixels > max(4 * content.shape[-1] * content.shape[-2], 4_000_000):
        raise JobFailure(f"the style image ({w}x{h}) at this size would be {pixels / 1e6:.0f} megapixels; use a "
                         "less elongated style image or a smaller style_scale", kind=FailureKind.TOO_LARGE)


def _colour_targets(preset: Preset, content: torch.Tensor,
                    styles: StyleTensors) -> tuple[torch.Tensor, StyleTensors]:
    if preset.preserve_color == "luminance":
        y = color.luminance(content)
        return y, [(color.match_luminance(color.luminance(s), y), w) for s, w in styles]
    if preset.preserve_color == "histogram":
        return content, [(color.match_color_statistics(s, content), w) for s, w in styles]
    return content, styles


def to_tensor(image: Image.Image) -> torch.Tensor:
    return torch.from_numpy(imageio.to_float_array(image)).permute(2, 0, 1).unsqueeze(0).contiguous()


def to_pil(image: torch.Tensor) -> Image.Image:
    return imageio.from_float_array(image[0].permute(1, 2, 0).numpy().astype(np.float32))
