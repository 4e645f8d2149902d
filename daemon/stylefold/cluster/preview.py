"""A job's preview across the broker (SPEC §4 ``preview``, §5 ``outbox/previews/``).

The worker sends the picture as a PNG (lossless, the photo's EXIF in its ``eXIf``
chunk) under ``job:<id>:preview`` and says so in the job's events; the coordinator
decodes it as hostile input (a PNG, RGB, at most ``max_pixels``, decoded only after
its header passed) and publishes it exactly as a local job would
(``publish_preview``: a fresh JPEG under the result's base name). The bytes that came
over the broker are never written as they are.
"""

from __future__ import annotations

import io
from pathlib import Path

from PIL import Image

from ..job.preview import PreviewImage
from ..media.outputs import publish_preview

__all__ = ["MAX_PREVIEW_PIXELS", "decode_preview", "encode_preview", "publish_remote_preview"]

# A preview's short side is at most 4096 px (SPEC §4) and never above the result's.
MAX_PREVIEW_PIXELS = 4096 * 4096 * 4


def encode_preview(preview: PreviewImage) -> bytes:
    buf = io.BytesIO()
    extra = {"exif": preview.exif} if preview.exif else {}
    preview.image.convert("RGB").save(buf, format="PNG", compress_level=1, **extra)
    return buf.getvalue()


def decode_preview(data: bytes, max_pixels: int = MAX_PREVIEW_PIXELS) -> tuple[Image.Image, bytes | None]:
    """The picture and its EXIF; ValueError for anything but an RGB PNG of at most
    ``max_pixels`` that decodes whole."""
    try:
        with Image.open(io.BytesIO(data), formats=["PNG"]) as opened:
            width, height = opened.size
            if width * height > max_pixels or opened.mode != "RGB":
                raise ValueError(f"a {width}x{height} {opened.mode} picture is no preview")
            opened.load()
            exif = opened.info.get("exif")
            return opened.copy(), exif if isinstance(exif, bytes) else None
    except (OSError, SyntaxError, Image.DecompressionBombError) as exc:  # what Pillow raises for junk
        raise ValueError(f"not a readable PNG ({exc})") from exc


def publish_remote_preview(data: bytes, outbox: Path, logs: Path, base: str) -> Path:
    image, exif = decode_preview(data)
    return publish_preview(image, outbox, logs, base, exif=exif)
