"""File operations that never show half a file and never overwrite one. Stdlib only.

- ``atomic_write`` / ``write_atomic``: a hidden temporary name in the destination folder
  (a leading "." and a ``.tmp``/``.part`` suffix, both ignored by the hot-folder
  watcher), flush, fsync, then rename (SPEC §6.2).
- ``place_no_clobber``: give a file a new name without replacing anything there:
  ``os.link`` then unlink (atomic; fails with FileExistsError if the name was taken
  meanwhile), or a check and a rename on filesystems without hard links (FAT, some SMB).
- ``free_names``: ``NAME``, ``NAME-2``, ``NAME-3``... the one sequence every
  "nothing is overwritten" choice walks (results, originals in done/ and failed/,
  files submitted to the inbox).
- ``move_no_clobber``: move into a folder under the first free such name.
"""

from __future__ import annotations

import errno
import logging
import os
import secrets
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import BinaryIO

__all__ = [
    "MAX_NAME_ATTEMPTS",
    "atomic_write",
    "free_names",
    "fsync_directory",
    "move_no_clobber",
    "place_no_clobber",
    "write_atomic",
]

logger = logging.getLogger(__name__)

MAX_NAME_ATTEMPTS = 10_000
# link() errors that mean "this filesystem has no hard links here", not "name taken".
_NO_LINKS = (errno.EPERM, errno.EXDEV, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EMLINK)


def free_names(stem: str) -> Iterator[str]:
    """``stem``, ``stem-2``, ``stem-3``... up to ``MAX_NAME_ATTEMPTS`` names."""
    yield stem
    for n in range(2, MAX_NAME_ATTEMPTS + 1):
        yield f"{stem}-{n}"


def atomic_write(path: Path, write: Callable[[BinaryIO], object], *, overwrite: bool = True,
                 suffix: str = ".tmp", sync_directory: bool = False) -> None:
    """Create ``path`` with the bytes ``write(handle)`` produces, atomically. With
    ``overwrite=False`` an existing ``path`` is never replaced: FileExistsError."""
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
            place_no_clobber(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    if sync_directory:
        fsync_directory(path.parent)


def write_atomic(path: Path, data: bytes) -> None:
    """``atomic_write`` of bytes already in memory."""
    atomic_write(path, lambda f: f.write(data))


def place_no_clobber(src: Path, target: Path) -> None:
    """Rename ``src`` to ``target`` unless ``target`` exists (FileExistsError)."""
    try:
        os.link(src, target)
    except FileExistsError:
        raise
    except OSError as exc:
        if exc.errno not in _NO_LINKS:
            raise
        if target.exists():
            raise FileExistsError(target) from None
        os.rename(src, target)
        return
    src.unlink()


def move_no_clobber(src: Path, dest_dir: Path, name: str | None = None,
                    companions: tuple[str, ...] = (),
                    before_move: Callable[[Path], None] | None = None) -> Path:
    """Move ``src`` into ``dest_dir`` as ``name`` (default its own), or ``NAME-2.EXT``,
    ``NAME-3.EXT``... if taken. ``companions``: suffixes (".json", ".error.json") that
    must be free for the chosen stem too, for files that will follow it.
    ``before_move(target)`` runs once the name is chosen and before the file appears
    there (the error file of a failed job is in place first); a FileExistsError from it
    moves on to the next name. Returns the new path."""
    dest_dir.mkdir(parents=True, exist_ok=True)
    path = Path(name or src.name)
    for chosen in free_names(path.stem):
        target = dest_dir / f"{chosen}{path.suffix}"
        if target.exists() and _same_file(src, target):
            # An earlier move linked it here and died before unlinking the source: finish
            # that move instead of making a second copy.
            src.unlink()
            return target
        if target.exists() or any((dest_dir / f"{chosen}{c}").exists() for c in companions):
            continue
        try:
            if before_move is not None:
                before_move(target)
            place_no_clobber(src, target)
        except FileExistsError:
            continue
        return target
    raise FileExistsError(f"no free name for {path.name} in {dest_dir}")


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


def _same_file(a: Path, b: Path) -> bool:
    try:
        return os.path.samefile(a, b)
    except OSError:
        return False
