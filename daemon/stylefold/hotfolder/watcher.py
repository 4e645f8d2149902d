"""Finding work in the inbox: scans, settle times, pairing, and watchdog as a hint.

Filesystem events get lost (queue overflow, network shares, a watcher thread that
died), so they are only a reason to look sooner: the truth is a scan of the inbox. A
file is ready once its size, mtime and inode have not changed for ``settle_s``. A
close-after-write event does not shorten that wait: a writer that appends and closes
again (a shell loop with ``>>``, a resumed transfer) closes the file many times before
it is complete, and SPEC §3 asks for "closed *and* unchanged for settle_s".

Pairing follows SPEC §3: sidecar ``NAME.json``, then ``preset.json`` in the same
folder, then the preset named by the subfolder, then the config's ``default_preset``;
with none, the image waits ``pair_timeout_s`` and then fails ``no_preset``. Files are
handed out first in, first out; FIFOs, sockets, devices and links are handed out too,
never opened, to fail ``unsupported_file``. No torch here.
"""

from __future__ import annotations

import logging
import os
import stat
import threading
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..failures import FailureKind
from .layout import PRESET_FILE, HotFolder, is_ignored, is_image
from .origins import Origin, default_origin, folder_origin, named_origin, rejected, sidecar_origin

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
    """One inbox entry as last seen, with what pairing asks of it worked out once (a
    scan then costs one ``lstat`` per unchanged entry, and nothing else)."""

    path: Path
    source: str  # relative to the inbox
    signature: tuple[int, int, int, int]  # size, mtime, inode, mode: any change restarts settling
    # First in, first out: the inode's change time, then the name. Not mtime, which a copy
    # keeping its times (Finder, cp -p, rsync -t, unzip) brings from the photo's past; ctime
    # is set by the write or rename that brought it in, and survives a restart (``changed`` does not).
    arrival: tuple[int, str, str]
    changed: float  # monotonic time of the last observed change
    regular: bool  # False: a FIFO, socket, device or symbolic link (never opened)
    lower: str  # the name in lower case
    folder: str  # the folder it is in
    key: tuple[str, str]  # (folder, stem): what pairs an image with its sidecar
    image: bool  # named like an image stylefold reads
    ready_since: float | None = None  # when it settled (for pair_timeout_s)

    @classmethod
    def of(cls, path: Path, source: str, st: os.stat_result, changed: float) -> _Seen:
        folder = os.path.dirname(str(path))
        return cls(path, source, _signature(st), (st.st_ctime_ns, path.name, source), changed, stat.S_ISREG(st.st_mode),
                   path.name.lower(), folder, (folder, path.stem), is_image(path.name))


@dataclass
class Inbox:
    """The scanning state machine; no threads, ``now`` passed in (testable without sleeps)."""

    hot: HotFolder
    settle_s: float
    pair_timeout_s: float
    has_preset: Callable[[str], bool]
    default_preset: str | None = None
    _seen: dict[str, _Seen] = field(default_factory=dict)
    _sidecars: dict[tuple[str, str], _Seen] = field(default_factory=dict)
    _images: Counter[tuple[str, str]] = field(default_factory=Counter)
    _folder_presets: dict[str, _Seen] = field(default_factory=dict)
    _order: list[_Seen] = field(default_factory=list)
    _dirty: bool = True  # entries came, changed or went since _order and the indexes were built

    def scan(self, now: float, *, from_mtime: bool = False) -> None:
        """Look at the inbox. ``from_mtime``: a file seen for the first time counts as
        changed at its mtime, not ``now`` (``now`` is then wall-clock time): what
        ``stylefold status`` uses to say why files wait, without watching them."""
        present: set[str] = set()
        for key, st in _walk(self.hot.inbox):
            present.add(key)
            seen = self._seen.get(key)
            if seen is not None and seen.signature == _signature(st):
                continue
            changed = min(now, st.st_mtime_ns / 1e9) if from_mtime and seen is None else now
            path = Path(key)
            self._seen[key] = _Seen.of(path, self.hot.relative(path), st, changed)
            self._dirty = True
        if len(present) != len(self._seen):
            for gone in set(self._seen) - present:
                del self._seen[gone]
            self._dirty = True

    def waiting(self) -> int:
        """How many entries the queue has (``queue``): the one count the console and
        ``stylefold status`` show."""
        self._index()
        return sum(1 for seen in self._order if self._listed(seen))

    def _listed(self, seen: _Seen) -> bool:
        return seen.lower != PRESET_FILE and not (seen.lower.endswith(".json") and self._has_image(seen))

    def queue(self, now: float, clock: Callable[[float], str] = lambda t: f"{t:.0f}") -> list[Waiting]:
        """Every file still to be handed out, first in first out (as ``ready``), with why
        it waits. ``clock`` turns a time on ``now``'s clock into what a person reads."""
        self._index()
        return [Waiting(seen.source, self._reason(seen, now, clock), seen.changed)
                for seen in self._order if self._listed(seen)]

    def _reason(self, seen: _Seen, now: float, clock: Callable[[float], str]) -> str:
        if not self._settled(seen, now):
            return f"settling: unchanged for {self.settle_s:g} s before it is taken"
        timeout = clock(self._pair_deadline(seen))
        if seen.lower.endswith(".json"):
            return f"a sidecar waiting for its image until {timeout}"
        sidecar = self._sidecar_for(seen)
        if sidecar is not None and not self._settled(sidecar, now):
            return f"waiting for its sidecar {sidecar.path.name} to settle"
        folder_preset = self._folder_presets.get(seen.folder)
        if folder_preset is not None and not self._settled(folder_preset, now):
            return f"waiting for {folder_preset.source} to settle"
        if sidecar is None and self._pair(seen, now) is None:
            return f"waiting for a sidecar {seen.path.stem}.json until {timeout}"
        return "queued"

    def forget(self, path: Path) -> None:
        if self._seen.pop(str(path), None) is not None:
            self._dirty = True

    def next_wakeup(self, now: float) -> float | None:
        """Seconds until some file may settle or time out (None: nothing will). Only
        times still to come count: a timeout that has passed was acted on by ``ready``,
        and one that cannot happen (a folder's preset.json, a sidecar whose image is
        there) is no timer at all; either once made an idle daemon rescan every 50 ms."""
        self._index()
        waits = []
        for seen in self._order:
            settles_at = seen.changed + self.settle_s
            if settles_at > now:
                waits.append(settles_at - now)
            elif self._times_out(seen) and (deadline := self._pair_deadline(seen)) > now:
                waits.append(deadline - now)
        return min(waits) if waits else None

    def _pair_deadline(self, seen: _Seen) -> float:
        return (seen.ready_since or seen.changed + self.settle_s) + self.pair_timeout_s

    def _times_out(self, seen: _Seen) -> bool:
        """Whether ``pair_timeout_s`` decides this entry: a sidecar without its image, or
        a photo in inbox/ itself with no preset of any kind (yet)."""
        lower = seen.lower
        if lower.endswith(".json"):
            return lower != PRESET_FILE and seen.regular and not self._has_image(seen)
        return (seen.regular and seen.image and "/" not in seen.source and not self.default_preset
                and self._sidecar_for(seen) is None and seen.folder not in self._folder_presets)

    def ready(self, now: float) -> Iterator[Candidate]:
        """Settled files with their preset origin, first in first out: by arrival (the
        inode's change time), ties by name, whatever their preset."""
        self._index()
        for seen in list(self._order):
            if not self._settled(seen, now) or self._seen.get(str(seen.path)) is not seen:
                continue  # settling, or claimed (forgotten) since the list was made
            if seen.ready_since is None:
                seen.ready_since = now
            candidate = self._pair(seen, now)
            if candidate is not None:
                yield candidate

    def _index(self) -> None:
        # Rebuilt only when entries came, changed or went: an idle scan or the next job of
        # a queue of thousands costs no pairing work (it was ~70 µs per queued file per job).
        if not self._dirty:
            return
        self._dirty = False
        self._order = sorted(self._seen.values(), key=lambda seen: seen.arrival)
        self._sidecars = {seen.key: seen for seen in self._order
                          if seen.lower.endswith(".json") and seen.lower != PRESET_FILE}
        # Any file but a .json has its sidecar (x.gif + x.json fail together).
        self._images = Counter(seen.key for seen in self._order if not seen.lower.endswith(".json"))
        # preset.json in any case (Preset.json from a Windows share is the same file).
        self._folder_presets = {seen.folder: seen for seen in self._order if seen.lower == PRESET_FILE}

    def _settled(self, seen: _Seen, now: float) -> bool:
        return now - seen.changed >= self.settle_s

    def _pair(self, seen: _Seen, now: float) -> Candidate | None:
        path, source, lower = seen.path, seen.source, seen.lower
        if lower.endswith(".json"):
            return self._pair_json(seen, now)
        sidecar = self._sidecar_for(seen)
        if sidecar is not None and not self._settled(sidecar, now):
            return None  # wait for the sidecar to be complete
        if not seen.regular or not seen.image or (sidecar is not None and not sidecar.regular):
            # x.gif + x.json, a FIFO x.jpg, x.jpg + a FIFO x.json: the pair fails together,
            # the sidecar does not stay behind (unless an x.png beside them still needs it).
            mine = sidecar.path if sidecar is not None and not self._shared(seen) else None
            return Candidate(path, mine, rejected(FailureKind.UNSUPPORTED_FILE), source)
        if sidecar is not None:
            return Candidate(path, sidecar.path, sidecar_origin(sidecar.path.name, self._shared(seen)), source)
        folder_preset = self._folder_presets.get(seen.folder)
        if folder_preset is not None:
            if not self._settled(folder_preset, now):
                return None
            if not folder_preset.regular:  # never read; the photo fails, saying why
                return Candidate(path, None, rejected(FailureKind.UNSUPPORTED_FILE), source)
            return Candidate(path, None, folder_origin(folder_preset.source), source)
        top = source.split("/", 1)[0] if "/" in source else None
        if top is not None and self.has_preset(top):
            return Candidate(path, None, named_origin(top), source)
        if self.default_preset:
            return Candidate(path, None, default_origin(self.default_preset), source)
        if top is not None:
            # inbox/gatsby/x.jpg: a folder named after no preset fails at once, naming
            # the folder, rather than after pair_timeout_s with nothing said.
            return Candidate(path, None, rejected(FailureKind.NO_PRESET), source)
        if now - (seen.ready_since or now) >= self.pair_timeout_s:
            return Candidate(path, None, rejected(FailureKind.NO_PRESET), source)
        return None

    def _pair_json(self, seen: _Seen, now: float) -> Candidate | None:
        """A folder preset stays; a sidecar waits for its image's turn; an orphan fails
        after pair_timeout_s; one that is no regular file fails at once (a FIFO or a
        link is never a preset, and is never opened)."""
        if seen.lower == PRESET_FILE:
            if seen.regular:
                return None
        elif self._has_image(seen):
            return None
        elif seen.regular:
            if now - (seen.ready_since or now) < self.pair_timeout_s:
                return None
            return Candidate(seen.path, None, rejected(FailureKind.NO_IMAGE), seen.source)
        return Candidate(seen.path, None, rejected(FailureKind.UNSUPPORTED_FILE), seen.source)

    def _sidecar_for(self, image: _Seen) -> _Seen | None:
        """``NAME.json`` in any case (cameras and Windows tools write IMG_1.JPG +
        IMG_1.JSON); ``preset.json`` is the folder's preset, never a sidecar (of a
        ``preset.jpg``)."""
        return self._sidecars.get(image.key)

    def _has_image(self, sidecar: _Seen) -> bool:
        return self._images[sidecar.key] > 0

    def _shared(self, image: _Seen) -> bool:
        return self._images[image.key] > 1

    def shares_sidecar(self, image: Path) -> bool:
        """Another image with the same stem waits beside this one (a.jpg and a.png):
        their ``a.json`` must stay for it, so this one takes a copy of its contents."""
        return self._images[(str(image.parent), image.stem)] > 1


def _signature(st: os.stat_result) -> tuple[int, int, int, int]:
    return st.st_size, st.st_mtime_ns, st.st_ino, st.st_mode


def _walk(inbox: Path) -> Iterator[tuple[str, os.stat_result]]:
    """Every entry but a folder under ``inbox``, at any depth, with its ``lstat``: promise
    1 covers an editor's inbox/book/2024/06/15/shoot/x.jpg too, so there is no depth cap
    (a capped walk left deeper files in the inbox forever, unlogged). A stack, not
    recursion, so no tree is too deep for Python; symlinked folders are not followed, so
    there are no cycles. Symlinks, FIFOs, sockets and devices are handed out too (never
    followed, never opened): they end in failed/ rather than sitting in the inbox forever."""
    stack = [str(inbox)]
    while stack:
        folder = stack.pop()
        try:
            with os.scandir(folder) as listing:
                entries = list(listing)
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
                    stack.append(entry.path)
                else:
                    yield entry.path, entry.stat(follow_symlinks=False)
            except FileNotFoundError:
                continue  # moved away between listing and stat


class _DropStopRace(logging.Filter):
    """watchdog 7.x logs a benign race between its reader thread and stop() at ERROR
    ("queue_events() called when the thread is inactive"); it is not an error of ours."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "called when the thread is inactive" not in record.getMessage()


logging.getLogger("watchdog.observers.inotify").addFilter(_DropStopRace())


# Reading a file changes nothing in the inbox (and the daemon reads folder presets there).
_READS = frozenset({"opened", "closed_no_write"})


def _worth_a_look(event: Any) -> bool:
    """Whether an event can change what a scan finds: not a read, and not only about
    ignored names (a download writing x.jpg.part sends an event per write; its rename to
    x.jpg still wakes, by its destination)."""
    if event.event_type in _READS:
        return False
    paths = [event.src_path, getattr(event, "dest_path", "")]
    return any(path and not is_ignored(os.path.basename(os.fsdecode(path))) for path in paths)


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
                if _worth_a_look(event):
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

