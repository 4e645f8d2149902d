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
