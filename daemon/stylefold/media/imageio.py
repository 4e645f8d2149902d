"""Image loading and saving for stylefold: Pillow only, no torch.

Loading turns whatever a camera or an editor wrote (CMYK, 16-bit, palette, alpha,
rotated by EXIF, tagged with a wide-gamut ICC profile) into one canonical form: an
8-bit sRGB ``RGB`` image, upright, plus the EXIF to carry over to the result. Saving
writes to a hidden temp name in the destination folder and renames, so nothing
partial ever appears in ``outbox/`` (SPEC §6.2).
"""

from __future__ import annotations

import io
import logging
import os
import struct
import warnings
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
from PIL import Image, ImageCms, ImageOps, UnidentifiedImageError

from ..failures import FailureKind, JobFailure
from ..fsops import atomic_write
from ..safeopen import NotRegularFile, open_regular

__all__ = [
    "ImageError", "ImageTooLarge", "LoadedImage", "fit_short_side",
    "resize_short_side", "from_float_array",
    "load_image", "output_extension", "save_image_atomic", "to_float_array",
]

logger = logging.getLogger(__name__)

_ORIENTATION = 0x0112
_EXIF_IFD = 0x8769
# Tags that describe the *file's* pixel layout, not the photo. A TIFF's getexif() returns
# its whole IFD0, so without this filter strip offsets and sample formats of the input
# would be written into the output's EXIF and describe data that is not there.
_STRUCTURAL_TAGS = frozenset({
    254, 255, 256, 257, 258, 259, 262, 266, 273, 277, 278, 279, 284, 317, 320,
    322, 323, 324, 325, 338, 339, 340, 341, 513, 514, 530, 531, 532, 700, 34675,
    # Not metadata of the photo but other copies of it: Photoshop's layers
    # (ImageSourceData; Photoshop would reopen the unstylised layers), its resource
    # block and IPTC. Megabytes that would also overflow JPEG's 64 KB EXIF segment.
    33723, 34377, 37724,
})
_MAKER_NOTE = 0x927C
_JPEG_EXIF_LIMIT = 65_000  # one APP1 segment
# PixelXDimension/PixelYDimension in the Exif IFD: the original's size, stale after resizing.
_STALE_EXIF_IFD_TAGS = (0xA002, 0xA003)
_SUB_IFD_POINTERS = (_EXIF_IFD, 0x8825)  # the Exif and GPS IFDs
# What a malformed file can make Pillow's decoders raise; all of them mean "unreadable".
_DECODE_ERRORS = (OSError, SyntaxError, ValueError, EOFError, struct.error,
                  IndexError, KeyError, TypeError)
_SAVE_FORMATS = {".jpg": "JPEG", ".jpeg": "JPEG", ".png": "PNG",
                 ".tif": "TIFF", ".tiff": "TIFF", ".webp": "WEBP"}
_FORMAT_EXTENSIONS = {"jpeg": ".jpg", "png": ".png", "tiff": ".tif", "webp": ".webp"}
_SAME_EXTENSIONS = {".jpg": ".jpg", ".jpeg": ".jpg", ".png": ".png", ".tif": ".tif",
                    ".tiff": ".tif", ".webp": ".webp", ".bmp": ".png"}
# ICC colour space signature -> the Pillow mode littlecms expects for it.
_ICC_MODES = {"RGB": "RGB", "CMYK": "CMYK", "GRAY": "L"}


class ImageError(JobFailure):
    """An input image that cannot be used."""

    kind = FailureKind.UNREADABLE_IMAGE


class ImageTooLarge(ImageError):
    """An input whose pixel count is above the configured limit."""

    kind = FailureKind.TOO_LARGE


@dataclass(frozen=True)
class LoadedImage:
    """A decoded input in canonical form, with what is needed to describe its origin."""

    image: Image.Image  # mode "RGB", sRGB, EXIF orientation applied, 8-bit
    exif: bytes | None  # the original's EXIF with Orientation reset to 1
    source_mode: str  # the file's original mode, e.g. "CMYK", "I;16", "RGBA"
    source_size: tuple[int, int]  # (width, height) after orientation
    icc_description: str | None  # description of the embedded profile converted from
    alpha_dropped: bool  # True when transparency was composited over white


# ---------------------------------------------------------------- loading


def load_image(path: Path, *, max_pixels: int = 80_000_000, follow_symlinks: bool = True) -> LoadedImage:
    """Decode `path` fully into an upright 8-bit sRGB RGB image, or raise ImageError.

    The file is opened without blocking and must be a regular file (``Image.open(path)``
    would block forever on a FIFO); ``follow_symlinks=False`` refuses a link too."""
    path = Path(path)
    try:
        handle = open_regular(path, follow_symlinks=follow_symlinks)
    except NotRegularFile as exc:
        raise ImageError(f"{path.name} is {exc.what}, not a regular file.") from exc
    except OSError as exc:
        raise ImageError(f"{path.name} cannot be opened ({exc.strerror or exc}).") from exc
    with handle, warnings.catch_warnings():
        if os.fstat(handle.fileno()).st_size == 0:
            raise ImageError(f"{path.name} is empty (0 bytes).")
        # Pillow only warns between its limit and twice that; make the warning an error
        # here, unless the caller deliberately allows more than Pillow does.
        if max_pixels <= (Image.MAX_IMAGE_PIXELS or max_pixels):
            warnings.simplefilter("error", Image.DecompressionBombWarning)
        else:
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        return _decode(path, handle, max_pixels)


def _decode(path: Path, handle: BinaryIO, max_pixels: int) -> LoadedImage:
    try:
        # Image.open only parses the header, so the size check runs before any decoding.
        # Given a file object, Pillow reads from it and leaves closing it to us.
        with Image.open(handle) as opened:
            _check_pixels(path, opened.size, max_pixels)
            # load() decodes frame 0 (the first frame of a GIF, WebP or TIFF) and raises
            # on truncation, because ImageFile.LOAD_TRUNCATED_IMAGES is left False.
            opened.load()
            return _canonical(path, opened)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise ImageTooLarge(
            f"{path.name} is larger than the limit of {max_pixels:,} pixels ({exc})"
        ) from exc
    except UnidentifiedImageError as exc:
        raise ImageError(f"{path.name} is not an image format that can be read.") from exc
    except _DECODE_ERRORS as exc:
        raise ImageError(f"{path.name} could not be read or decoded: {exc}.") from exc


def _check_pixels(path: Path, size: tuple[int, int], max_pixels: int) -> None:
    pixels = size[0] * size[1]
    if pixels > max_pixels:
        raise ImageTooLarge(
            f"{path.name} has {pixels:,} pixels ({size[0]}x{size[1]}), "
            f"more than the limit of {max_pixels:,}."
        )


def _canonical(path: Path, opened: Image.Image) -> LoadedImage:
    upright = _upright(path, opened)  # before _carried_exif, which resets the orientation
    exif = _carried_exif(path, opened)
    image, alpha_dropped = _flatten(_to_8bit(upright, _declared_bits(opened)))
    image, description = _to_srgb(path, image, opened.info.get("icc_profile"))
    rgb = image.convert("RGB") if image.mode != "RGB" else image
    return LoadedImage(image=rgb, exif=exif, source_mode=opened.mode, source_size=rgb.size,
                       icc_description=description, alpha_dropped=alpha_dropped)


def _carried_exif(path: Path, opened: Image.Image) -> bytes | None:
    """The EXIF to write into the result: orientation reset, file-layout tags removed."""
    try:
        exif = opened.getexif()
        for tag in _STRUCTURAL_TAGS & set(exif):
            del exif[tag]
        if len(exif) == 0:
            return None
        exif[_ORIENTATION] = 1  # the pixels are made upright on load
        exif_ifd = exif.get_ifd(_EXIF_IFD)
        for tag in _STALE_EXIF_IFD_TAGS:
            exif_ifd.pop(tag, None)
        data = exif.tobytes()
        if len(data) > _JPEG_EXIF_LIMIT and _MAKER_NOTE in exif_ifd:
            # A large maker note is the usual reason EXIF cannot fit a JPEG; camera, lens
            # and date live elsewhere.
            del exif_ifd[_MAKER_NOTE]
            data = exif.tobytes()
        return data
    except _DECODE_ERRORS as exc:
        # Broken EXIF is common (editors, phones) and does not make the photo unusable.
        logger.warning("Ignoring unreadable EXIF in %s: %s", path.name, exc)
        return None


def _upright(path: Path, opened: Image.Image) -> Image.Image:
    try:
        return ImageOps.exif_transpose(opened)
    except _DECODE_ERRORS as exc:
        logger.warning("Ignoring EXIF orientation of %s: %s", path.name, exc)
        return opened.copy()


def _declared_bits(opened: Image.Image) -> int | None:
    """Bits per sample as the file states it (TIFF only; Pillow keeps it nowhere else)."""
    bits = getattr(opened, "tag_v2", {}).get(258)
    bits = bits[0] if isinstance(bits, tuple) and bits else bits
    return int(bits) if isinstance(bits, int) and bits > 0 else None


def _to_8bit(image: Image.Image, declared_bits: int | None) -> Image.Image:
    """High-bit-depth greyscale to 8-bit "L", scaled by its bit depth, never clipped."""
    if image.mode.startswith("I;16"):
        # int32 holds every 16-bit variant (big-endian "I;16B", signed "I;16S").
        return _grey_from_array(np.asarray(image).astype(np.int32).clip(0, None) >> 8)
    if image.mode == "I":
        values = np.asarray(image).astype(np.int32).clip(0, None)
        # Mode "I" holds 16-bit PGM/PNG data as often as true 32-bit TIFF data; without
        # a declared depth, anything that fits in 16 bits is taken as 16-bit.
        bits = declared_bits or (16 if values.max(initial=0) <= 0xFFFF else 32)
        return _grey_from_array(values >> max(bits - 8, 0))
    if image.mode == "F":
        values = np.nan_to_num(np.asarray(image, dtype=np.float32))
        # Float images are normalised to [0, 1] by convention; otherwise Pillow's 0..255.
        scale = np.float32(255.0 if values.max(initial=0.0) <= 1.0 else 1.0)
        return _grey_from_array(np.rint(values * scale))
    return image


def _grey_from_array(values: np.ndarray) -> Image.Image:
    return Image.fromarray(np.clip(values, 0, 255).astype(np.uint8))


def _flatten(image: Image.Image) -> tuple[Image.Image, bool]:
    """Composite any transparency over white; return the image and whether it had any."""
    if image.mode == "P" and not image.has_transparency_data:
        return image.convert("RGB"), False
    if image.mode in ("1", "YCbCr", "LAB", "HSV", "RGBX"):
        return image.convert("RGB" if image.mode != "1" else "L"), False
    if not image.has_transparency_data:
        return image, False
    rgba = image.convert("RGBA")
    alpha = rgba.getchannel("A")
    if alpha.getextrema()[0] == 255:
        return rgba.convert("RGB"), False
    # Exports with transparency are nearly always product shots meant for white.
    flat = Image.new("RGB", rgba.size, (255, 255, 255))
    flat.paste(rgba, mask=alpha)
    return flat, True


def _to_srgb(path: Path, image: Image.Image,
             icc: bytes | None) -> tuple[Image.Image, str | None]:
    """Convert from the embedded ICC profile to sRGB; CMYK without one naively."""
    profile = _embedded_profile(path, icc)
    if profile is not None:
        space = profile.profile.xcolor_space.strip()
        if _ICC_MODES.get(space) == image.mode:
            converted = _apply_profile(path, image, profile)
            if converted is not None:
                return converted, ImageCms.getProfileDescription(profile).strip() or None
        else:
            logger.warning("Ignoring the %s ICC profile of %s, a %s image",
                           space, path.name, image.mode)
    if image.mode == "CMYK":
        logger.warning("%s is CMYK without a usable ICC profile; converting naively, "
                       "colours may be off", path.name)
    return image, None


def _embedded_profile(path: Path, icc: bytes | None) -> ImageCms.ImageCmsProfile | None:
    if not icc:
        return None
    try:
        return ImageCms.ImageCmsProfile(io.BytesIO(icc))
    except (ImageCms.PyCMSError, OSError, ValueError) as exc:
        logger.warning("Ignoring the unreadable ICC profile of %s: %s", path.name, exc)
        return None


def _apply_profile(path: Path, image: Image.Image,
                   profile: ImageCms.ImageCmsProfile) -> Image.Image | None:
    try:
        return ImageCms.profileToProfile(
            image, profile, _srgb_profile(),
            renderingIntent=ImageCms.Intent.PERCEPTUAL, outputMode="RGB",
        )
    except (ImageCms.PyCMSError, OSError, ValueError) as exc:
        logger.warning("Could not convert %s from its ICC profile: %s", path.name, exc)
        return None


@lru_cache(maxsize=1)
def _srgb_profile() -> ImageCms.ImageCmsProfile:
    return ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB"))


# ---------------------------------------------------------------- arrays and sizes


def fit_short_side(image: Image.Image, size: int) -> Image.Image:
    """torchvision's ``Resize(size)`` on a PIL image, except that it never enlarges."""
    if size < 1:
        raise ValueError(f"size must be at least 1, got {size}")
    if min(image.size) <= size:
        return image.copy()
    return resize_short_side(image, size)


def resize_short_side(image: Image.Image, size: int) -> Image.Image:
    """torchvision's ``Resize(size)`` on a PIL image: the shorter side becomes ``size``.

    Unlike `fit_short_side` this enlarges too; style images use it, as the chapter
    resizes the style image to the content's size whatever its own.
    """
    if size < 1:
        raise ValueError(f"size must be at least 1, got {size}")
    width, height = image.size
    short, long = min(width, height), max(width, height)
    if short == size:
        return image.copy()
    # Same arithmetic as torchvision's _compute_resized_output_size, so the chapter's
    # numbers (and pixels) are reproduced exactly.
    new_long = int(size * long / short)
    new_size = (size, new_long) if width <= height else (new_long, size)
    return image.resize(new_size, Image.Resampling.BILINEAR)


def to_float_array(image: Image.Image) -> np.ndarray:
    """An RGB image as float32 HxWx3 in [0, 1] (uint8 / 255)."""
    if image.mode != "RGB":
        raise ValueError(f"expected an RGB image, got mode {image.mode!r}")
    return np.asarray(image, dtype=np.float32) / np.float32(255.0)


def from_float_array(array: np.ndarray) -> Image.Image:
    """A float HxWx3 array in [0, 1] as an 8-bit RGB image (clamped, rounded)."""
    if array.ndim != 3 or array.shape[2] != 3:
        raise ValueError(f"expected an HxWx3 array, got shape {array.shape}")
    clamped = np.clip(np.nan_to_num(np.asarray(array, dtype=np.float32)), 0.0, 1.0)
    return Image.fromarray(np.rint(clamped * 255.0).astype(np.uint8))


# ---------------------------------------------------------------- saving


def output_extension(source_suffix: str, fmt: str) -> str:
    """The result's extension for a preset's ``output.format`` (SPEC §4)."""
    if fmt != "same":
        if fmt not in _FORMAT_EXTENSIONS:
            raise ValueError(f"unknown output format {fmt!r}")
        return _FORMAT_EXTENSIONS[fmt]
    suffix = "." + source_suffix.lower().lstrip(".")
    if suffix not in _SAME_EXTENSIONS:
        raise ValueError(f"no output format for input suffix {source_suffix!r}")
    # BMP cannot hold EXIF or an ICC profile; PNG is its lossless equivalent.
    return _SAME_EXTENSIONS[suffix]


def save_image_atomic(image: Image.Image, path: Path, *, quality: int = 95,
                      exif: bytes | None = None, overwrite: bool = True) -> None:
    """Write `image` to `path` via a hidden temp file, fsync and rename (SPEC §6.2).

    With ``overwrite=False`` the file is published with ``os.link``, which fails with
    FileExistsError instead of replacing a file that appeared meanwhile (another
    daemon choosing the same output name).
    """
    path = Path(path)
    fmt = _SAVE_FORMATS.get(path.suffix.lower())
    if fmt is None:
        raise ValueError(f"cannot save {path.name}: unsupported suffix {path.suffix!r}")
    if not 1 <= quality <= 100:
        raise ValueError(f"quality must be within 1..100, got {quality}")
    options = _save_options(fmt, quality, exif)
    if image.mode != "RGB":
        image = image.convert("RGB")  # the embedded profile is an RGB one
    atomic_write(path, lambda handle: image.save(handle, format=fmt, **options), overwrite=overwrite,
                 sync_directory=True)


def _save_options(fmt: str, quality: int, exif: bytes | None) -> dict[str, Any]:
    options: dict[str, Any] = {"icc_profile": _srgb_profile().tobytes()}
    if exif and fmt in ("JPEG", "WEBP") and len(exif) > _JPEG_EXIF_LIMIT:
        logger.warning("EXIF of %d bytes does not fit a %s file; the result goes without it", len(exif), fmt)
        exif = None
    if exif:
        options["exif"] = exif
    if fmt == "JPEG":
        options["quality"] = quality
        # Full-resolution chroma at high quality: stylised edges are colour edges.
        options["subsampling"] = 0 if quality >= 90 else 2
    elif fmt == "WEBP":
        options["quality"] = quality
    elif fmt == "TIFF":
        # Pillow's compressed (libtiff) TIFF writer cannot write the Exif/GPS sub-IFDs;
        # keeping the capture date and location matters more than the file size.
        options["compression"] = None if _has_sub_ifds(exif) else "tiff_deflate"
    return options


def _has_sub_ifds(exif: bytes | None) -> bool:
    if not exif:
        return False
    parsed = Image.Exif()
    parsed.load(exif)
    return any(tag in parsed for tag in _SUB_IFD_POINTERS)
