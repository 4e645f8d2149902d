"""``stylefold serve`` as a real process: kill -9 and SIGTERM mid-job, two daemons on
one folder, and sd_notify over a real socket (SPEC §6.1, 6.3, 6.5, 6.6, 6.8).

Each test starts ``python -m stylefold serve`` on a ``tmp_path`` hot folder with random
weights at 32 px, drops real photos into the inbox (written outside it, then renamed
in) and asserts on outbox/, done/, failed/, the work folders, the journal and the log.
Waiting on the daemon is done by polling files or its log with a deadline, never by
sleeping a fixed time. Every process a test starts is killed at teardown if it still
runs.
"""

from __future__ import annotations

import csv
import json
import os
import re
import signal
import socket
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import pytest

from .conftest import write_photo

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="POSIX signals, flock and AF_UNIX")

T = TypeVar("T")

STYLE = "brushstrokes"  # the style the book preset (and so `tiny`) names
START_S = 90.0  # a serve process imports torch and builds VGG19 first (~3-5 s alone)
POLL_S = 0.02
_DAEMON_ENV = ("STYLEFOLD_ROOT", "STYLEFOLD_CONFIG", "STYLEFOLD_DEVICE", "STYLEFOLD_WEIGHTS",
               "NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID", "JOURNAL_STREAM")


# ---------------------------------------------------------------- helpers


def make_root(tmp_path: Path, steps: int, size: int = 32) -> Path:
    """A hot folder whose default preset is `tiny`: `steps` steps at `size` px."""
    root = tmp_path / "hot"
    (root / "presets").mkdir(parents=True)
    (root / "inbox").mkdir()
    (root / "stylefold.toml").write_text(
        'settle_s = 0.1\npair_timeout_s = 1\ncheckpoint_every = 2\n'
        'presets_dir = "presets"\ndefault_preset = "tiny"\n'
    )
    (root / "presets" / "tiny.json").write_text(json.dumps({"steps": steps, "size": size, "init": "content"}))
    return root


def drop(root: Path, name: str, seed: int = 0) -> bytes:
    """Write a photo outside the inbox, then rename it in (as `stylefold submit` and
    export tools do). Returns its bytes."""
    staging = root.parent / "staging"
    staging.mkdir(exist_ok=True)
    path = write_photo(staging / name, seed=seed)
    data = path.read_bytes()
    os.rename(path, root / "inbox" / name)
    return data


def wait_until(check: Callable[[], T], timeout: float, what: str, proc: Daemon | None = None) -> T:
    """Poll ``check`` until it returns something truthy; fail after ``timeout`` seconds,
    or as soon as ``proc`` has exited (with its log in the message)."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if proc is not None and proc.proc.poll() is not None:
            value = check()
            if value:
                return value
            pytest.fail(f"{proc.name} exited ({proc.proc.returncode}) before {what}:\n{proc.text()}")
        if time.monotonic() > deadline:
            log = f":\n{proc.text()}" if proc is not None else ""
            pytest.fail(f"timed out after {timeout:.0f} s waiting for {what}{log}")
        time.sleep(POLL_S)


@dataclass
class Daemon:
    name: str
    proc: subprocess.Popen[bytes]
    log: Path

    def text(self) -> str:
        return self.log.read_text(errors="replace")

    def wait_log(self, pattern: str, timeout: float = START_S) -> re.Match[str]:
        return wait_until(lambda: re.search(pattern, self.text()), timeout, f"{pattern!r} in {self.name}'s log", self)

    def wait_exit(self, timeout: float) -> int:
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            pytest.fail(f"{self.name} still running {timeout:.0f} s later:\n{self.text()}")


@dataclass
class Launcher:
    tmp_path: Path
    started: list[Daemon] = field(default_factory=list)

    def __call__(self, root: Path, name: str, *, once: bool = False, env: dict[str, str] | None = None) -> Daemon:
        environ = {k: v for k, v in os.environ.items() if k not in _DAEMON_ENV}
        environ.update(PYTHONUNBUFFERED="1", **(env or {}))
        log = self.tmp_path / f"{name}.log"
        argv = [sys.executable, "-m", "stylefold", "serve", "--root", str(root),
                "--weights", "random", "--device", "cpu", "--web", "off", *(["--once"] if once else [])]
        with log.open("wb") as out:  # the child keeps its own descriptor
            proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                                    env=environ, cwd=self.tmp_path)
        daemon = Daemon(name, proc, log)
        self.started.append(daemon)
        return daemon

    def cleanup(self) -> None:
        for daemon in self.started:
            if daemon.proc.poll() is None:
                daemon.proc.kill()
                daemon.proc.wait(30)


@pytest.fixture
def serve(tmp_path: Path) -> Iterator[Launcher]:
    launcher = Launcher(tmp_path)
    try:
        yield launcher
    finally:
        launcher.cleanup()


def files(folder: Path) -> list[str]:
    """Names of the non-hidden files directly in ``folder`` (temp files start with '.')."""
    if not folder.is_dir():
        return []
    return sorted(p.name for p in folder.iterdir() if p.is_file() and not p.name.startswith("."))


def inbox_files(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root / "inbox")) for p in (root / "inbox").rglob("*") if p.is_file())


def work_folders(root: Path) -> list[Path]:
    work = root / ".stylefold" / "work"
    return sorted(p for p in work.iterdir() if p.is_dir()) if work.is_dir() else []


def checkpoints(root: Path) -> list[Path]:
    return sorted((root / ".stylefold" / "work").glob("*/checkpoint.pt"))


def csv_steps(root: Path, base: str) -> list[int]:
    with (root / "outbox" / "logs" / f"{base}.losses.csv").open(newline="") as f:
        return [int(row["step"]) for row in csv.DictReader(f)]


def csv_elapsed(root: Path, base: str) -> list[float]:
    with (root / "outbox" / "logs" / f"{base}.losses.csv").open(newline="") as f:
        return [float(row["elapsed_s"]) for row in csv.DictReader(f)]


def journal(root: Path) -> list[dict[str, Any]]:
    conn = sqlite3.connect(root / ".stylefold" / "journal.db")
    try:
        conn.row_factory = sqlite3.Row
        return [dict(r) for r in conn.execute("SELECT source, state, attempts, output FROM jobs ORDER BY created")]
    finally:
        conn.close()


def problems(log: str) -> list[str]:
    """Log lines at WARNING or above, but for the one `--weights random` always logs."""
    return [line for line in log.splitlines()
            if re.search(r" (WARNING|ERROR|CRITICAL) |Traceback", line) and "using RANDOM VGG19 weights" not in line]


def mentions_notify(log: str, tmp_path: Path) -> bool:
    """Whether the log speaks of sd_notify (paths left out: test names contain "notify")."""
    return bool(re.search(r"notify|service manager|watchdog", log.replace(str(tmp_path), "TMP"), re.IGNORECASE))


# ---------------------------------------------------------------- kill -9 and SIGTERM


def test_kill_9_mid_job_then_restart_completes_the_job_exactly_once(tmp_path: Path, serve: Launcher) -> None:
    steps = 30
    root = make_root(tmp_path, steps)
    original = drop(root, "photo.jpg", seed=1)

    first = serve(root, "first")
    wait_until(lambda: checkpoints(root), START_S, "a checkpoint of the running job", first)
    first.proc.send_signal(signal.SIGKILL)
    assert first.wait_exit(30) == -signal.SIGKILL
    # The kill landed mid-job: the claim holds the original, nothing is published yet.
    (claim,) = work_folders(root)
    assert (claim / "original" / "photo.jpg").read_bytes() == original
    assert files(root / "outbox") == [] and files(root / "done") == [] and files(root / "failed") == []
    assert [(j["source"], j["state"], j["attempts"]) for j in journal(root)] == [("photo.jpg", "running", 1)]

    second = serve(root, "second", once=True)
    assert second.wait_exit(120) == 0, second.text()

    log = second.text()
    assert "resuming interrupted job" in log
    resumed = re.search(r"photo\.jpg: resuming at step (\d+)", log)
    assert resumed is not None and int(resumed.group(1)) >= 2, log
    assert files(root / "outbox") == [f"photo-{STYLE}.jpg"]
    assert not [n for n in files(root / "outbox" / "logs") if f"{STYLE}-2" in n]
    assert files(root / "done") == ["photo.jpg"]
    assert (root / "done" / "photo.jpg").read_bytes() == original
    assert files(root / "failed") == []
    assert inbox_files(root) == []
    assert work_folders(root) == []
    assert csv_steps(root, f"photo-{STYLE}") == list(range(1, steps + 1))
    (row,) = journal(root)
    assert row["state"] == "done" and row["attempts"] >= 2
    assert row["output"] == str(root / "outbox" / f"photo-{STYLE}.jpg")
    assert problems(log) == []


def test_sigterm_mid_job_checkpoints_exits_0_and_the_next_start_resumes(tmp_path: Path, serve: Launcher) -> None:
    steps = 30
    root = make_root(tmp_path, steps)
    original = drop(root, "photo.jpg", seed=2)

    first = serve(root, "first")
    wait_until(lambda: checkpoints(root), START_S, "a checkpoint of the running job", first)
    first.proc.send_signal(signal.SIGTERM)
    assert first.wait_exit(30) == 0, first.text()

    stopped = re.search(r"stopped photo\.jpg at step (\d+); it resumes from there at the next start", first.text())
    assert stopped is not None, first.text()
    stopped_at = int(stopped.group(1))
    assert 0 < stopped_at < steps
    (claim,) = work_folders(root)
    assert (claim / "checkpoint.pt").is_file()
    assert (claim / "original" / "photo.jpg").read_bytes() == original  # kept, not lost, not moved on
    assert files(root / "done") == [] and files(root / "failed") == [] and files(root / "outbox") == []
    assert inbox_files(root) == []
    (row,) = journal(root)
    assert row["state"] == "queued" and row["attempts"] == 0  # a warm stop is not a crash

    second = serve(root, "second", once=True)
    assert second.wait_exit(120) == 0, second.text()

    resumed = re.search(r"photo\.jpg: resuming at step (\d+)", second.text())
    assert resumed is not None, second.text()
    assert int(resumed.group(1)) == stopped_at  # the next step run is stopped_at + 1
    assert csv_steps(root, f"photo-{STYLE}") == list(range(1, steps + 1))
    elapsed = csv_elapsed(root, f"photo-{STYLE}")
    assert elapsed == sorted(elapsed)  # one run's clock across the resume
    assert files(root / "outbox") == [f"photo-{STYLE}.jpg"]
    assert files(root / "done") == ["photo.jpg"]
    assert (root / "done" / "photo.jpg").read_bytes() == original
    assert files(root / "failed") == []
    assert work_folders(root) == []
    (row,) = journal(root)
    assert row["state"] == "done" and row["attempts"] == 1
    assert problems(first.text()) == [] and problems(second.text()) == []


# ---------------------------------------------------------------- two daemons, one folder


def test_two_daemons_on_one_folder_process_each_file_exactly_once(tmp_path: Path, serve: Launcher) -> None:
    root = make_root(tmp_path, steps=3)
    # One thread each: two daemons of two threads on a 2-core machine oversubscribe it.
    a, b = (serve(root, name, env={"OMP_NUM_THREADS": "1"}) for name in ("a", "b"))
    a.wait_log(r"serving ")
    b.wait_log(r"serving ")

    names = [f"img{i}.jpg" for i in range(8)]
    originals = {name: drop(root, name, seed=10 + i) for i, name in enumerate(names)}  # distinct bytes
    wait_until(lambda: len(files(root / "done")) == 8, 120, "8 originals in done/", a)
    for daemon in (a, b):
        daemon.proc.send_signal(signal.SIGTERM)
    assert a.wait_exit(30) == 0, a.text()
    assert b.wait_exit(30) == 0, b.text()

    assert files(root / "outbox") == sorted(f"{Path(n).stem}-{STYLE}.jpg" for n in names)
    assert not [n for n in files(root / "outbox" / "logs") if f"{STYLE}-2" in n]
    assert files(root / "done") == sorted(names)
    assert all((root / "done" / n).read_bytes() == data for n, data in originals.items())
    assert files(root / "failed") == []
    assert inbox_files(root) == [] and work_folders(root) == []
    rows = journal(root)
    assert sorted(r["source"] for r in rows) == sorted(names)
    assert [r["state"] for r in rows] == ["done"] * 8
    started = {d.name: re.findall(r"job start (\S+) ", d.text()) for d in (a, b)}
    assert sorted(started["a"] + started["b"]) == sorted(names)  # nobody ran a job twice
    print(f"\nwork split: a ran {len(started['a'])} {started['a']}, b ran {len(started['b'])} {started['b']}; "
          f"lost races: a {a.text().count('taken by another process')}, b {b.text().count('taken by another process')}")
    assert problems(a.text()) == [] and problems(b.text()) == []


# ---------------------------------------------------------------- restart after a crash at the end of a job


def test_restart_after_a_crash_between_moving_the_original_and_removing_the_claim(
        tmp_path: Path, serve: Launcher) -> None:
    """kill -9 (or a power cut) after worker.run moved the original to done/ but before
    claim.finish() removed the work folder: the folder holds job.json and the job's own
    intermediate files, not the image. The restart must clean it up, not queue them."""
    root = make_root(tmp_path, steps=3)
    original = drop(root, "photo.jpg", seed=3)
    (root / "done").mkdir()
    os.rename(root / "inbox" / "photo.jpg", root / "done" / "photo.jpg")
    claim = root / ".stylefold" / "work" / "18ec0000000000aa-deadbeef"
    claim.mkdir(parents=True)
    (claim / "job.json").write_text(json.dumps({
        "source": "photo.jpg", "origin": {"kind": "default", "name": "tiny"},
        "name": "photo.jpg", "sidecar": None, "claimed_at": time.time()}))
    (claim / "lock").write_bytes(b"")
    write_photo(claim / "rendered.png", 32, 32)
    (claim / "rendered.json").write_text(json.dumps({"ext": ".jpg", "base": f"photo-{STYLE}", "rows": []}))
    (claim / "result.json").write_text(json.dumps({"base": f"photo-{STYLE}"}))
    (claim / "checkpoint.pt").write_bytes(b"not read here")

    daemon = serve(root, "restart", once=True)
    code = daemon.wait_exit(60)

    assert files(root / "done") == ["photo.jpg"]
    assert (root / "done" / "photo.jpg").read_bytes() == original
    assert files(root / "failed") == []
    assert inbox_files(root) == []
    assert work_folders(root) == []
    assert code == 0, daemon.text()


# ---------------------------------------------------------------- sd_notify


class NotifyListener:
    """A bound AF_UNIX datagram socket, as systemd's manager listens on NOTIFY_SOCKET.
    A thread records every datagram and, on READY=1, the daemon's log at that moment."""

    def __init__(self, tmp_path: Path, log: Path) -> None:
        self._dir = Path(tempfile.mkdtemp(prefix="sfn-"))  # sun_path holds at most 107 bytes
        self.address = str(self._dir / "notify.sock")
        self.log = log
        self.messages: list[str] = []
        self.log_at_ready: str | None = None
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self._sock.bind(self.address)
        self._sock.settimeout(0.2)
        self._closed = threading.Event()
        self._thread = threading.Thread(target=self._receive, daemon=True)
        self._thread.start()

    def _receive(self) -> None:
        while not self._closed.is_set():
            try:
                data = self._sock.recv(4096)
            except TimeoutError:
                continue
            except OSError:
                return
            for line in data.decode().splitlines():
                if line == "READY=1" and self.log_at_ready is None:
                    self.log_at_ready = self.log.read_text(errors="replace") if self.log.exists() else ""
                self.messages.append(line)

    def close(self) -> None:
        self._closed.set()
        self._thread.join(5)
        self._sock.close()
        for p in self._dir.iterdir():
            p.unlink()
        self._dir.rmdir()


def test_without_notify_socket_serve_works_and_says_nothing_of_it(tmp_path: Path, serve: Launcher) -> None:
    root = make_root(tmp_path, steps=3)
    drop(root, "photo.jpg", seed=4)
    daemon = serve(root, "plain", once=True, env={"WATCHDOG_USEC": "1000000"})  # no NOTIFY_SOCKET
    assert daemon.wait_exit(60) == 0, daemon.text()
    assert files(root / "outbox") == [f"photo-{STYLE}.jpg"]
    assert files(root / "done") == ["photo.jpg"]
    log = daemon.text()
    assert not mentions_notify(log, tmp_path), log
    assert problems(log) == []


def test_notify_socket_gets_ready_status_watchdog_and_stopping(tmp_path: Path, serve: Launcher) -> None:
    root = make_root(tmp_path, steps=3)
    drop(root, "photo.jpg", seed=5)  # waiting before the start: the startup scan must see it
    listener = NotifyListener(tmp_path, tmp_path / "notified.log")
    try:
        daemon = serve(root, "notified", env={"NOTIFY_SOCKET": listener.address, "WATCHDOG_USEC": "1000000"})
        daemon.wait_log(r"done photo\.jpg -> ")
        wait_until(lambda: "WATCHDOG=1" in listener.messages, 30, "WATCHDOG=1", daemon)
        daemon.proc.send_signal(signal.SIGTERM)
        assert daemon.wait_exit(30) == 0, daemon.text()
        wait_until(lambda: "STOPPING=1" in listener.messages, 10, "STOPPING=1")
    finally:
        listener.close()

    messages = listener.messages
    assert messages[0] == "READY=1", messages
    # READY=1 only once the model is built (its warning is logged by then) ...
    assert listener.log_at_ready is not None and "using RANDOM VGG19 weights" in listener.log_at_ready
    # ... and the startup scan is done: the first status counts the waiting photo.
    statuses = [m.removeprefix("STATUS=") for m in messages if m.startswith("STATUS=")]
    assert statuses and statuses[0] == "1 waiting", messages
    assert any("photo.jpg" in s for s in statuses), statuses
    assert "WATCHDOG=1" in messages
    assert messages[-1] == "STOPPING=1", messages
    assert messages.count("READY=1") == 1 and messages.count("STOPPING=1") == 1
    assert set(m.split("=", 1)[0] for m in messages) <= {"READY", "STATUS", "WATCHDOG", "STOPPING"}
    log = daemon.text()
    assert not mentions_notify(log, tmp_path), log  # no failed send reported
    assert problems(log) == []
