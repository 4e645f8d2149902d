"""``/api/status``: the whole root in one answer, whichever daemon runs what.

The queue is a scan of the inbox (as ``stylefold status`` makes it, with why each file
waits and which preset it will get); running, recent and failed jobs come from the
journal every daemon writes; the daemons themselves from ``.stylefold/live/daemons/``.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .. import __version__
from ..config import Config
from ..hotfolder import live
from ..hotfolder.admin import broker_workers, clock
from ..hotfolder.layout import PRESET_FILE, HotFolder
from ..hotfolder.watcher import Inbox
from ..presets import PresetError, PresetLibrary
from .jobs import JobFiles, job_view
from .reader import JournalReader

__all__ = ["StatusBoard"]

LIBRARY_TTL_S = 10.0
WORKERS_TTL_S = 5.0  # how old the list of broker workers may be


@dataclass
class StatusBoard:
    config: Config
    hot: HotFolder
    reader: JournalReader
    files: JobFiles
    _library: PresetLibrary | None = None
    _library_at: float = 0.0
    _presets: list[dict[str, Any]] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _workers: list[dict[str, Any]] = field(default_factory=list)
    _workers_at: float = 0.0
    _workers_asking: bool = False

    def library(self) -> PresetLibrary:
        """Rebuilt every few seconds: a preset file added to presets_dir shows up."""
        with self._lock:
            if self._library is None or time.monotonic() - self._library_at > LIBRARY_TTL_S:
                self._library = PresetLibrary.for_config(self.config)
                self._library_at = time.monotonic()
                self._presets = []
            return self._library

    def presets(self) -> list[dict[str, Any]]:
        library = self.library()
        if self._presets:
            return self._presets
        found: list[dict[str, Any]] = []
        for name in library.names():
            try:
                preset = library.load(name)
            except PresetError as exc:
                found.append({"name": name, "error": str(exc)})
                continue
            found.append({"name": name, "description": preset.description, "size": preset.size,
                          "steps": preset.steps, "styles": [r.path for r in preset.style_refs()]})
        self._presets = found
        return found

    def workers(self) -> list[dict[str, Any]]:
        """The broker's workers (SPEC §8), as last asked. Asked again in a thread of its
        own when older than ``WORKERS_TTL_S``: a broker that does not answer must not
        hold up ``/api/status`` (its connect timeout is seconds)."""
        if not self.config.cluster.broker:
            return []
        with self._lock:
            stale = time.monotonic() - self._workers_at > WORKERS_TTL_S
            if stale and not self._workers_asking:
                self._workers_asking = True
                threading.Thread(target=self._ask_workers, name="stylefold-workers", daemon=True).start()
            return self._workers

    def _ask_workers(self) -> None:
        try:
            found = broker_workers(self.config)
        finally:
            with self._lock:
                self._workers_asking = False
                self._workers_at = time.monotonic()
        with self._lock:
            self._workers = found

    def queue(self) -> list[dict[str, Any]]:
        library = self.library()
        inbox = Inbox(self.hot, self.config.settle_s, self.config.pair_timeout_s,
                      has_preset=lambda n: library.find(n) is not None, default_preset=self.config.default_preset)
        now = time.time()
        inbox.scan(now, from_mtime=True)
        return [{"source": w.source, "reason": w.reason, "since": round(w.since, 3),
                 "preset": self._preset_of(w.source, library)} for w in inbox.queue(now, clock=clock)]

    def _preset_of(self, source: str, library: PresetLibrary) -> str | None:
        """Which preset a waiting photo will get, by SPEC §3's order (as far as the
        files now in the inbox say)."""
        path = Path(source)
        folder = self.hot.inbox / path.parent
        if path.suffix.lower() == ".json":
            return None
        if (folder / f"{path.stem}.json").is_file():
            return f"sidecar {path.stem}.json"
        if (folder / PRESET_FILE).is_file():
            return f"folder preset inbox/{(path.parent / PRESET_FILE).as_posix()}"
        if len(path.parts) > 1 and library.find(path.parts[0]) is not None:
            return path.parts[0]
        return self.config.default_preset

    def report(self, recent: int = 12) -> dict[str, Any]:
        running, done, failed, counts = self.reader.snapshot(recent)
        return {
            "root": str(self.hot.root.absolute()),
            "version": __version__,
            "queue": self.queue(),
            "running": [job_view(r, self.files) for r in running],
            "recent": [job_view(r, self.files) for r in done],
            "failed": [job_view(r, self.files) for r in failed],
            "counts": counts,
            "daemons": live.daemons(self.hot),
            "workers": self.workers(),
            "presets": self.presets(),
            "time": time.time(),
        }
