"""When the disk, the folders or the names turn hostile (issue 13, items 1, 3, 5, 7).

Real filesystems: a tmpfs of a few hundred KiB that the test fills, a read-only tmpfs
for done/, done/ and failed/ on a filesystem of their own (moves become copies). They
need root (mount); without it those tests skip, saying so. CI runs as root. Each test
ends with the nothing-lost check of promise 1.
"""

from __future__ import annotations

import errno
import json
import logging
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from stylefold import fsops
from stylefold.cli import configure_logging
from stylefold.hotfolder import claims, waits
from stylefold.hotfolder import service as service_module
from stylefold.hotfolder.journal import Journal
from stylefold.hotfolder.service import Service
from stylefold.names import fit, printable

from .test_hotfolder import Rig, _logs, _no_environment, _one_torch_thread  # noqa: F401
from .test_serve_process import Launcher, make_root, wait_until
from .test_serve_process import drop as drop_renamed
from .test_serve_process import serve as serve


@pytest.fixture
def rig(tmp_path: Path, extractor: Any) -> Rig:
    return Rig(tmp_path, extractor)


# ---------------------------------------------------------------- real small filesystems


def _can_mount() -> str | None:
    """None if this process can mount a tmpfs, else why not."""
    if sys.platform != "linux":
        return "needs Linux (tmpfs)"
    if os.geteuid() != 0:
        return "needs root to mount a small tmpfs (CI runs as root)"
    return None


@pytest.fixture
def mount(tmp_path: Path) -> Iterator[Callable[..., Path]]:
    """``mount(path, size="256k", ro=False)``: a fresh tmpfs at ``path`` (created), gone
    at teardown."""
    why = _can_mount()
    if why:
        pytest.skip(why)
    mounted: list[Path] = []

    def do_mount(path: Path, size: str = "256k", ro: bool = False) -> Path:
        path.mkdir(parents=True, exist_ok=True)
        options = f"size={size}" + (",ro" if ro else "")
        result = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(path)],
                                capture_output=True, text=True)
        if result.returncode != 0:
            pytest.skip(f"cannot mount a tmpfs here: {result.stderr.strip()}")
        mounted.append(path)
        return path

    try:
        yield do_mount
    finally:
        for path in reversed(mounted):
            subprocess.run(["umount", "-l", str(path)], capture_output=True)


def fill(folder: Path) -> Path:
    """Fill the filesystem of ``folder`` to the last byte; returns the filler file."""
    filler = folder / ".filler"
    with filler.open("wb", buffering=0) as f:
        for size in (1 << 16, 4096, 1):  # then the last partial block
            try:
                while True:
                    f.write(b"\0" * size)
            except OSError as exc:
                assert exc.errno == errno.ENOSPC
    return filler


def full_outbox(rig: Rig, mount: Callable[..., Path]) -> Path:
    """Make ``outbox/`` a small filesystem of its own, full; returns the filler file."""
    outbox = rig.hot.outbox
    for child in list(outbox.iterdir()):
        child.rmdir()
    mount(outbox, size="64k")
    (outbox / "logs").mkdir()
    return fill(outbox)


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def drive(service: Service, until: Callable[[], bool], timeout: float = 60.0, step_s: float = 0.02) -> None:
    """Turn the service's loop by hand (``run_once``) until ``until()`` or the timeout."""
    service.watcher.start()
    try:
        deadline = time.monotonic() + timeout
        while not until():
            if time.monotonic() > deadline:
                pytest.fail("timed out driving the service")
            if not service.run_once():
                time.sleep(step_s)
    finally:
        service.watcher.stop()


def messages(caplog: pytest.LogCaptureFixture, pattern: str) -> list[str]:
    return [r.getMessage() for r in caplog.records if re.search(pattern, r.getMessage())]


# ---------------------------------------------------------------- item 1: disk full


def test_full_disk_leaves_the_inbox_untouched_leaks_nothing_and_goes_on_once_there_is_room(
        tmp_path: Path, extractor: Any, mount: Callable[..., Path], caplog: pytest.LogCaptureFixture,
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(waits, "DISK_RETRY_S", 0.2)
    monkeypatch.setattr(service_module, "DISK_RETRY_S", 0.2)
    monkeypatch.setattr(service_module, "TROUBLE_PAUSE_S", 0.2)
    root_fs = mount(tmp_path / "fs", size="16m")
    on_small = Rig(root_fs / "x", extractor)
    service = on_small.make_service()
    dropped = {f"tiny/p{i}.jpg": on_small.drop_photo(f"tiny/p{i}.jpg", seed=i) for i in range(3)}
    filler = fill(on_small.root)
    fds = open_fds()

    # Many turns of the loop against the full disk: every claim fails and undoes itself.
    deadline = time.monotonic() + 2.0
    drive(service, lambda: time.monotonic() > deadline)
    assert open_fds() <= fds + 2, "a failed claim must release what it opened"
    assert on_small.inbox_files() == sorted(dropped), "the photos wait in the inbox"
    for rel, data in dropped.items():
        assert (on_small.inbox / rel).read_bytes() == data, "untouched"
    assert [p.name for p in on_small.hot.work.iterdir()] == [], "no half-built claim is left"
    full = messages(caplog, r"^disk full")
    assert len(full) == 1, f"said once, not at every try: {full}"
    assert "free of" in full[0] and str(on_small.hot.work) in full[0], full[0]

    filler.unlink()  # room again: the jobs start by themselves, no restart
    drive(service, lambda: len(on_small.done()) == 3)
    assert messages(caplog, r"^disk space is back"), "and says so"
    assert not [r for r in caplog.records if r.exc_info], "no traceback"
    on_small.assert_nothing_lost()
    assert len(on_small.results()) == 3


def test_full_outbox_makes_the_finished_job_wait_then_publishes_it_once(
        tmp_path: Path, rig: Rig, mount: Callable[..., Path], caplog: pytest.LogCaptureFixture,
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(waits, "DISK_RETRY_S", 0.2)
    filler = full_outbox(rig, mount)
    service = rig.make_service()
    rig.drop_photo("tiny/a.jpg")
    drive(service, lambda: len(service.parking) == 1)
    deadline = time.monotonic() + 1.0  # a few more tries against the full disk
    drive(service, lambda: time.monotonic() > deadline)
    journal = Journal(rig.hot.journal)
    attempts_while_full = [r.attempts for r in journal.by_state(journal_state("queued"))]
    assert rig.inbox_files() == [] and rig.done() == [], "the claim holds the photo while it waits"
    assert len(messages(caplog, r"^disk full")) == 1
    assert "outbox" in messages(caplog, r"^disk full")[0]

    filler.unlink()
    drive(service, lambda: rig.done() == ["tiny/a.jpg"])
    assert rig.results() == ["a-tex.jpg"], "one result, not a -2"
    assert attempts_while_full == [0], "waiting for room does not count towards poison"
    rig.assert_nothing_lost()


class CountingNotifier:
    """sd_notify as the service sees it, counting what it is told."""

    watchdog_interval_s = 0.1

    def __init__(self) -> None:
        self.pings: list[float] = []
        self.statuses: list[str] = []

    def ready(self) -> bool:
        return True

    def status(self, text: str) -> bool:
        self.statuses.append(text)
        return True

    def watchdog(self) -> bool:
        self.pings.append(time.monotonic())
        return True

    def stopping(self) -> bool:
        return True


def test_the_watchdog_is_fed_while_a_job_waits_for_room(
        rig: Rig, mount: Callable[..., Path], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(waits, "DISK_RETRY_S", 0.3)
    filler = full_outbox(rig, mount)
    notifier = CountingNotifier()
    service = rig.make_service()
    service.notifier = notifier
    rig.drop_photo("tiny/a.jpg")
    loop = threading.Thread(target=service.run)
    loop.start()
    try:
        wait_until(lambda: len(service.parking) == 1, 60, "the job to wait for room")
        parked_at = time.monotonic()
        wait_until(lambda: time.monotonic() - parked_at > 1.5, 5, "a while")
        pings = [t for t in notifier.pings if t > parked_at]
        assert len(pings) >= 5, f"WATCHDOG=1 every 0.1 s while waiting, got {len(pings)} in 1.5 s"
        assert any("waiting for disk space" in s for s in notifier.statuses)
        filler.unlink()
        wait_until(lambda: rig.done() == ["tiny/a.jpg"], 30, "the job to finish once there is room")
    finally:
        service.request_stop()
        loop.join(30)
    assert rig.results() == ["a-tex.jpg"]
    rig.assert_nothing_lost()


def journal_state(name: str) -> Any:
    from stylefold.hotfolder.journal import JobState

    return JobState(name)


# ---------------------------------------------------------------- item 3: other filesystems


def test_done_and_failed_on_another_filesystem_get_complete_copies(
        tmp_path: Path, rig: Rig, mount: Callable[..., Path]) -> None:
    mount(rig.hot.done, size="4m")
    mount(rig.hot.failed, size="4m")
    good = rig.drop_photo("tiny/good.jpg")
    rig.drop_json("tiny/good.json", {"extends": "tiny", "steps": 2})
    rig.drop("tiny/bad.jpg", b"not a jpeg at all")
    assert rig.serve() == 1  # one job failed
    assert rig.done() == ["tiny/good.jpg", "tiny/good.json"]
    assert (rig.hot.done / "tiny/good.jpg").read_bytes() == good
    assert rig.failed() == ["tiny/bad.jpg"]
    assert rig.error("tiny/bad.jpg")["kind"] == "unreadable_image"
    assert not [p for p in rig.hot.done.rglob(".*")], "no temporary copy left in done/"
    rig.assert_nothing_lost()


class Crash(BaseException):
    """The process dies here (not an Exception: nothing in the daemon catches it)."""


def _drop_claim_locks(hot_work: Path) -> None:
    """What the kernel does to a killed process's flocks: close every lock descriptor."""
    for fd in os.listdir("/proc/self/fd"):
        try:
            target = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            continue
        if target.startswith(str(hot_work)) and target.endswith("/lock"):
            os.close(int(fd))


@pytest.mark.parametrize("crash_after_copy", [True, False], ids=["after-copy", "before-copy"])
def test_crash_during_a_move_to_another_filesystem_leaves_one_original(
        tmp_path: Path, rig: Rig, mount: Callable[..., Path], monkeypatch: pytest.MonkeyPatch,
        crash_after_copy: bool) -> None:
    mount(rig.hot.done, size="4m")
    data = rig.drop_photo("tiny/a.jpg")
    rig.drop_json("tiny/a.json", {"extends": "tiny", "steps": 2})
    copy = fsops._copy_across

    def copy_then_die(src: Path, target: Path) -> None:
        if crash_after_copy:
            copy(src, target)
        _drop_claim_locks(rig.hot.work)
        raise Crash

    monkeypatch.setattr(fsops, "_copy_across", copy_then_die)
    with pytest.raises(Crash):
        rig.serve()
    monkeypatch.setattr(fsops, "_copy_across", copy)
    claimed = list(rig.hot.work.glob("*/original/a.jpg"))
    assert len(claimed) == 1, "the source is still in its claim"
    assert (rig.hot.done / "tiny/a.jpg").exists() is crash_after_copy

    assert rig.serve() == 0  # the restart
    assert rig.done() == ["tiny/a.jpg", "tiny/a.json"], "one original, never two, never none"
    assert (rig.hot.done / "tiny/a.jpg").read_bytes() == data
    assert rig.results() == ["a-tex.jpg"], "one result"
    rig.assert_nothing_lost()


# ---------------------------------------------------------------- item 5: refused moves, names


def test_read_only_done_never_stops_the_daemon_other_jobs_run_and_poison_sets_it_aside(
        tmp_path: Path, rig: Rig, mount: Callable[..., Path], monkeypatch: pytest.MonkeyPatch,
        caplog: pytest.LogCaptureFixture) -> None:
    monkeypatch.setattr(waits, "FIRST_RETRY_S", 0.05)
    monkeypatch.setattr(waits, "MAX_RETRY_S", 0.05)
    mount(rig.hot.done / "tiny", ro=True)
    rig.drop_photo("tiny/a.jpg", seed=1)
    rig.drop_photo("b.jpg", seed=2)
    service = rig.make_service(default_preset="tiny")
    drive(service, lambda: rig.failed() == ["tiny/a.jpg"] and rig.done() == ["b.jpg"])
    body = rig.error("tiny/a.jpg")
    assert "could not be finished in 3 tries" in body["error"], body
    assert "Read-only file system" in body["error"], body
    assert sorted(rig.results()) == ["a-tex.jpg", "b-tex.jpg"], "each photo rendered once, never a -2"
    waiting = messages(caplog, r"^waiting tiny/a\.jpg")
    assert len(waiting) == 1, f"the wait is said once, not at every try: {waiting}"
    assert not [r for r in caplog.records if r.exc_info], "no traceback"
    rig.assert_nothing_lost()


def test_a_255_byte_name_keeps_its_name_and_its_error_file_is_shortened(rig: Rig) -> None:
    long_stem = "写真" * 41 + "wxyz"  # 250 bytes: with ".jpg" 254, "-2.jpg" 256, ".error.json" 261
    good, bad = f"tiny/{long_stem}.jpg", f"tiny/{long_stem[:-1]}y.jpg"
    rig.drop_photo(good)
    rig.drop(bad, b"garbage")
    (rig.hot.failed / "tiny").mkdir(parents=True)
    (rig.hot.failed / bad).write_bytes(b"an older file of that name")
    rig.record(bad, b"an older file of that name")
    assert rig.serve() == 1
    assert rig.done() == [good], "the original keeps its bytes and its name"
    failed = rig.failed()
    assert bad in failed and len(failed) == 2
    renamed = next(n for n in failed if n != bad)
    assert len(os.fsencode(Path(renamed).name)) <= 255 and renamed.endswith("-2.jpg"), renamed
    error_files = [p for p in (rig.hot.failed / "tiny").iterdir() if p.name.endswith(".error.json")]
    assert len(error_files) == 1 and len(os.fsencode(error_files[0].name)) <= 255
    assert json.loads(error_files[0].read_text())["file"] == Path(renamed).name
    rig.assert_nothing_lost()


def test_newline_and_escape_in_a_name_reach_neither_the_log_nor_the_outputs_raw(
        rig: Rig, capsys: pytest.CaptureFixture[str]) -> None:
    name = "tiny/a\nINFO forged line\x1b[31m.jpg"
    rig.drop_photo(name)
    configure_logging()
    try:
        assert rig.serve() == 0
    finally:
        root = logging.getLogger()
        for handler in [h for h in root.handlers if getattr(h, "_stylefold", False)]:
            root.removeHandler(handler)
    err = capsys.readouterr().err
    assert "\x1b" not in err and "\nINFO forged line" not in err
    assert printable("a\nINFO forged line\x1b[31m") in err, err
    assert rig.done() == [name], "the original keeps its name"
    assert rig.results() == ["a_INFO forged line_[31m-tex.jpg"]
    logs = sorted(p.name for p in rig.hot.logs.iterdir())
    assert all("\n" not in n and "\x1b" not in n for n in logs) and len(logs) >= 3, logs
    rig.assert_nothing_lost()


def test_fit_cuts_names_at_a_character_boundary() -> None:
    for limit in range(1, 40):
        for stem in ("é" * 30, "写" * 30, "😀" * 30, "a" * 60):
            cut = fit(stem, "", limit=limit)
            assert len(os.fsencode(cut)) <= limit and len(os.fsencode(cut)) > limit - 4
            cut.encode("utf-8")  # whole characters only
    assert fit("x" * 300, "-2.jpg").endswith("-2.jpg") and len(fit("x" * 300, "-2.jpg")) == 255
    assert printable("a\u202eb\x00") == "a\\u202eb\\x00"


def test_a_claim_that_fails_leaves_nothing_open_or_behind(rig: Rig, monkeypatch: pytest.MonkeyPatch) -> None:
    rig.drop_photo("tiny/a.jpg")
    from stylefold.hotfolder.origins import DefaultPreset

    def no_space(self: Any) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(claims.Claim, "save_meta", no_space)
    before = open_fds()
    for _ in range(50):
        with pytest.raises(OSError):
            claims.claim(rig.hot, rig.inbox / "tiny/a.jpg", None, "tiny/a.jpg", DefaultPreset(name="tiny"))
    assert open_fds() == before
    assert list(rig.hot.work.iterdir()) == []
    assert (rig.inbox / "tiny/a.jpg").is_file()


# ---------------------------------------------------------------- item 7: signals


def test_sighup_is_ignored_with_a_line_and_sigquit_stops_like_sigterm(tmp_path: Path, serve: Launcher) -> None:
    root = make_root(tmp_path, steps=2)
    daemon = serve(root, "serve")
    daemon.wait_log("serving ")
    daemon.proc.send_signal(signal.SIGHUP)
    daemon.wait_log("SIGHUP ignored")
    data = drop_renamed(root, "after-hup.jpg")
    wait_until(lambda: (root / "done" / "after-hup.jpg").is_file(), 60, "the job after SIGHUP", daemon)
    assert (root / "done" / "after-hup.jpg").read_bytes() == data
    time.sleep(1.0)  # idle now: asleep until its next timer (scan_interval_s, 30 s)
    asked = time.monotonic()
    daemon.proc.send_signal(signal.SIGQUIT)
    assert daemon.wait_exit(60) == 0
    assert time.monotonic() - asked < 10, "the signal ends the idle sleep; it does not wait for the next timer"
    assert "stopped:" in daemon.text() and "Traceback" not in daemon.text()


def test_waits_module_says_sizes_for_people() -> None:
    assert waits.human_size(512) == "512 B" and waits.human_size(3 << 20) == "3.0 MiB"
    parking = waits.Parking()
    delay, first = parking.park("j", 0.0, disk_full=False)
    assert first and delay == waits.FIRST_RETRY_S and not parking.due("j", 1.0)
    delay, first = parking.park("j", 0.0, disk_full=False)
    assert not first and delay == 2 * waits.FIRST_RETRY_S
    assert parking.park("k", 0.0, disk_full=True)[0] == waits.DISK_RETRY_S
    assert parking.next_due() == waits.DISK_RETRY_S
    parking.release("k")
    parking.release("j")
    assert parking.next_due() is None and len(parking) == 0



def test_a_command_on_a_full_disk_says_so_in_a_sentence(
        tmp_path: Path, mount: Callable[..., Path], capsys: pytest.CaptureFixture[str]) -> None:
    from stylefold.cli import main

    fs = mount(tmp_path / "fs", size="64k")
    fill(fs)
    assert main(["init", str(fs / "studio")]) == 1
    err = capsys.readouterr().err
    assert "No space left on device" in err and "Traceback" not in err, err
