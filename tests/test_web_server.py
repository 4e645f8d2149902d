"""The page served by uvicorn on a real socket: the thread ``serve`` runs, the event
stream over HTTP, and what happens when the address is taken (SPEC §7: ``serve`` warns
and goes on, ``stylefold web`` exits 2)."""

from __future__ import annotations

import logging
import socket
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from stylefold.cli import main
from stylefold.config import Config
from stylefold.hotfolder.journal import Journal
from stylefold.hotfolder.layout import HotFolder
from stylefold.web.server import WebServer, start_in_thread

from .web.helpers import make_root, settings


@pytest.fixture
def config(tmp_path: Path) -> Config:
    return make_root(tmp_path)


@pytest.fixture
def server(config: Config) -> Iterator[WebServer]:
    web = WebServer(config, settings(config, "127.0.0.1:0"))
    web.start()
    try:
        yield web
    finally:
        web.stop()


def test_the_thread_serves_the_page_and_the_api(server: WebServer) -> None:
    page = httpx.get(server.url, timeout=10)
    assert page.status_code == 200 and "stylefold" in page.text
    assert httpx.get(f"{server.url}api/status", timeout=10).json()["running"] == []


def test_the_event_stream_delivers_a_job_start_over_http(server: WebServer, config: Config) -> None:
    journal = Journal(HotFolder(config.root).journal)
    received: list[str] = []
    with httpx.stream("GET", f"{server.url}api/events", timeout=20) as stream:
        assert stream.headers["content-type"].startswith("text/event-stream")
        lines = stream.iter_lines()
        assert next(lines).startswith("retry:")
        journal.start_attempt("18f0000000000000-0123abcd", name="a.jpg", source="tiny/a.jpg", sha256="0" * 64,
                              preset_key="k")
        for line in lines:
            received.append(line)
            if line.startswith("data:"):
                break
    assert "event: start" in received and '"source": "tiny/a.jpg"' in received[-1]


def test_serve_warns_and_goes_on_when_the_address_is_taken(config: Config, tmp_path: Path,
                                                           caplog: pytest.LogCaptureFixture) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with caplog.at_level(logging.INFO):
            assert start_in_thread(config, f"127.0.0.1:{port}") is None
        assert f"127.0.0.1:{port}" in caplog.text and "already in use" in caplog.text
        assert any(r.levelno == logging.WARNING for r in caplog.records)


def test_a_second_daemon_on_the_same_root_leaves_the_page_to_the_first(server: WebServer, config: Config,
                                                                       caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO):
        assert start_in_thread(config, f"127.0.0.1:{server.port}") is None
    assert "already served" in caplog.text and not any(r.levelno >= logging.WARNING for r in caplog.records)


def test_stylefold_web_exits_2_when_the_address_is_taken(server: WebServer, config: Config,
                                                         capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["web", "--root", str(config.root), "--listen", f"127.0.0.1:{server.port}"]) == 2
    assert "cannot serve the status page" in capsys.readouterr().err


def test_stylefold_web_without_a_hot_folder_exits_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["web", "--root", str(tmp_path / "none")]) == 2
    assert "stylefold init" in capsys.readouterr().err


def test_web_off_serves_nothing(config: Config) -> None:
    assert start_in_thread(config, "off") is None


def test_stylefold_web_serves_until_sigterm_then_exits_0(config: Config) -> None:
    """The command in this process: a timer asks the page for its status, then sends
    the SIGTERM that ends it."""
    import signal

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    answers: list[int] = []

    def ask_then_stop(*_: object) -> None:
        answers.append(httpx.get(f"http://127.0.0.1:{port}/api/status", timeout=10).status_code)
        signal.raise_signal(signal.SIGTERM)

    previous = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGINT, signal.SIGALRM)}
    try:
        signal.signal(signal.SIGALRM, ask_then_stop)
        signal.setitimer(signal.ITIMER_REAL, 1.5)
        assert main(["web", "--root", str(config.root), "--listen", f"127.0.0.1:{port}"]) == 0
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    assert answers == [200]
