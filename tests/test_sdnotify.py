"""sd_notify over a real AF_UNIX datagram socket, as systemd's manager listens on it."""

from __future__ import annotations

import logging
import os
import shutil
import socket
import sys
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from stylefold.hotfolder.sdnotify import Notifier, WatchdogGate

pytestmark = pytest.mark.skipif(not hasattr(socket, "AF_UNIX"), reason="needs AF_UNIX sockets")


def _receiver(address: str | bytes) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(address)
    sock.settimeout(5)  # a datagram already sent is there at once; this only bounds a bug
    return sock


@pytest.fixture
def listener(tmp_path: Path) -> Iterator[tuple[socket.socket, str]]:
    """A bound notify socket at a filesystem path (sun_path holds at most 107 bytes)."""
    path = tmp_path / "notify.sock"
    short_dir = None
    if len(os.fsencode(path)) > 100:
        short_dir = Path(tempfile.mkdtemp(prefix="sfn-"))
        path = short_dir / "notify.sock"
    sock = _receiver(str(path))
    yield sock, str(path)
    sock.close()
    if short_dir is not None:
        shutil.rmtree(short_dir)


def test_messages_arrive_as_exact_datagrams(listener: tuple[socket.socket, str]) -> None:
    sock, path = listener
    notifier = Notifier.from_env({"NOTIFY_SOCKET": path, "WATCHDOG_USEC": "2000000"})
    assert notifier.enabled
    assert notifier.ready() is True
    assert notifier.status("queue 3 | IMG_0042.jpg step 120/300") is True
    assert notifier.watchdog() is True
    assert notifier.stopping() is True
    got = [sock.recv(4096) for _ in range(4)]
    assert got == [
        b"READY=1\n",
        b"STATUS=queue 3 | IMG_0042.jpg step 120/300\n",
        b"WATCHDOG=1\n",
        b"STOPPING=1\n",
    ]


def test_several_fields_go_in_one_datagram_and_newlines_cannot_inject(
    listener: tuple[socket.socket, str],
) -> None:
    sock, path = listener
    notifier = Notifier.from_env({"NOTIFY_SOCKET": path})
    assert notifier.notify(READY=1, STATUS="line one\nWATCHDOG=1") is True
    assert sock.recv(4096) == b"READY=1\nSTATUS=line one WATCHDOG=1\n"


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="abstract sockets are Linux-only")
def test_abstract_namespace_socket() -> None:
    name = f"stylefold-test-{uuid.uuid4().hex}"
    with _receiver(b"\0" + name.encode()) as sock:
        notifier = Notifier.from_env({"NOTIFY_SOCKET": "@" + name})
        assert notifier.ready() is True
        assert sock.recv(4096) == b"READY=1\n"


def test_without_notify_socket_everything_is_a_quiet_no_op(caplog: pytest.LogCaptureFixture) -> None:
    notifier = Notifier.from_env({"WATCHDOG_USEC": "2000000"})
    assert not notifier.enabled
    assert notifier.watchdog_interval_s is None
    with caplog.at_level(logging.DEBUG, logger="stylefold.hotfolder.sdnotify"):
        results = [notifier.ready(), notifier.status("x"), notifier.watchdog(), notifier.stopping(),
                    notifier.notify(READY=1)]
    assert results == [False] * 5
    assert caplog.records == []


def test_send_failure_is_logged_once_and_returns_false(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    notifier = Notifier.from_env({"NOTIFY_SOCKET": str(tmp_path / "gone.sock")})
    with caplog.at_level(logging.DEBUG, logger="stylefold.hotfolder.sdnotify"):
        results = [notifier.status(f"queue {n}") for n in range(3)]
    assert results == [False, False, False]
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1
    assert "gone.sock" in warnings[0].getMessage()


def test_watchdog_interval_is_half_of_watchdog_usec() -> None:
    notifier = Notifier.from_env({"NOTIFY_SOCKET": "/run/x", "WATCHDOG_USEC": "2000000",
                                  "WATCHDOG_PID": str(os.getpid())})
    assert notifier.watchdog_interval_s == 1.0


def test_watchdog_meant_for_another_process_is_off(listener: tuple[socket.socket, str]) -> None:
    sock, path = listener
    notifier = Notifier.from_env({"NOTIFY_SOCKET": path, "WATCHDOG_USEC": "2000000",
                                  "WATCHDOG_PID": str(os.getpid() + 1)})
    assert notifier.watchdog_interval_s is None
    assert notifier.watchdog() is False
    assert notifier.ready() is True  # the rest still works
    assert sock.recv(4096) == b"READY=1\n"


def test_watchdog_gate_opens_only_while_every_component_beats() -> None:
    gate = WatchdogGate(["watcher", "worker"], now=100.0)
    assert gate.healthy(now=100.0, max_silence_s=60)
    assert gate.healthy(now=160.0, max_silence_s=60)

    gate.beat("watcher", now=150.0)
    assert not gate.healthy(now=161.0, max_silence_s=60)  # worker silent since 100
    assert gate.stale(now=161.0, max_silence_s=60) == ["worker"]

    gate.beat("worker", now=162.0)
    assert gate.healthy(now=170.0, max_silence_s=60)
    assert gate.stale(now=300.0, max_silence_s=60) == ["watcher", "worker"]


def test_watchdog_gate_registers_components_on_first_beat() -> None:
    gate = WatchdogGate()
    assert gate.healthy(now=0.0, max_silence_s=1)  # nothing registered: open
    gate.beat("worker", now=10.0)
    assert gate.healthy(now=10.5, max_silence_s=1)
    assert not gate.healthy(now=12.0, max_silence_s=1)
