"""A real hot folder for the web tests: presets, styles, an in-process daemon (random
VGG19 weights, 32 px, a few steps) that drains the inbox, and a client on the app."""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from stylefold.config import Config, WebConfig
from stylefold.hotfolder.journal import Journal
from stylefold.hotfolder.layout import HotFolder
from stylefold.web.settings import WebSettings

from ..conftest import write_photo, write_texture

STYLE = "tex"
HOST = "127.0.0.1:8707"
BASE = f"http://{HOST}"
POST = {"X-Stylefold": "1"}


def photo_bytes(seed: int = 0, fmt: str = "JPEG", size: tuple[int, int] = (48, 40)) -> bytes:
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:size[1], 0:size[0]].astype(np.float32)
    img = np.stack([x / size[0], y / size[1], 0.5 + 0.5 * np.sin((x + y) / 7.0)], axis=-1)
    img += rng.uniform(-0.2, 0.2, (1, 1, 3)).astype(np.float32)
    buf = io.BytesIO()
    Image.fromarray((np.clip(img, 0, 1) * 255).astype(np.uint8)).save(buf, format=fmt)
    return buf.getvalue()


def make_root(tmp_path: Path, steps: int = 3, size: int = 32, **web: Any) -> Config:
    """A hot folder whose default preset is `tiny` (steps, size, style tex.png)."""
    root = tmp_path / "hot"
    hot = HotFolder(root)
    hot.ensure()
    presets = root / "presets"
    presets.mkdir()
    write_texture(hot.styles / f"{STYLE}.png", size=32, seed=1)
    (presets / "tiny.json").write_text(json.dumps({"steps": steps, "size": size, "style": f"{STYLE}.png",
                                                   "init": "content", "description": "a test preset"}))
    (hot.inbox / "tiny").mkdir()
    return Config(root=root, presets_dir=presets, default_preset="tiny", settle_s=0.0, pair_timeout_s=0.3,
                  checkpoint_every=1, web=WebConfig(**web))


def settings(config: Config, listen: str | None = None) -> WebSettings:
    return WebSettings.from_config(config, listen)


class Daemon:
    """The daemon in this process, on the session's random-weights extractor."""

    def __init__(self, config: Config, extractor: Any) -> None:
        from stylefold.hotfolder.service import Service
        from stylefold.hotfolder.worker import Worker
        from stylefold.job.run import Resident

        self.hot = HotFolder(config.root)
        self.journal = Journal(self.hot.journal)
        worker = Worker(self.hot, self.journal, Resident(extractor), config.checkpoint_every)
        self.service = Service(config, self.hot, self.journal, worker, view=None, notifier=None)

    def drain(self) -> None:
        self.service.run(once=True)


def drop(config: Config, rel: str, data: bytes | None = None, seed: int = 0) -> Path:
    path = config.root / "inbox" / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    staging = config.root.parent / f".staging-{path.name}"
    if data is None:
        write_photo(staging, width=48, height=40, seed=seed)
    else:
        staging.write_bytes(data)
    staging.rename(path)
    return path
