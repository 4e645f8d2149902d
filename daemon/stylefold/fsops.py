"""File operations that never show half a file and never overwrite one. Stdlib only.

- ``atomic_write`` / ``write_atomic``: a hidden temporary name in the destination folder
  (a leading "." and a ``.tmp``/``.part`` suffix, both ignored by the hot-folder
  watcher), flush, fsync, then rename (SPEC §6.2).
- ``place_no_clobber``: give a file a new name without replacing anything there:
  ``os.link`` then unlink (atomic; fails with FileExistsError if the name was taken
  meanwhile), or a check and a rename on filesystems without hard links (FAT, some SMB).
- ``free_names``: ``NAME``, ``NAME-2``, ``NAME-3``... the one sequence every
  "nothing is overwritten" choice walks (results, originals in done/ and failed/,
  files submitted to the inbox); each fits in 255 bytes (``names.fit``).
- ``move_no_clobber``: move into a folder under the first free such name. Across
  filesystems (``done/`` on a NAS mount) a rename is impossible: the file is copied to
  a hidden temporary name there, fsynced, linked into place without clobbering, and
  only then is the source unlinked. A crash in between leaves the source and, perhaps,
  the complete copy: the caller records the target it was told (``before_move``) so
  that its recovery can tell "moved but not yet unlinked" from "not moved"
  (``hotfolder/claims.py`` does).
"""

from __future__ import annotations

import errno
import logging
import os
import secrets
import shutil
import stat
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import BinaryIO

from .names import fit
from .safeopen import open_regular

__all__ = [
    "MAX_NAME_ATTEMPTS",
    "atomic_write",
    "free_names",
    "fsync_directory",
    "move_no_clobber",
    "place_no_clobber",
    "same_bytes",
    "write_atomic",
]

logger = logging.getLogger(__name__)

MAX_NAME_ATTEMPTS = 10_000
# link() errors that mean "this filesystem has no hard links here", not "name taken".
_NO_LINKS = (errno.EPERM, errno.EXDEV, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EMLINK)


def free_names(stem: str, suffix: str = "") -> Iterator[str]:
    """``stem+suffix``, ``stem-2+suffix``... up to ``MAX_NAME_ATTEMPTS`` names, each cut
    to fit a file name (a 250-byte name's ``-2`` shortens the stem, never drops the
    number or the suffix)."""
    yield fit(stem, suffix)
    for n in range(2, MAX_NAME_ATTEMPTS + 1):
        yield fit(stem, f"-{n}{suffix}")


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
        try:
            os.rename(src, target)
        except OSError as again:
            if again.errno != errno.EXDEV:
                raise
            _copy_across(src, target)
            src.unlink()  # only once the copy is complete and in place
        return
    src.unlink()


def _copy_across(src: Path, target: Path) -> None:
    """Copy ``src`` to ``target`` on another filesystem: it appears there complete
    (temporary name, fsync, no-clobber link) or not at all. Never opens anything that
    could block: a FIFO or a symlink is recreated, not read."""
    info = os.lstat(src)
    if stat.S_ISLNK(info.st_mode):
        os.symlink(os.readlink(src), target)  # FileExistsError if taken
    elif stat.S_ISFIFO(info.st_mode):
        os.mkfifo(target, stat.S_IMODE(info.st_mode))
    elif stat.S_ISREG(info.st_mode):
        with open_regular(src) as source:
            atomic_write(target, lambda out: shutil.copyfileobj(source, out, 1 << 20),
                         overwrite=False, suffix=".part")
        shutil.copystat(src, target, follow_symlinks=False)
    else:
        raise OSError(errno.EXDEV, "cannot move a socket or device file to another filesystem", str(src))
    fsync_directory(target.parent)


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
    for chosen in free_names(path.stem, path.suffix):
        target = dest_dir / chosen
        if target.exists() and _same_file(src, target):
            # An earlier move linked it here and died before unlinking the source: finish
            # that move instead of making a second copy.
            src.unlink()
            return target
        if target.exists() or any((dest_dir / fit(Path(chosen).stem, c)).exists() for c in companions):
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


def same_bytes(a: Path, b: Path) -> bool:
    """Whether two regular files hold the same bytes (False if either is not one)."""
    try:
        with open_regular(a) as x, open_regular(b) as y:
            if os.fstat(x.fileno()).st_size != os.fstat(y.fileno()).st_size:
                return False
            while True:
                chunk = x.read(1 << 20)
                if chunk != y.read(1 << 20):
                    return False
                if not chunk:
                    return True
    except OSError:
        return False


def _same_file(a: Path, b: Path) -> bool:
    try:
        return os.path.samefile(a, b)
    except OSError:
        return False
