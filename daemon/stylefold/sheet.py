"""``stylefold presets sheet IMAGE``: one photo through every preset, side by side.

A preview, so each preset runs at a small working size (``--size``, default 256) and,
if asked, fewer steps; every other key is the preset's own. The first cell is the photo.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from pathlib import Path

from PIL import Image

from . import imageio, render
from .pipeline import JobFailure, Stylist
from .presets import PresetError, PresetLibrary

__all__ = ["preset_sheet"]

logger = logging.getLogger(__name__)


def preset_sheet(stylist: Stylist, library: PresetLibrary, image: Path, *, names: Sequence[str] | None = None,
                 size: int = 256, steps: int | None = None,
                 on_preset: Callable[[str, int], None] | None = None) -> Image.Image:
    loaded = imageio.load_image(image, max_pixels=stylist.limits.max_input_pixels)
    cells: list[tuple[str, Image.Image]] = [("original", imageio.fit_short_side(loaded.image, size))]
    for name in names or library.names():
        overrides: dict[str, object] = {"size": size, "snapshot_every": 0}
        if steps:
            overrides["steps"] = steps
        try:
            preset = library.validate({**library.load(name).effective(), **overrides}, name)
            styles = [(library.resolve_style(r.path), r.weight) for r in preset.style_refs()]
            if on_preset is not None:
                on_preset(name, preset.steps)
            rendered = stylist.render(image, preset, styles, preset_source=name)
        except (PresetError, JobFailure) as exc:
            logger.error("preset %s: %s", name, exc)
            continue
        cells.append((name, rendered.image))
    return render.contact_sheet(cells, columns=min(4, len(cells)), cell=size, title=image.name)
