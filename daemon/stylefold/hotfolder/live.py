"""Live data of running jobs, for the status page of any process on the root.

The worker writes, per running job, ``.stylefold/live/<job id>/``:

- ``losses.csv``: ``step,total_loss,style_loss,content_loss,tv_loss`` rows, appended at
  most every ``EVERY_S`` seconds, thinned to about ``MAX_ROWS`` rows a job (a curve,
  not the log: the full log is ``outbox/logs/NAME-STYLE.losses.csv``);
- ``current.jpg``: the image being optimised, at most ``PREVIEW_PX`` on its longer side,
  from the checkpoints the engine already copies to the CPU (so it costs one small JPEG
  encode, at most every ``EVERY_S`` seconds);
- ``daemons/<host>-<pid>.json`` (one per serving process): its device, weights, version.

A job's folder goes when its last step is reached, and ``sweep`` removes folders of jobs
whose claim folder is gone (failed or killed mid-run). Writes are atomic (temp + rename)
or appends of whole lines; readers skip a torn last line. Torch and PIL are imported
only inside ``LiveFeed.image``, so readers (``stylefold web``) stay light.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import socket
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..fsops import write_atomic
from .layout import HotFolder

__all__ = ["EVERY_S", "LiveFeed", "announce_daemon", "daemons", "live_dir", "read_losses", "sweep"]

logger = logging.getLogger(__name__)

EVERY_S = 2.5
MAX_ROWS = 1000
PREVIEW_PX = 512
IMAGE_FILE = "current.jpg"
LOSSES_FILE = "losses.csv"
_ID = re.compile(r"^[0-9a-f]{1,32}-[0-9a-f]{1,32}$")


def live_dir(hot: HotFolder) -> Path:
    return hot.state / "live"


def job_dir(hot: HotFolder, job_id: str) -> Path | None:
    """The live folder of a job id, or None for anything that is not a claim's id."""
    return live_dir(hot) / job_id if _ID.match(job_id) else None


@dataclass
class LiveFeed:
    """Fed by the worker's step and checkpoint callbacks; never raises into the job."""

    hot: HotFolder
    job_id: str
    every_s: float = EVERY_S
    _rows: list[str] = field(default_factory=list)
    _last_flush: float = float("-inf")
    _last_image: float = float("-inf")
    _stride: int = 0
    _broken: bool = False

    @property
    def folder(self) -> Path:
        return live_dir(self.hot) / self.job_id

    def step(self, step: int, steps: int, total: float, style: float, content: float, tv: float) -> None:
        if self._broken:
            return
        if not self._stride:
            self._stride = max(1, steps // MAX_ROWS)
            sweep(self.hot, keep=self.job_id)
        if step % self._stride == 0 or step == steps:
            self._rows.append(f"{step},{total!r},{style!r},{content!r},{tv!r}\n")
        now = time.monotonic()
        if step >= steps:
            self.close()
        elif now - self._last_flush >= self.every_s:
            self._last_flush = now
            self._guard(self._flush)

    def image(self, tensor: Any) -> None:
        """``tensor``: the optimised image, (1, C, H, W) on the CPU, from a checkpoint."""
        now = time.monotonic()
        if self._broken or now - self._last_image < self.every_s:
            return
        self._last_image = now
        self._guard(lambda: write_atomic(self.folder / IMAGE_FILE, _jpeg(tensor)))

    def close(self) -> None:
        shutil.rmtree(self.folder, ignore_errors=True)
        self._rows.clear()

    def _flush(self) -> None:
        if not self._rows:
            return
        self.folder.mkdir(parents=True, exist_ok=True)
        with open(self.folder / LOSSES_FILE, "a", encoding="ascii") as out:
            out.write("".join(self._rows))
        self._rows.clear()

    def _guard(self, action: Any) -> None:
        """A full disk or a removed folder costs the page its live view, never the job."""
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
            action()
        except OSError as exc:
            logger.warning("live view of job %s stopped: %s", self.job_id, exc)
            self._broken = True


def _jpeg(tensor: Any) -> bytes:
    import io

    import numpy as np
    from PIL import Image

    pixels = tensor.detach()[0].clamp(0, 1).mul(255).round().byte()
    if pixels.shape[0] == 1:
        pixels = pixels.expand(3, -1, -1)
    picture = Image.fromarray(np.ascontiguousarray(pixels.permute(1, 2, 0).numpy()[..., :3]))
    picture.thumbnail((PREVIEW_PX, PREVIEW_PX))
    buf = io.BytesIO()
    picture.save(buf, format="JPEG", quality=85)
    return buf.getvalue()


def read_losses(hot: HotFolder, job_id: str, max_rows: int = MAX_ROWS) -> list[dict[str, float]]:
    """The live loss rows of a running job (empty when there are none)."""
    folder = job_dir(hot, job_id)
    if folder is None:
        return []
    try:
        with open(folder / LOSSES_FILE, "rb") as f:
            lines = f.read(8 << 20).decode("ascii", "replace").split("\n")
    except OSError:
        return []
    rows = []
    for line in lines:
        parts = line.split(",")
        if len(parts) != 5:
            continue  # the torn last line of an append in progress
        try:
            step, *values = (float(p) for p in parts)
        except ValueError:
            continue
        rows.append({"step": int(step), "total_loss": values[0], "style_loss": values[1],
                     "content_loss": values[2], "tv_loss": values[3]})
    if len(rows) > max_rows:
        stride = len(rows) / max_rows
        rows = [rows[int(i * stride)] for i in range(max_rows)] + [rows[-1]]
    return rows


def sweep(hot: HotFolder, keep: str | None = None) -> None:
    """Remove the live folders of jobs whose claim is gone (ended, or failed mid-run)."""
    folder = live_dir(hot)
    try:
        entries = list(folder.iterdir())
    except OSError:
        return
    for entry in entries:
        if entry.name in (keep, "daemons") or not _ID.match(entry.name):
            continue
        if not (hot.work / entry.name).is_dir():
            shutil.rmtree(entry, ignore_errors=True)


@dataclass
class DaemonAnnouncement:
    path: Path

    def withdraw(self) -> None:
        self.path.unlink(missing_ok=True)


def announce_daemon(hot: HotFolder, info: dict[str, Any]) -> DaemonAnnouncement | None:
    """Tell every page on this root that this process serves it, on which device."""
    path = live_dir(hot) / "daemons" / f"{_safe(socket.gethostname())}-{os.getpid()}.json"
    body = {**info, "host": socket.gethostname(), "pid": os.getpid(), "started": time.time()}
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        write_atomic(path, json.dumps(body).encode())
    except OSError as exc:
        logger.warning("could not record this daemon for the status page: %s", exc)
        return None
    return DaemonAnnouncement(path)


def daemons(hot: HotFolder) -> list[dict[str, Any]]:
    """The serving processes of this root; those of this host that died are dropped."""
    found = []
    here = socket.gethostname()
    try:
        files = sorted((live_dir(hot) / "daemons").glob("*.json"))
    except OSError:
        return []
    for path in files:
        try:
            info = json.loads(path.read_bytes()[:65536])
        except (OSError, ValueError):
            continue
        if not isinstance(info, dict):
            continue
        if info.get("host") == here and isinstance(info.get("pid"), int) and not _alive(info["pid"]):
            path.unlink(missing_ok=True)
            continue
        found.append(info)
    return found


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]", "_", name)[:64] or "host"
