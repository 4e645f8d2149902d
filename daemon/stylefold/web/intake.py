"""An upload's checks, in the order that keeps the hot folder clean: the preset first
(400 with ``PresetError``'s sentence), then the size cap (413), then the bytes must
decode as an image of a format the daemon reads (Pillow ``verify``, 400). Only then is
anything written, and only through ``submit_files``: the inbox, under a hidden temp
name, then renamed (a preset JSON text becomes the photo's sidecar, placed first).
"""

from __future__ import annotations

import json
import secrets
import shutil
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from PIL import Image

from ..config import Config
from ..failures import JobFailure
from ..hotfolder.admin import submit_files
from ..hotfolder.layout import HotFolder
from ..hotfolder.service import caps_of
from ..presets import MAX_PRESET_BYTES, Preset, PresetError, PresetLibrary
from ..safeopen import sha256_regular
from .uploads import sanitise_name

__all__ = ["Rejected", "Upload", "accept_upload", "check_preset"]

FORMATS = {"JPEG": ".jpg", "MPO": ".jpg", "PNG": ".png", "TIFF": ".tif", "WEBP": ".webp", "BMP": ".png"}
SUFFIX_OF = {"JPEG": (".jpg", ".jpeg"), "MPO": (".jpg", ".jpeg"), "PNG": (".png",), "TIFF": (".tif", ".tiff"),
             "WEBP": (".webp",), "BMP": (".bmp",)}


class Rejected(ValueError):
    """An upload refused before anything was written: ``status`` and one sentence."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


@dataclass(frozen=True)
class Upload:
    placed: Path
    sha256: str


def check_preset(text: str, library: PresetLibrary, config: Config) -> tuple[str, dict[str, object] | None]:
    """A preset name, or a preset JSON text: (name or "", the JSON data). Rejected (400)
    with the sentence ``stylefold presets validate`` would print."""
    value = text.strip()
    try:
        if value.startswith("{"):
            if len(value.encode()) > MAX_PRESET_BYTES:
                raise PresetError(f"the preset: a preset may be at most {MAX_PRESET_BYTES // 1024} KB")
            try:
                data = json.loads(value)
            except (ValueError, RecursionError) as exc:
                raise PresetError(f"the preset: not valid JSON ({exc})") from None
            if not isinstance(data, dict):
                raise PresetError("the preset: must be a JSON object")
            _usable(library.from_data(data, "the preset"), library, config)
            return "", data
        if library.find(value) is None:
            raise PresetError(library.unknown(value))
        _usable(library.load(value), library, config)
        return value, None
    except JobFailure as exc:  # PresetError, StyleNotFound, a cap (too_large)
        raise Rejected(400, str(exc)) from None


def _usable(preset: Preset, library: PresetLibrary, config: Config) -> None:
    for ref in preset.style_refs():
        library.resolve_style(ref.path)
    caps_of(config).check(preset)


def image_suffix(handle: BinaryIO, filename: str) -> str:
    """The suffix the file gets: its own if it matches what it is, else its format's."""
    handle.seek(0)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(handle) as image:
                fmt = image.format or ""
                image.verify()
    except Exception as exc:  # Pillow raises many kinds for hostile bytes
        raise Rejected(400, f"{filename[:100]} is not an image stylefold reads (JPEG, PNG, TIFF, WebP or BMP): "
                            f"{str(exc)[:200] or type(exc).__name__}") from None
    if fmt not in FORMATS:
        raise Rejected(400, f"{filename[:100]} is a {fmt or 'unknown'} image; stylefold reads JPEG, PNG, TIFF, "
                            "WebP and BMP")
    own = Path(filename).suffix.lower()
    return own if own in SUFFIX_OF[fmt] else SUFFIX_OF[fmt][0]


def accept_upload(hot: HotFolder, config: Config, library: PresetLibrary, handle: BinaryIO, filename: str,
                  preset_text: str, max_bytes: int) -> Upload:
    """Check and place one upload; Rejected when refused (nothing written then)."""
    name, data = check_preset(preset_text, library, config)
    handle.seek(0, 2)
    if handle.tell() > max_bytes:
        raise Rejected(413, f"the upload is larger than the cap of {max_bytes // (1024 * 1024)} MB "
                            "([web] max_upload_mb)")
    final = sanitise_name(filename or "upload", image_suffix(handle, filename or "upload"))
    staging = hot.state / "uploads" / secrets.token_hex(8)
    staging.mkdir(parents=True)
    try:
        staged = staging / final
        handle.seek(0)
        with staged.open("xb") as out:
            shutil.copyfileobj(handle, out, 1 << 20)
        sha = sha256_regular(staged)
        preset: str = name
        if data is not None:
            sidecar = staging / "preset.json"
            sidecar.write_text(json.dumps(data), encoding="utf-8")
            preset = str(sidecar)
        elif name:
            (hot.inbox / name).mkdir(parents=True, exist_ok=True)
        placed = submit_files([staged], hot.root, preset)[0]
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return Upload(placed, sha)
