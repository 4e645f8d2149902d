"""Opening a job's file without ever leaving the folder it must be in.

A path is walked from the expected folder one component at a time with ``openat`` and
``O_NOFOLLOW``: no ``..``, no absolute part, no symbolic link anywhere below the folder
(ComfyUI's ``/view`` escaped through both), and the file must be a regular file (not a
FIFO that would hang the server, not a device). The names come from the journal and the
job's own records, never from the URL; this is the second wall.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

__all__ = ["OpenedFile", "UnsafePath", "open_inside"]

CHUNK = 256 * 1024


class UnsafePath(LookupError):
    """No such file, or one that may not be served (outside, a link, not a file)."""


@dataclass
class OpenedFile:
    fd: int
    size: int
    name: str

    def chunks(self) -> Iterator[bytes]:
        try:
            while chunk := os.read(self.fd, CHUNK):
                yield chunk
        finally:
            self.close()

    def read(self, limit: int) -> bytes:
        parts, left = [], limit
        try:
            while left > 0 and (chunk := os.read(self.fd, min(left, CHUNK))):
                parts.append(chunk)
                left -= len(chunk)
        finally:
            self.close()
        return b"".join(parts)

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


def open_inside(folder: Path, relative: str) -> OpenedFile:
    """Open ``folder/relative`` for reading, refusing anything unsafe (UnsafePath)."""
    parts = relative.split("/")
    if any(p in ("", ".", "..") or "\x00" in p or "\\" in p for p in parts):
        raise UnsafePath(f"not a plain relative path: {relative!r}")
    flags = os.O_RDONLY | os.O_NOFOLLOW | getattr(os, "O_CLOEXEC", 0)
    try:
        current = os.open(folder, os.O_RDONLY | os.O_DIRECTORY | getattr(os, "O_CLOEXEC", 0))
    except OSError as exc:
        raise UnsafePath(f"{folder}: {exc.strerror}") from None
    try:
        for part in parts[:-1]:
            nxt = os.open(part, flags | os.O_DIRECTORY, dir_fd=current)
            os.close(current)
            current = nxt
        fd = os.open(parts[-1], flags | os.O_NONBLOCK, dir_fd=current)
    except OSError as exc:  # ELOOP for a link, ENOTDIR, ENOENT
        raise UnsafePath(f"{relative}: {exc.strerror}") from None
    finally:
        os.close(current)
    info = os.fstat(fd)
    if not stat.S_ISREG(info.st_mode):
        os.close(fd)
        raise UnsafePath(f"{relative}: not a regular file")
    os.set_blocking(fd, True)
    return OpenedFile(fd, info.st_size, parts[-1])
