"""Opening files that anyone who can write to the hot folder may have put there. Stdlib only.

A plain ``open(path)`` follows a symbolic link (to any file the daemon can read) and
blocks forever on a FIFO nobody writes to, which stalls the whole loop. Here a file is
opened with ``O_NOFOLLOW | O_NONBLOCK`` (a FIFO opens at once, a link is refused by the
kernel) and ``fstat`` must say "regular file" before a byte is read. Regular files
ignore ``O_NONBLOCK``, so reading the descriptor afterwards is ordinary blocking I/O.
"""

from __future__ import annotations

import errno
import hashlib
import os
import stat
from io import BufferedReader
from pathlib import Path

__all__ = ["NotRegularFile", "describe_mode", "lstat_kind", "open_regular", "read_regular", "sha256_regular"]

_FLAGS = os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC


class NotRegularFile(OSError):
    """The path is a FIFO, a socket, a device, a directory or a symbolic link."""

    def __init__(self, path: Path, what: str) -> None:
        super().__init__(errno.EINVAL, f"{what}, not a regular file", str(path))
        self.what = what


def describe_mode(mode: int) -> str:
    """What kind of file ``mode`` is, in words for an error sentence."""
    if stat.S_ISLNK(mode):
        return "a symbolic link"
    if stat.S_ISFIFO(mode):
        return "a FIFO (named pipe)"
    if stat.S_ISSOCK(mode):
        return "a socket"
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return "a device file"
    if stat.S_ISDIR(mode):
        return "a directory"
    return "a regular file" if stat.S_ISREG(mode) else "a special file"


def lstat_kind(path: Path) -> str | None:
    """None for a regular file (not followed), else what it is; FileNotFoundError if gone."""
    mode = os.lstat(path).st_mode
    return None if stat.S_ISREG(mode) else describe_mode(mode)


def open_regular(path: Path, *, follow_symlinks: bool = False) -> BufferedReader:
    """``path`` opened for reading, never blocking on the open: NotRegularFile unless it
    is a regular file (with ``follow_symlinks=False``, the default, a link is refused
    even when it leads to one)."""
    flags = _FLAGS if follow_symlinks else _FLAGS | os.O_NOFOLLOW
    try:
        fd = os.open(path, flags)
    except OSError as exc:
        if exc.errno == errno.ELOOP and not follow_symlinks:
            raise NotRegularFile(Path(path), "a symbolic link") from None
        if exc.errno == errno.ENXIO:  # a unix socket refuses open() with ENXIO
            raise NotRegularFile(Path(path), "a socket") from None
        raise
    try:
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):
            raise NotRegularFile(Path(path), describe_mode(mode))
        os.set_blocking(fd, True)
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


def read_regular(path: Path, limit: int, *, follow_symlinks: bool = False) -> bytes:
    """Up to ``limit`` bytes of the regular file ``path`` (``limit + 1`` are read, so a
    caller can tell a file over its cap)."""
    with open_regular(path, follow_symlinks=follow_symlinks) as handle:
        return handle.read(limit + 1)


def sha256_regular(path: Path, *, follow_symlinks: bool = False) -> str:
    with open_regular(path, follow_symlinks=follow_symlinks) as handle:
        return hashlib.file_digest(handle, "sha256").hexdigest()
