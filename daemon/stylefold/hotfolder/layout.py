"""The hot-folder layout (SPEC §3) and the junk filters. Stdlib only."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

__all__ = [
    "IMAGE_SUFFIXES",
    "PRESET_FILE",
    "HotFolder",
    "is_ignored",
    "is_image",
    "unsupported_reason",
]

logger = logging.getLogger(__name__)

IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".tif", ".tiff", ".webp", ".bmp"})
_JUNK_NAMES = frozenset({"thumbs.db", "desktop.ini"})
_JUNK_SUFFIXES = (".part", ".tmp", ".crdownload", ".download")
PRESET_FILE = "preset.json"


def is_ignored(name: str) -> bool:
    """Names SPEC §3 says to leave alone: dotfiles (.DS_Store, ._*, rsync temps), Office
    lock files (~$), Windows thumbnails, and partial downloads."""
    lower = name.lower()
    return (
        name.startswith((".", "~$"))
        or lower in _JUNK_NAMES
        or lower.endswith(_JUNK_SUFFIXES)
    )


def is_image(name: str) -> bool:
    return Path(name).suffix.lower() in IMAGE_SUFFIXES


_RAW_SUFFIXES = frozenset({".cr2", ".cr3", ".crw", ".nef", ".nrw", ".arw", ".srf", ".sr2", ".dng", ".raf", ".orf",
                           ".rw2", ".pef", ".srw", ".x3f", ".3fr", ".iiq", ".erf", ".kdc", ".mrw", ".raw"})
_EXPORT_FIRST = frozenset({".heic", ".heif", ".avif", ".psd", ".psb", ".gif", ".jxl", ".jp2", ".svg", ".ico"})


def unsupported_reason(name: str) -> str:
    """Why a file that is not a supported image cannot be processed, in a sentence that
    fits it: a camera RAW, an image format to export from, or something else."""
    suffix = Path(name).suffix.lower()
    readable = "stylefold reads JPEG, PNG, TIFF, WebP and BMP"
    if suffix in _RAW_SUFFIXES:
        return f"{name} is a camera RAW file; develop and export it as JPEG or TIFF first ({readable})"
    if suffix in _EXPORT_FIRST:
        return f"{name} is a {suffix[1:].upper()} image; export it as JPEG, PNG or TIFF first ({readable})"
    kind = f"a {suffix} file" if suffix else "a file without an extension"
    return f"{name} is not an image stylefold reads ({kind}; {readable})"


@dataclass(frozen=True)
class HotFolder:
    root: Path

    @property
    def inbox(self) -> Path:
        return self.root / "inbox"

    @property
    def styles(self) -> Path:
        return self.root / "styles"

    @property
    def outbox(self) -> Path:
        return self.root / "outbox"

    @property
    def logs(self) -> Path:
        return self.root / "outbox" / "logs"

    @property
    def done(self) -> Path:
        return self.root / "done"

    @property
    def failed(self) -> Path:
        return self.root / "failed"

    @property
    def state(self) -> Path:
        return self.root / ".stylefold"

    @property
    def work(self) -> Path:
        """One folder per claimed job: the original, its sidecar, checkpoints."""
        return self.state / "work"

    @property
    def journal(self) -> Path:
        return self.state / "journal.db"

    def ensure(self) -> None:
        for folder in (self.inbox, self.styles, self.outbox, self.logs, self.done, self.failed, self.work):
            folder.mkdir(parents=True, exist_ok=True)

    def relative(self, path: Path) -> str:
        """``path`` relative to the inbox, for logs and the journal."""
        try:
            return str(path.relative_to(self.inbox))
        except ValueError:
            return str(path)
