"""Finding work in the inbox: scans, settle times, pairing, and watchdog as a hint.

Filesystem events get lost (queue overflow, network shares, a watcher thread that
died), so they are only a reason to look sooner: the truth is a scan of the inbox. A
file is ready once its size and mtime have not changed for ``settle_s``. A
close-after-write event does not shorten that wait: a writer that appends and closes
again (a shell loop with ``>>``, a resumed transfer) closes the file many times before
it is complete, and SPEC §3 asks for "closed *and* unchanged for settle_s".

Pairing follows SPEC §3: sidecar ``NAME.json``, then ``preset.json`` in the same
folder, then the preset named by the subfolder, then the config's ``default_preset``;
with none, the image waits ``pair_timeout_s`` and then fails ``no_preset``. No torch here.
"""

from __future__ import annotations

import logging
import os
import threading
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..failures import FailureKind
from .layout import PRESET_FILE, HotFolder, is_ignored, is_image
from .origins import DefaultPreset, FolderPreset, NamedPreset, Origin, Rejected, SidecarPreset

__all__ = ["Candidate", "Inbox", "InboxWatcher", "Waiting"]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Candidate:
    """A settled file, its sidecar (which moves with it, whatever becomes of it) and
    where its preset comes from."""

    path: Path
    sidecar: Path | None
    origin: Origin
    source: str  # path relative to the inbox


@dataclass(frozen=True)
class Waiting:
    """A file the queue shows, and why it waits. An image and its sidecar are one entry;
    a folder's preset.json is none (it stays for the next photo)."""

    source: str  # path relative to the inbox
    reason: str
    since: float  # when it was first seen unchanged, on the caller's clock


@dataclass
class _Seen:
    size: int
    mtime_ns: int
    changed: float  # monotonic time of the last observed change
    ready_since: float | None = None  # when it settled (for pair_timeout_s)


@dataclass
class Inbox:
    """The scanning state machine; no threads, ``now`` passed in (testable without sleeps)."""

    hot: HotFolder
    settle_s: float
    pair_timeout_s: float
    has_preset: Callable[[str], bool]
    default_preset: str | None = None
    _seen: dict[Path, _Seen] = field(default_factory=dict)
    _sidecars: dict[tuple[Path, str], Path] = field(default_factory=dict)
    _images: Counter[tuple[Path, str]] = field(default_factory=Counter)
    _folder_presets: dict[Path, Path] = field(default_factory=dict)

    def scan(self, now: float, *, from_mtime: bool = False) -> None:
        """Look at the inbox. ``from_mtime``: a file seen for the first time counts as
        changed at its mtime, not ``now`` (``now`` is then wall-clock time): what
        ``stylefold status`` uses to say why files wait, without watching them."""
        present: set[Path] = set()
        for path, st in _walk(self.hot.inbox):
            present.add(path)
            seen = self._seen.get(path)
            if seen is None or (seen.size, seen.mtime_ns) != (st.st_size, st.st_mtime_ns):
                changed = min(now, st.st_mtime_ns / 1e9) if from_mtime and seen is None else now
                self._seen[path] = _Seen(st.st_size, st.st_mtime_ns, changed)
        for gone in set(self._seen) - present:
            del self._seen[gone]

    def waiting(self) -> int:
        """How many entries the queue has (``queue``): the one count the console and
        ``stylefold status`` show."""
        self._index()
        return sum(1 for path in self._seen if self._listed(path))

    def _listed(self, path: Path) -> bool:
        name = path.name.lower()
        return name != PRESET_FILE and not (name.endswith(".json") and self._has_image(path))

    def queue(self, now: float, clock: Callable[[float], str] = lambda t: f"{t:.0f}") -> list[Waiting]:
        """Every file still to be handed out, oldest first, with why it waits.
        ``clock`` turns a time on ``now``'s clock into what a person reads (HH:MM:SS)."""
        self._index()
        entries = []
        for path, seen in sorted(self._seen.items(), key=lambda kv: (kv[1].changed, kv[0])):
            if not self._listed(path):
                continue
            entries.append(Waiting(self.hot.relative(path), self._reason(path, seen, now, clock), seen.changed))
        return entries

    def _reason(self, path: Path, seen: _Seen, now: float, clock: Callable[[float], str]) -> str:
        if not self._settled(seen, now):
            return f"settling: unchanged for {self.settle_s:g} s before it is taken"
        timeout = clock((seen.ready_since or seen.changed + self.settle_s) + self.pair_timeout_s)
        if path.suffix.lower() == ".json":
            return f"a sidecar waiting for its image until {timeout}"
        sidecar = self._sidecar_for(path)
        if sidecar is not None and not self._settled(self._seen[sidecar], now):
            return f"waiting for its sidecar {sidecar.name} to settle"
        folder_preset = self._folder_presets.get(path.parent)
        if folder_preset is not None and not self._settled(self._seen[folder_preset], now):
            return f"waiting for {self.hot.relative(folder_preset)} to settle"
        if self._pair(path, seen, now) is None and sidecar is None:
            return f"waiting for a sidecar {path.stem}.json until {timeout}"
        return "queued"

    def forget(self, path: Path) -> None:
        self._seen.pop(path, None)

    def next_wakeup(self, now: float) -> float | None:
        """Seconds until some file may become ready or time out (None: nothing waiting)."""
        waits = []
        for seen in self._seen.values():
            if now - seen.changed < self.settle_s:
                waits.append(seen.changed + self.settle_s - now)
            elif seen.ready_since is not None:
                waits.append(max(0.0, seen.ready_since + self.pair_timeout_s - now))
        return min(waits) if waits else None

    def ready(self, now: float) -> Iterator[Candidate]:
        """Settled files with their preset origin, oldest first."""
        self._index()
        for path, seen in sorted(self._seen.items(), key=lambda kv: kv[1].changed):
            if not self._settled(seen, now):
                continue
            if seen.ready_since is None:
                seen.ready_since = now
            candidate = self._pair(path, seen, now)
            if candidate is not None:
                yield candidate

    def _index(self) -> None:
        # Indexes by (folder, stem), built once per call: pairing stays linear in the
        # number of files even when thousands arrive at once.
        self._sidecars = {(p.parent, p.stem): p for p in self._seen
                          if p.suffix.lower() == ".json" and p.name.lower() != PRESET_FILE}
        # Any file but a .json has its sidecar (x.gif + x.json fail together).
        self._images = Counter((p.parent, p.stem) for p in self._seen if p.suffix.lower() != ".json")
        # preset.json in any case (Preset.json from a Windows share is the same file).
        self._folder_presets = {p.parent: p for p in self._seen if p.name.lower() == PRESET_FILE}

    def _settled(self, seen: _Seen, now: float) -> bool:
        return now - seen.changed >= self.settle_s

    def _pair(self, path: Path, seen: _Seen, now: float) -> Candidate | None:
        source = self.hot.relative(path)
        timed_out = now - (seen.ready_since or now) >= self.pair_timeout_s
        name = path.name
        if name.lower().endswith(".json"):
            if name.lower() == PRESET_FILE or self._has_image(path) or not timed_out:
                return None  # a folder preset, a sidecar waiting for its image's turn
            return Candidate(path, None, Rejected(failure=FailureKind.NO_IMAGE), source)
        sidecar = self._sidecar_for(path)
        if sidecar is not None and not self._settled(self._seen[sidecar], now):
            return None  # wait for the sidecar to be complete
        if not is_image(name):
            # x.gif + x.json: the sidecar fails with its file, it does not stay behind
            # (unless an x.jpg beside them still needs it).
            mine = sidecar if not self.shares_sidecar(path) else None
            return Candidate(path, mine, Rejected(failure=FailureKind.UNSUPPORTED_FILE), source)
        if sidecar is not None:
            return Candidate(path, sidecar, SidecarPreset(file=sidecar.name, shared=self.shares_sidecar(path)),
                             source)
        folder_preset = self._folder_presets.get(path.parent)
        if folder_preset is not None:
            if not self._settled(self._seen[folder_preset], now):
                return None
            return Candidate(path, None, FolderPreset(file=self.hot.relative(folder_preset)), source)
        parts = Path(source).parts
        if len(parts) > 1 and self.has_preset(parts[0]):
            return Candidate(path, None, NamedPreset(name=parts[0]), source)
        if self.default_preset:
            return Candidate(path, None, DefaultPreset(name=self.default_preset), source)
        if len(parts) > 1:
            # inbox/gatsby/x.jpg: a folder named after no preset fails at once, naming
            # the folder, rather than after pair_timeout_s with nothing said.
            return Candidate(path, None, Rejected(failure=FailureKind.NO_PRESET), source)
        if timed_out:
            return Candidate(path, None, Rejected(failure=FailureKind.NO_PRESET), source)
        return None

    def _sidecar_for(self, image: Path) -> Path | None:
        """``NAME.json`` in any case (cameras and Windows tools write IMG_1.JPG +
        IMG_1.JSON); ``preset.json`` is the folder's preset, never a sidecar (of a
        ``preset.jpg``)."""
        return self._sidecars.get((image.parent, image.stem))

    def _has_image(self, sidecar: Path) -> bool:
        return self._images[(sidecar.parent, sidecar.stem)] > 0

    def shares_sidecar(self, image: Path) -> bool:
        """Another image with the same stem waits beside this one (a.jpg and a.png):
        their ``a.json`` must stay for it, so this one takes a copy of its contents."""
        return self._images[(image.parent, image.stem)] > 1


def _walk(inbox: Path) -> Iterator[tuple[Path, os.stat_result]]:
    """Every regular file under ``inbox``, at any depth: promise 1 covers an editor's
    inbox/book/2024/06/15/shoot/x.jpg too, so there is no depth cap (a capped walk left
    deeper files in the inbox forever, unlogged). A stack, not recursion, so no tree is
    too deep for Python; symlinked folders are not followed, so there are no cycles."""
    stack = [inbox]
    while stack:
        folder = stack.pop()
        try:
            entries = list(os.scandir(folder))
        except FileNotFoundError:
            continue
        except OSError as exc:
            logger.warning("cannot list %s: %s", folder, exc)
            continue
        for entry in entries:
            if is_ignored(entry.name):
                continue
            try:
                if entry.is_dir(follow_symlinks=False):
                    stack.append(Path(entry.path))
                elif entry.is_file(follow_symlinks=False) or entry.is_symlink():
                    # Symlinks are handed out too (never followed): they end in failed/
                    # rather than sitting in the inbox forever.
                    yield Path(entry.path), entry.stat(follow_symlinks=False)
            except FileNotFoundError:
                continue  # moved away between listing and stat


class _DropStopRace(logging.Filter):
    """watchdog 7.x logs a benign race between its reader thread and stop() at ERROR
    ("queue_events() called when the thread is inactive"); it is not an error of ours."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "called when the thread is inactive" not in record.getMessage()


logging.getLogger("watchdog.observers.inotify").addFilter(_DropStopRace())


class InboxWatcher:
    """watchdog's observer on the inbox, supervised: its events only wake the service.

    ``poll=True`` uses watchdog's polling observer (network shares, where inotify sees
    nothing of other machines' writes).
    """

    def __init__(self, inbox: Inbox, wake: threading.Event, *, poll: bool = False, poll_interval_s: float = 2.0):
        self.inbox = inbox
        self.wake = wake
        self.poll = poll
        self.poll_interval_s = poll_interval_s
        self._observer: Any = None
        # False when the observer could not start at all (inotify limits): scans alone.
        self.enabled = True

    def start(self) -> None:
        from watchdog.events import FileSystemEventHandler
        from watchdog.observers import Observer
        from watchdog.observers.polling import PollingObserver

        wake = self.wake

        class _Handler(FileSystemEventHandler):
            def on_any_event(self, event: Any) -> None:
                wake.set()

        observer = PollingObserver(timeout=self.poll_interval_s) if self.poll else Observer()
        observer.schedule(_Handler(), str(self.inbox.hot.inbox), recursive=True)
        observer.daemon = True
        try:
            observer.start()
        except OSError as exc:  # inotify limits reached, for one
            logger.warning("file watcher could not start (%s); relying on periodic scans", exc)
            self._observer = None
            self.enabled = False
            return
        self._observer = observer

    def alive(self) -> bool:
        return self._observer is not None and self._observer.is_alive()

    def supervise(self) -> None:
        """Restart a watcher thread that died; scans cover what it missed meanwhile."""
        if self._observer is not None and not self._observer.is_alive():
            logger.warning("file watcher thread died; restarting it")
            self.stop()
            self.start()
            self.wake.set()

    def stop(self) -> None:
        if self._observer is not None:
            try:
                self._observer.stop()
                self._observer.join(timeout=5)
            except RuntimeError:
                pass
            self._observer = None

