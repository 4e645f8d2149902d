"""Issue 13, items 4, 6 and 8: files that are not files, an idle daemon that stays idle,
and first in, first out.

Real FIFOs (``os.mkfifo``), a real unix socket, symbolic links and, as root, a device
node, dropped into a real hot folder and drained by a real ``Service`` with random
weights. A FIFO nobody writes to blocks whoever opens it for reading: each test that
has one runs a sentinel that notices (and ends) such a blocked open, so a regression
fails the test instead of hanging it. Every test ends with the nothing-lost check, by
inode for what has no bytes to compare.
"""

from __future__ import annotations

import errno
import json
import os
import random
import signal
import socket
import stat
import threading
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from stylefold.hotfolder.claims import Claim
from stylefold.hotfolder.layout import is_ignored
from stylefold.hotfolder.origins import Rejected
from stylefold.hotfolder.runner import JobResult
from stylefold.hotfolder.service import Service
from stylefold.hotfolder.watcher import Inbox
from stylefold.media.imageio import ImageError, load_image
from stylefold.presets import PresetError, read_preset_json
from stylefold.safeopen import NotRegularFile, open_regular, read_regular
from tests.test_hotfolder import Rig, _one_torch_thread, photo_bytes, sha256  # noqa: F401  (an autouse fixture)

STYLE = "tex"


@pytest.fixture
def rig(tmp_path: Path, extractor: Any) -> Rig:
    return Rig(tmp_path, extractor)


# ---------------------------------------------------------------- helpers


class Sentinel:
    """Notices any process holding ``fifo`` open for reading (a blocked ``open`` is one):
    an ``O_WRONLY | O_NONBLOCK`` open succeeds only then. It closes at once, which
    unblocks the reader with an end of file, so the test goes on and fails."""

    def __init__(self, fifo: Path) -> None:
        self.fifo = fifo
        self.readers_seen = 0
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._watch, daemon=True)

    def _watch(self) -> None:
        while not self._done.wait(0.05):
            try:
                fd = os.open(self.fifo, os.O_WRONLY | os.O_NONBLOCK)
            except OSError as exc:
                if exc.errno not in (errno.ENXIO, errno.ENOENT):
                    raise
                continue
            self.readers_seen += 1
            os.close(fd)

    def __enter__(self) -> Sentinel:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._done.set()
        self._thread.join()


class Entries:
    """What went into the inbox, to check promise 1 whatever each entry is: regular
    files by their bytes, FIFOs, sockets, devices and links by their inode (a rename
    keeps it)."""

    def __init__(self, rig: Rig) -> None:
        self.rig = rig
        self.expected: Counter[tuple[str, object]] = Counter()

    def add(self, rel: str) -> Path:
        path = self.rig.inbox / rel
        self.expected[_identity(path)] += 1
        return path

    def assert_nothing_lost(self, kept: tuple[str, ...] = ()) -> None:
        hot = self.rig.hot
        landed: Counter[tuple[str, object]] = Counter()
        for folder in (hot.done, hot.failed):
            for dirpath, _dirs, names in os.walk(folder):
                for name in names:
                    if not name.endswith(".error.json"):
                        landed[_identity(Path(dirpath) / name)] += 1
        expected = self.expected - Counter(_identity(self.rig.inbox / rel) for rel in kept)
        assert landed == expected, f"done/ + failed/ hold {landed}, dropped {expected}"
        left = sorted(str(Path(d, n).relative_to(self.rig.inbox)) for d, _s, names in os.walk(self.rig.inbox)
                      for n in names if not is_ignored(n))
        assert left == sorted(kept), f"left in the inbox: {left}"
        assert list(hot.work.iterdir()) == [], "claim folders left behind"


def _identity(path: Path) -> tuple[str, object]:
    info = os.lstat(path)
    if stat.S_ISREG(info.st_mode):
        return "bytes", sha256(path.read_bytes())
    return stat.filemode(info.st_mode)[0], info.st_ino


def _socket_at(path: Path) -> None:
    """A unix socket file at ``path``; it stays after the socket object is closed."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.bind(str(path))


def _fifo_at(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    os.mkfifo(path)
    return path


def _kind_in_failed(rig: Rig, rel: str) -> tuple[str, dict[str, Any]]:
    """The entry's file type letter in failed/ (``p`` FIFO, ``s`` socket, ``l`` link,
    ``-`` file) and its error file."""
    path = rig.hot.failed / rel
    return stat.filemode(os.lstat(path).st_mode)[0], rig.error(rel)


# ---------------------------------------------------------------- item 4: never opened, never blocking


@pytest.fixture
def no_blocking() -> Iterator[None]:
    """A SIGALRM that raises if the test blocks (an open of a FIFO nobody writes to
    never returns otherwise): the test fails instead of hanging."""
    def blocked(signum: int, frame: Any) -> None:
        raise TimeoutError("blocked opening a file")

    previous = signal.signal(signal.SIGALRM, blocked)
    signal.setitimer(signal.ITIMER_REAL, 20.0)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def test_open_regular_refuses_what_is_not_a_regular_file_without_blocking(tmp_path: Path,
                                                                           no_blocking: None) -> None:
    fifo = _fifo_at(tmp_path / "pipe.json")
    (tmp_path / "link.json").symlink_to(fifo)
    (tmp_path / "file.json").write_text('{"steps": 3}')
    (tmp_path / "to-file.json").symlink_to(tmp_path / "file.json")
    _socket_at(tmp_path / "sock.json")
    for name, what in (("pipe.json", "a FIFO (named pipe)"), ("link.json", "a symbolic link"),
                       ("to-file.json", "a symbolic link"), ("sock.json", "a socket")):
        with pytest.raises(NotRegularFile) as refused:
            open_regular(tmp_path / name)
        assert refused.value.what == what
    with pytest.raises(NotRegularFile):  # followed, a link to a FIFO is still no file
        open_regular(tmp_path / "link.json", follow_symlinks=True)
    with pytest.raises(PresetError, match="FIFO"):
        read_preset_json(tmp_path / "link.json")
    with pytest.raises(PresetError, match="symbolic link"):
        read_preset_json(tmp_path / "to-file.json", follow_symlinks=False)
    with pytest.raises(ImageError, match="FIFO"):
        load_image(fifo)
    with pytest.raises(ImageError, match="symbolic link"):
        load_image(tmp_path / "link.json", follow_symlinks=False)
    assert read_regular(tmp_path / "to-file.json", 100, follow_symlinks=True) == b'{"steps": 3}'
    assert read_preset_json(tmp_path / "file.json") == {"steps": 3}
    big = tmp_path / "big.json"
    big.write_bytes(b" " * 70_000 + b"{}")
    with pytest.raises(PresetError, match="at most 64 KB"):
        read_preset_json(big)


def test_a_fifo_named_like_a_photo_fails_unsupported_and_the_next_job_runs(rig: Rig) -> None:
    entries = Entries(rig)
    fifo = _fifo_at(rig.inbox / "tiny" / "x.jpg")
    entries.add("tiny/x.jpg")
    rig.drop_photo("tiny/good.jpg", seed=1)
    entries.add("tiny/good.jpg")

    with Sentinel(fifo) as sentinel:
        assert rig.serve() == 1
    assert sentinel.readers_seen == 0, "the daemon opened the FIFO for reading"

    assert rig.results() == [f"good-{STYLE}.jpg"]
    kind, error = _kind_in_failed(rig, "tiny/x.jpg")
    assert kind == "p" and error["kind"] == "unsupported_file" and "FIFO" in error["error"], error
    entries.assert_nothing_lost()


def test_a_fifo_sidecar_fails_with_its_photo(rig: Rig) -> None:
    entries = Entries(rig)
    rig.drop_photo("y.jpg", seed=2)
    entries.add("y.jpg")
    fifo = _fifo_at(rig.inbox / "y.json")
    entries.add("y.json")
    rig.drop_photo("tiny/good.jpg", seed=1)
    entries.add("tiny/good.jpg")

    with Sentinel(fifo) as sentinel:
        assert rig.serve() == 1
    assert sentinel.readers_seen == 0

    assert rig.results() == [f"good-{STYLE}.jpg"]
    assert stat.S_ISFIFO(os.lstat(rig.hot.failed / "y.json").st_mode), "the sidecar moved with its photo"
    error = rig.error("y.jpg")
    assert error["kind"] == "unsupported_file" and "sidecar y.json" in error["error"] and "FIFO" in error["error"]
    entries.assert_nothing_lost()


def test_a_sidecar_linked_to_a_fifo_is_never_followed(rig: Rig, tmp_path: Path) -> None:
    """The probe of issue 13: this link was followed and the daemon blocked on it while
    a normal job waited."""
    entries = Entries(rig)
    fifo = _fifo_at(tmp_path / "outside" / "pipe")
    rig.drop_photo("z.jpg", seed=3)
    entries.add("z.jpg")
    (rig.inbox / "z.json").symlink_to(fifo)
    entries.add("z.json")
    rig.drop_photo("tiny/good.jpg", seed=1)
    entries.add("tiny/good.jpg")

    with Sentinel(fifo) as sentinel:
        assert rig.serve() == 1
    assert sentinel.readers_seen == 0, "the sidecar's link was followed to the FIFO"

    assert rig.results() == [f"good-{STYLE}.jpg"]
    assert (rig.hot.failed / "z.json").is_symlink() and os.readlink(rig.hot.failed / "z.json") == str(fifo)
    error = rig.error("z.jpg")
    assert error["kind"] == "unsupported_file" and "symbolic link" in error["error"], error
    assert stat.S_ISFIFO(os.lstat(fifo).st_mode), "the link's target is untouched"
    entries.assert_nothing_lost()


def test_a_photo_linked_to_a_fifo_fails_with_its_sidecar(rig: Rig, tmp_path: Path) -> None:
    entries = Entries(rig)
    fifo = _fifo_at(tmp_path / "outside" / "pipe")
    (rig.inbox / "w.jpg").symlink_to(fifo)
    entries.add("w.jpg")
    rig.drop_json("w.json", {"extends": "tiny"})
    entries.add("w.json")

    with Sentinel(fifo) as sentinel:
        assert rig.serve() == 1
    assert sentinel.readers_seen == 0

    kind, error = _kind_in_failed(rig, "w.jpg")
    assert kind == "l" and error["kind"] == "unsupported_file" and "symbolic link" in error["error"]
    assert (rig.hot.failed / "w.json").is_file()
    entries.assert_nothing_lost()


def test_a_fifo_sidecar_shared_by_two_photos_fails_both_and_leaves_with_the_last(rig: Rig) -> None:
    entries = Entries(rig)
    for name, seed in (("a.jpg", 7), ("a.png", 8)):
        rig.drop_photo(name, seed=seed)
        entries.add(name)
    fifo = _fifo_at(rig.inbox / "a.json")
    entries.add("a.json")

    with Sentinel(fifo) as sentinel:
        assert rig.serve() == 1
    assert sentinel.readers_seen == 0

    errors = [rig.error(name) for name in ("a.jpg", "a-2.png")]  # a.png: a.error.json is taken
    assert [e["kind"] for e in errors] == ["unsupported_file"] * 2
    assert all("a.json" in e["error"] and "FIFO" in e["error"] for e in errors), errors
    assert stat.S_ISFIFO(os.lstat(rig.hot.failed / "a-2.json").st_mode), "the sidecar follows the last photo"
    entries.assert_nothing_lost()


def test_sockets_as_photos_and_as_sidecars_fail_unsupported(rig: Rig) -> None:
    entries = Entries(rig)
    _socket_at(rig.inbox / "tiny" / "s.jpg")
    entries.add("tiny/s.jpg")
    rig.drop_photo("t.jpg", seed=4)
    entries.add("t.jpg")
    _socket_at(rig.inbox / "t.json")
    entries.add("t.json")
    rig.drop_photo("tiny/good.jpg", seed=1)
    entries.add("tiny/good.jpg")

    assert rig.serve() == 1

    assert rig.results() == [f"good-{STYLE}.jpg"]
    kind, error = _kind_in_failed(rig, "tiny/s.jpg")
    assert kind == "s" and error["kind"] == "unsupported_file" and "socket" in error["error"]
    assert stat.S_ISSOCK(os.lstat(rig.hot.failed / "t.json").st_mode)
    assert rig.error("t.jpg")["kind"] == "unsupported_file"
    entries.assert_nothing_lost()


def test_a_device_node_fails_unsupported(rig: Rig) -> None:
    device = rig.inbox / "tiny" / "null.jpg"
    device.parent.mkdir()
    try:
        os.mknod(device, stat.S_IFCHR | 0o600, os.makedev(1, 3))  # what /dev/null is
    except PermissionError:
        pytest.skip("making a device node needs root (CAP_MKNOD)")
    entries = Entries(rig)
    entries.add("tiny/null.jpg")
    rig.drop_photo("tiny/good.jpg", seed=1)
    entries.add("tiny/good.jpg")

    assert rig.serve() == 1

    kind, error = _kind_in_failed(rig, "tiny/null.jpg")
    assert kind == "c" and error["kind"] == "unsupported_file" and "device" in error["error"]
    entries.assert_nothing_lost()


def test_an_orphan_fifo_sidecar_fails_at_once_not_after_the_pair_timeout(rig: Rig) -> None:
    fifo = _fifo_at(rig.inbox / "lonely.json")
    inbox = Inbox(rig.hot, settle_s=1.0, pair_timeout_s=3600.0, has_preset=lambda n: n == "tiny")
    inbox.scan(0.0)
    assert list(inbox.ready(0.5)) == []  # settling like any file
    [candidate] = inbox.ready(1.0)  # settled: no hour-long wait for an image
    assert candidate.path == fifo and candidate.origin == Rejected(failure="unsupported_file")

    entries = Entries(rig)
    entries.add("lonely.json")
    with Sentinel(fifo) as sentinel:
        assert rig.serve(pair_timeout_s=3600.0) == 1  # would wait an hour (and hang the test) otherwise
    assert sentinel.readers_seen == 0
    assert _kind_in_failed(rig, "lonely.json")[1]["kind"] == "unsupported_file"
    entries.assert_nothing_lost()


def test_a_folder_preset_json_that_is_a_fifo_is_never_read(rig: Rig) -> None:
    """The photo fails saying why (it is not given another preset silently), and the
    FIFO itself leaves the inbox like any other non-file."""
    entries = Entries(rig)
    rig.drop_photo("shoot/a.jpg", seed=5)
    entries.add("shoot/a.jpg")
    fifo = _fifo_at(rig.inbox / "shoot" / "preset.json")
    entries.add("shoot/preset.json")

    with Sentinel(fifo) as sentinel:
        assert rig.serve() == 1
    assert sentinel.readers_seen == 0

    assert rig.error("shoot/preset.json")["kind"] == "unsupported_file"
    error = rig.error("shoot/a.jpg")
    assert error["kind"] == "unsupported_file" and "inbox/shoot/preset.json" in error["error"], error
    entries.assert_nothing_lost()


def test_hostile_files_all_at_once_and_normal_jobs_between_them(rig: Rig, tmp_path: Path) -> None:
    entries = Entries(rig)
    fifo = _fifo_at(tmp_path / "outside" / "pipe")
    for i in range(3):
        _fifo_at(rig.inbox / "tiny" / f"f{i}.jpg")
        entries.add(f"tiny/f{i}.jpg")
        (rig.inbox / f"l{i}.jpg").symlink_to(fifo)
        entries.add(f"l{i}.jpg")
        rig.drop_photo(f"tiny/ok{i}.jpg", seed=10 + i)
        entries.add(f"tiny/ok{i}.jpg")

    with Sentinel(fifo) as sentinel:
        assert rig.serve() == 1
    assert sentinel.readers_seen == 0

    assert rig.results() == [f"ok{i}-{STYLE}.jpg" for i in range(3)]
    failed = sorted(str(Path(d, n).relative_to(rig.hot.failed)) for d, _s, names in os.walk(rig.hot.failed)
                    for n in names if not n.endswith(".error.json"))
    assert failed == sorted([f"tiny/f{i}.jpg" for i in range(3)] + [f"l{i}.jpg" for i in range(3)])
    entries.assert_nothing_lost()


# ---------------------------------------------------------------- item 6: no busy loop


def _idle_waits(service: Service, idles: int) -> list[float]:
    """Run the real loop, recording how long each idle wait asks for, stopping after
    ``idles`` of them (each returns at once, as if the time had passed)."""
    asked: list[float] = []

    def wait(timeout: float | None = None) -> bool:
        asked.append(float(timeout or 0.0))
        if len(asked) >= idles:
            service.request_stop()
        return False

    service.wake.wait = wait  # type: ignore[method-assign]
    service.run()
    return asked


def test_an_idle_daemon_with_300_old_folder_presets_sleeps_the_scan_interval(rig: Rig) -> None:
    """Issue 13: once a folder preset.json was older than pair_timeout_s, the wake-up
    time became 0 and the daemon rescanned every 50 ms forever."""
    for i in range(300):
        rig.drop_json(f"f{i:03d}/preset.json", {"extends": "tiny"})
    service = rig.make_service(scan_interval_s=30.0, pair_timeout_s=1.0, settle_s=0.05)
    long_ago = time.monotonic() - 1000.0  # seen, settled and timed out long before now
    service.inbox.scan(long_ago)
    assert list(service.inbox.ready(long_ago + 1.0)) == []
    assert service.inbox.next_wakeup(time.monotonic()) is None
    scans = [0]
    Rig.before_scans(service, lambda now: scans.__setitem__(0, scans[0] + 1))

    asked = _idle_waits(service, idles=5)

    assert asked == [30.0] * 5, asked
    assert scans[0] <= 6  # one at start, one after each wait
    rig.assert_nothing_lost(kept=tuple(f"f{i:03d}/preset.json" for i in range(300)))


def test_no_timer_is_ever_in_the_past(rig: Rig) -> None:
    """Whatever waits (a sidecar whose photo waits for the folder's preset.json, a photo
    waiting for its sidecar to settle, a settled folder preset), a timer that has passed
    is never returned: only a settle or a timeout still to come."""
    rig.drop_json("shoot/preset.json", {"extends": "tiny"})
    rig.drop_photo("shoot/a.jpg")
    rig.drop_json("shoot/a.json", {"extends": "tiny"})
    rig.drop_photo("b.jpg")  # in inbox/ itself, no preset: times out at 0 + 1 + 10
    inbox = Inbox(rig.hot, settle_s=1.0, pair_timeout_s=10.0, has_preset=lambda n: n == "tiny")
    inbox.scan(0.0)
    assert inbox.next_wakeup(0.0) == 1.0  # all settle at 1
    assert [c.source for c in inbox.ready(1.0)] == ["shoot/a.jpg"]
    inbox.forget(rig.inbox / "shoot" / "a.jpg")
    inbox.forget(rig.inbox / "shoot" / "a.json")
    assert inbox.next_wakeup(1.0) == pytest.approx(10.0)  # b.jpg's pairing timeout
    (rig.inbox / "b.json").write_text("{}")  # its sidecar comes: a settle, and no timeout
    inbox.scan(5.0)
    assert inbox.next_wakeup(5.0) == pytest.approx(1.0)
    assert inbox.next_wakeup(6.5) is None  # settled: b.jpg + b.json are handed out by ready()
    assert inbox.next_wakeup(100.0) is None  # nothing for an entry that stays (preset.json)


def test_a_rescan_of_an_unchanged_inbox_redoes_no_pairing_work(rig: Rig) -> None:
    """The sorted queue and the pairing indexes are made when entries come, change or
    go, not at every look (issue 13: ~70 µs per queued file per job)."""
    for i in range(50):
        rig.drop_photo(f"w{i:02d}.jpg", seed=i)  # in inbox/ itself: they wait for sidecars
    inbox = Inbox(rig.hot, settle_s=1.0, pair_timeout_s=1000.0, has_preset=lambda n: False)
    inbox.scan(0.0)
    list(inbox.ready(2.0))
    order = inbox._order
    for t in range(3, 10):
        inbox.scan(float(t))
        assert list(inbox.ready(float(t))) == []
        assert inbox.waiting() == 50
        assert len(inbox.queue(float(t))) == 50
        inbox.next_wakeup(float(t))
    assert inbox._order is order, "the queue was sorted again, though nothing changed"
    inbox.forget(rig.inbox / "w00.jpg")
    assert inbox.waiting() == 49 and inbox._order is not order
    for i in range(50):
        (rig.inbox / f"w{i:02d}.jpg").unlink()
    rig.dropped = []


# ---------------------------------------------------------------- item 8: first in, first out


def _distinct_ctime(path: Path, probe: Path) -> None:
    """Wait (at most a clock tick, a few ms) until a file changed now gets a later change
    time than ``path``: file times come from the kernel's coarse clock. ``probe``, on the
    same filesystem outside the inbox, tells."""
    probe.touch()
    while os.lstat(probe).st_ctime_ns <= os.lstat(path).st_ctime_ns:
        os.utime(probe)


def _recording(service: Service, stop_after: int | None = None) -> list[str]:
    order: list[str] = []
    run = service.runner.run

    def record(claim: Claim, should_stop: Any) -> JobResult:
        order.append(claim.meta.source)
        result = run(claim, should_stop)
        if stop_after is not None and len(order) >= stop_after:
            service.request_stop()
        return result

    service.runner.run = record  # type: ignore[method-assign]
    return order


def _burst(rig: Rig, count: int, seed: int) -> list[str]:
    """``count`` photos in mixed places and with mixed presets (sidecar, folder
    preset.json, folder name), made in a random order; returns them in arrival order.
    Their names' order is not their arrival order."""
    (rig.inbox / "shoot").mkdir(parents=True)
    (rig.inbox / "shoot" / "preset.json").write_text(json.dumps({"extends": "one"}))
    places = ["one/", "one/2024/06/", "shoot/", ""]
    rels = [f"{places[i % 4]}p{i:02d}.png" for i in range(count)]
    random.Random(seed).shuffle(rels)
    for rel in rels:
        rig.drop_photo(rel, seed=len(rig.dropped), width=16, height=16)
        if "/" not in rel:  # in inbox/ itself: a sidecar, written after its photo
            rig.drop_json(rel.replace(".png", ".json"), {"extends": "one"})
        _distinct_ctime(rig.inbox / rel, rig.root / "tick")
    return rels


def test_a_burst_is_taken_first_in_first_out_across_folders_presets_and_a_restart(rig: Rig) -> None:
    arrival = _burst(rig, 40, seed=13)
    assert arrival != sorted(arrival) and arrival != sorted(arrival, key=lambda r: Path(r).name)
    # A photo copied with its old times kept (Finder, cp -p, rsync -t) arrived last and
    # is taken last: the order is by arrival, not by the photo's age.
    rig.drop_photo("one/old.png", seed=99, width=16, height=16)
    os.utime(rig.inbox / "one" / "old.png", (978_307_200, 978_307_200))  # 2001
    arrival.append("one/old.png")

    first = rig.make_service()
    order = _recording(first, stop_after=15)
    first.run()  # stops after 15 jobs: the rest waits for the next start
    second = rig.make_service()
    rest = _recording(second)
    assert second.run(once=True) == 0

    assert len(order) == 15 and order + rest == arrival
    rig.assert_nothing_lost(kept=("shoot/preset.json",))


def test_ready_and_queue_share_the_arrival_order_ties_by_name(rig: Rig) -> None:
    names = ["c.jpg", "a.jpg", "b.jpg"]
    for name in names:
        rig.drop_photo(f"tiny/{name}")
    same = os.lstat(rig.inbox / "tiny" / "c.jpg").st_ctime_ns
    inbox = Inbox(rig.hot, settle_s=1.0, pair_timeout_s=10.0, has_preset=lambda n: n == "tiny")
    inbox.scan(0.0)
    ready = [c.source for c in inbox.ready(1.0)]
    queue = [w.source for w in inbox.queue(1.0)]
    times = {n: os.lstat(rig.inbox / "tiny" / n).st_ctime_ns for n in names}
    expected = [f"tiny/{n}" for n in sorted(names, key=lambda n: (times[n], n))]
    assert ready == queue == expected
    if all(t == same for t in times.values()):
        assert ready == ["tiny/a.jpg", "tiny/b.jpg", "tiny/c.jpg"]  # one clock tick: by name
    for name in names:
        (rig.inbox / "tiny" / name).unlink()
    rig.dropped = []


def test_dangling_links_as_photo_and_as_sidecar_leave_the_inbox(rig: Rig, tmp_path: Path) -> None:
    entries = Entries(rig)
    (rig.inbox / "gone.jpg").symlink_to(tmp_path / "nowhere.jpg")
    entries.add("gone.jpg")
    rig.drop_json("gone.json", {"extends": "tiny"})
    entries.add("gone.json")
    rig.drop_photo("v.jpg", seed=6)
    entries.add("v.jpg")
    (rig.inbox / "v.json").symlink_to(tmp_path / "nowhere.json")
    entries.add("v.json")

    assert rig.serve() == 1

    assert rig.error("gone.jpg")["kind"] == "unsupported_file"
    assert rig.error("v.jpg")["kind"] == "unsupported_file"
    entries.assert_nothing_lost()


def test_a_dangling_sidecar_link_moves_with_its_photo(rig: Rig, tmp_path: Path,
                                                      caplog: pytest.LogCaptureFixture) -> None:
    entries = Entries(rig)
    rig.drop_photo("v.jpg", seed=6)
    entries.add("v.jpg")
    (rig.inbox / "v.json").symlink_to(tmp_path / "nowhere.json")
    entries.add("v.json")

    assert rig.serve() == 1

    assert "failed v.json" not in caplog.text and "originals still in it" not in caplog.text
    assert sorted(p.name for p in rig.hot.failed.iterdir()) == ["v.error.json", "v.jpg", "v.json"]
    entries.assert_nothing_lost()
