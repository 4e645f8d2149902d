"""The hot-folder layout (SPEC §3), junk filters, and moves that never overwrite.

No torch here. Files move with ``os.link`` + ``unlink`` (or ``os.rename`` where a
filesystem has no hard links) so that a name in done/ or failed/ that already exists is
never replaced: the newcomer gets ``NAME-2.EXT``. Within one filesystem both are atomic:
a file is always in exactly one place.
"""

from __future__ import annotations

import errno
import json
import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .outputs import write_atomic

__all__ = [
    "IMAGE_SUFFIXES",
    "HotFolder",
    "is_ignored",
    "is_image",
    "move_no_clobber",
    "write_error_file",
]

logger = logging.getLogger(__name__)

IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".tif", ".tiff", ".webp", ".bmp"})
_JUNK_NAMES = frozenset({"thumbs.db", "desktop.ini"})
_JUNK_SUFFIXES = (".part", ".tmp", ".crdownload", ".download")
PRESET_FILE = "preset.json"
MAX_NAME_ATTEMPTS = 10_000


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


def move_no_clobber(src: Path, dest_dir: Path, name: str | None = None,
                    companions: tuple[str, ...] = ()) -> Path:
    """Move ``src`` into ``dest_dir`` as ``name`` (default its own), or ``NAME-2.EXT``,
    ``NAME-3.EXT``... if taken. ``companions``: suffixes (".json", ".error.json") that
    must be free for the chosen stem too, for files that will follow it. Returns the
    new path."""
    dest_dir.mkdir(parents=True, exist_ok=True)
    stem, suffix = _split(name or src.name)
    for n in range(1, MAX_NAME_ATTEMPTS + 1):
        chosen = stem if n == 1 else f"{stem}-{n}"
        target = dest_dir / f"{chosen}{suffix}"
        if target.exists() and _same_file(src, target):
            # An earlier move linked it here and died before unlinking the source: finish
            # that move instead of making a second copy.
            src.unlink()
            return target
        if target.exists() or any((dest_dir / f"{chosen}{c}").exists() for c in companions):
            continue
        try:
            os.link(src, target)
        except FileExistsError:
            continue
        except OSError as exc:
            if exc.errno not in (errno.EPERM, errno.EXDEV, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EMLINK):
                raise
            # No hard links here (FAT, some network shares): check, then rename.
            if target.exists():
                continue
            os.rename(src, target)
            return target
        src.unlink()
        return target
    raise FileExistsError(f"no free name for {name or src.name} in {dest_dir}")


def write_error_file(failed_dir: Path, image_name: str, kind: str, message: str,
                     extra: Mapping[str, Any] | None = None) -> Path:
    """``failed/NAME.error.json`` beside the moved original (``image_name`` is the name it
    got in failed/, so ``photo-2.jpg`` gets ``photo-2.error.json``)."""
    path = failed_dir / f"{Path(image_name).stem}.error.json"
    body = {"kind": kind, "error": message, "file": image_name, **(extra or {})}
    write_atomic(path, (json.dumps(body, indent=2) + "\n").encode())
    return path


def _same_file(a: Path, b: Path) -> bool:
    try:
        return os.path.samefile(a, b)
    except OSError:
        return False


def _split(name: str) -> tuple[str, str]:
    path = Path(name)
    return path.stem, path.suffix
