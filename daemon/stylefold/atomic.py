"""Writing a file so that readers see all of it or nothing (SPEC §6.2).

Write to a hidden temporary name in the destination folder (a leading "." and a
``.tmp``/``.part`` suffix, both ignored by the hot-folder watcher), flush, fsync, then
rename. With ``overwrite=False`` the file is published with ``os.link``, which fails
with FileExistsError instead of replacing a file that appeared meanwhile (another
daemon choosing the same name); filesystems without hard links fall back to a check
and a rename. Stdlib only.
"""

from __future__ import annotations

import logging
import os
import secrets
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO

__all__ = ["atomic_write", "fsync_directory"]

logger = logging.getLogger(__name__)


def atomic_write(path: Path, write: Callable[[BinaryIO], object], *, overwrite: bool = True,
                 suffix: str = ".tmp", sync_directory: bool = False) -> None:
    """Create ``path`` with the bytes ``write(handle)`` produces, atomically."""
    # Name prefix capped: a 240-byte file name plus ".", 8 hex and ".tmp" would exceed 255.
    tmp = path.with_name(f".{path.name[:60]}.{secrets.token_hex(4)}{suffix}")
    try:
        # "x": O_EXCL; open() creates with 0o666 & umask, unlike mkstemp's 0o600.
        with open(tmp, "xb") as handle:
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())
        if overwrite:
            os.replace(tmp, path)
        else:
            _publish_exclusive(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    if sync_directory:
        fsync_directory(path.parent)


def _publish_exclusive(tmp: Path, path: Path) -> None:
    try:
        os.link(tmp, path)
    except FileExistsError:
        raise
    except OSError:
        # Filesystems without hard links (FAT, some SMB shares): a check, then rename.
        if path.exists():
            raise FileExistsError(path) from None
        os.replace(tmp, path)
        return
    tmp.unlink()


def fsync_directory(directory: Path) -> None:
    """Make a rename durable. Best effort: the file itself is already complete."""
    try:
        fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    except OSError as exc:  # some filesystems refuse fsync on directories
        logger.warning("Could not sync directory %s: %s", directory, exc)
