"""Small JPEGs for the page: a 24-megapixel TIFF original is no thumbnail, and a
browser cannot show TIFF at all. Decoding is capped like the daemon's own reads."""

from __future__ import annotations

import io
import warnings

from PIL import Image, ImageOps

from ..presets import PresetError, PresetLibrary
from .safefiles import OpenedFile

__all__ = ["style_thumbnail", "thumbnail"]

MAX_SOURCE_BYTES = 512 << 20
MAX_PIXELS = 120_000_000


def _encode(image: Image.Image, max_px: int) -> bytes:
    image.draft("RGB", (max_px, max_px))
    image = ImageOps.exif_transpose(image) or image
    image = image.convert("RGB")
    image.thumbnail((max_px, max_px))
    buf = io.BytesIO()
    image.save(buf, format="JPEG", quality=85)
    return buf.getvalue()


def _decode(data: io.BytesIO | str, max_px: int) -> bytes | None:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(data) as image:
                if image.width * image.height > MAX_PIXELS:
                    return None
                return _encode(image, max_px)
    except Exception:  # a damaged or hostile file has no thumbnail, and that is all
        return None


def thumbnail(opened: OpenedFile, max_px: int) -> bytes | None:
    """A JPEG of at most ``max_px`` on the longer side, or None if it does not decode."""
    if opened.size > MAX_SOURCE_BYTES:
        opened.close()
        return None
    return _decode(io.BytesIO(opened.read(opened.size + 1)), max_px)


def style_thumbnail(library: PresetLibrary, name: str, max_px: int) -> bytes | None:
    """The first style image of preset ``name``, resolved as a job would (inside the
    style folders); re-encoded, so no style file is ever served as it is."""
    try:
        refs = library.load(name).style_refs()
        path = library.resolve_style(refs[0].path) if refs else None
    except (PresetError, OSError):
        return None
    return _decode(str(path), max_px) if path is not None else None
