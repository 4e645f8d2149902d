"""Claiming a file from the inbox, so that exactly one process works on it.

A claim is a folder ``.stylefold/work/<job id>/`` holding an exclusive ``flock`` on its
``lock`` file, a ``job.json`` describing the job, and the original (plus its sidecar),
moved in with ``os.rename``. The rename is atomic: of two daemons racing for one file,
one gets it and the other gets ENOENT. The lock is taken *before* the file moves in, and
the kernel drops it when the process dies (kill -9 included), so a work folder whose
lock can be taken belongs to nobody: it is an interrupted job, which a daemon resumes.
No torch here.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import shutil
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .folders import HotFolder
from .outputs import write_atomic

__all__ = ["Claim", "claim", "interrupted_claims"]

logger = logging.getLogger(__name__)

JOB_FILE = "job.json"
LOCK_FILE = "lock"


@dataclass
class Claim:
    job_id: str
    folder: Path
    meta: dict[str, Any]
    _lock_fd: int | None = field(default=None, repr=False)

    @property
    def image(self) -> Path:
        return self.folder / self.meta["name"]

    @property
    def sidecar(self) -> Path | None:
        name = self.meta.get("sidecar")
        return self.folder / name if name else None

    @property
    def checkpoint(self) -> Path:
        return self.folder / "checkpoint.pt"

    def save_meta(self) -> None:
        write_atomic(self.folder / JOB_FILE, json.dumps(self.meta, indent=2).encode())

    def release(self) -> None:
        """Give up the lock, leaving the folder for a later resume."""
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None

    def finish(self) -> None:
        """The job is over and its originals moved out: remove the folder."""
        shutil.rmtree(self.folder, ignore_errors=True)
        self.release()


def _lock(folder: Path) -> int | None:
    fd = os.open(folder / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return None
    return fd


def claim(hot: HotFolder, image: Path, sidecar: Path | None, meta: dict[str, Any]) -> Claim | None:
    """Move ``image`` (and ``sidecar``) from the inbox into a new locked work folder.
    None if the file is gone (another daemon took it, or the user did)."""
    job_id = f"{time.time_ns():x}-{uuid.uuid4().hex[:8]}"
    folder = hot.work / job_id
    folder.mkdir(parents=True)
    fd = _lock(folder)
    assert fd is not None  # a folder nobody else knows of
    result = Claim(job_id, folder, {**meta, "name": image.name, "sidecar": None, "claimed_at": time.time()}, fd)
    # job.json first: a folder with job.json but no image is a claim that never happened.
    result.save_meta()
    try:
        os.rename(image, folder / image.name)
    except FileNotFoundError:
        result.finish()
        return None
    if sidecar is not None:
        try:
            os.rename(sidecar, folder / sidecar.name)
            result.meta["sidecar"] = sidecar.name
            result.save_meta()
        except FileNotFoundError:
            logger.warning("sidecar %s vanished while claiming %s", sidecar, image)
    return result


def interrupted_claims(hot: HotFolder) -> Iterator[Claim]:
    """Work folders nobody holds: jobs of a process that died or was stopped. Folders
    without their image are claims that never completed and are removed."""
    if not hot.work.is_dir():
        return
    for folder in sorted(p for p in hot.work.iterdir() if p.is_dir()):
        fd = _lock(folder)
        if fd is None:
            continue  # a live process is working on it
        try:
            meta = json.loads((folder / JOB_FILE).read_bytes())
        except (OSError, ValueError):
            meta = None
        found = Claim(folder.name, folder, meta or {}, fd)
        if meta is None or not found.image.is_file():
            _return_strays(hot, folder, meta)
            found.finish()
            continue
        yield found


def _return_strays(hot: HotFolder, folder: Path, meta: dict[str, Any] | None) -> None:
    """Put back any original in a broken claim folder, so nothing is ever lost."""
    source_dir = hot.inbox / Path(meta["source"]).parent if meta and meta.get("source") else hot.inbox
    for path in folder.iterdir():
        if path.name in (JOB_FILE, LOCK_FILE) or path.name.startswith("."):
            continue
        if path.is_file() and not (source_dir / path.name).exists():
            source_dir.mkdir(parents=True, exist_ok=True)
            os.rename(path, source_dir / path.name)
            logger.warning("returned %s from an incomplete claim to %s", path.name, source_dir)
