"""Serving the app with uvicorn: in a thread beside the daemon (``serve``), or alone in
the foreground (``stylefold web``). The socket is bound here first, so an address
already in use is known before anything starts (SPEC §7: ``serve`` warns and goes on,
``web`` exits 2)."""

from __future__ import annotations

import errno
import logging
import socket
import threading
from typing import Any

from ..config import Config
from .settings import WebSettings

__all__ = ["AddressInUse", "WebServer", "bind"]

logger = logging.getLogger(__name__)


class AddressInUse(OSError):
    """The listen address is taken (another daemon on this box serves it) or refused."""


def bind(settings: WebSettings) -> socket.socket:
    family = socket.AF_INET6 if ":" in settings.host else socket.AF_INET
    try:
        infos = socket.getaddrinfo(settings.host, settings.port, family if ":" in settings.host else 0,
                                   socket.SOCK_STREAM)
    except socket.gaierror as exc:
        raise AddressInUse(errno.EADDRNOTAVAIL, f"cannot resolve {settings.host}: {exc}") from None
    family, kind, proto, _, address = infos[0]
    # proto IPPROTO_TCP, not 0: asyncio sets TCP_NODELAY only on sockets that say they
    # are TCP; without it every answer waited 40 ms for a delayed ACK (Nagle).
    sock = socket.socket(family, kind, proto or socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind(address)
        sock.listen(128)
    except OSError as exc:
        sock.close()
        raise AddressInUse(exc.errno, f"{settings.host}:{settings.port}: {exc.strerror}") from None
    sock.set_inheritable(True)
    return sock


class WebServer:
    """uvicorn on a socket bound beforehand. ``start()`` runs it in a daemon thread;
    ``run()`` in the calling thread (then uvicorn handles SIGINT/SIGTERM itself)."""

    def __init__(self, config: Config, settings: WebSettings) -> None:
        import uvicorn

        from .app import create_app

        self.settings = settings
        self.sock = bind(settings)
        self.port = self.sock.getsockname()[1]
        app = create_app(config, settings)
        self._server = uvicorn.Server(uvicorn.Config(
            app, log_level="warning", access_log=False, lifespan="off", proxy_headers=False,
            server_header=False, date_header=True, timeout_graceful_shutdown=2))
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        shown = f"[{self.settings.host}]" if ":" in self.settings.host else self.settings.host
        return f"http://{shown}:{self.port}/"

    def start(self) -> None:
        self._thread = threading.Thread(target=self._serve, name="stylefold-web", daemon=True)
        self._thread.start()

    def run(self) -> None:
        self._serve()

    def _serve(self) -> None:
        try:
            self._server.run(sockets=[self.sock])
        except Exception:  # the page must never take the daemon down with it
            logger.exception("the status page stopped")

    def stop(self, timeout: float = 5.0) -> None:
        self._server.should_exit = True
        if self._thread is not None:
            self._thread.join(timeout)
        self.sock.close()


def start_in_thread(config: Config, listen: str | None) -> Any:
    """For ``serve``: the started server, or None when off or the address is taken
    (warned; the daemon goes on without the page)."""
    if (listen or config.web.listen).strip().lower() == "off":
        return None
    settings = WebSettings.from_config(config, listen)
    try:
        server = WebServer(config, settings)
    except AddressInUse as exc:
        if _serves_root(settings, config):
            # One daemon per GPU on one root: the first serves the page, which shows all.
            logger.info("status page of this root already served at %s by another process", settings.url)
        else:
            logger.warning("status page not started: %s is already in use (another daemon on this box serves "
                           "it?); going on without it (%s)", settings.url, exc.strerror)
        return None
    server.start()
    logger.info("status page at %s", server.url)
    return server


def _serves_root(settings: WebSettings, config: Config) -> bool:
    """Whether the server on that address is stylefold's page of this very root."""
    import http.client
    import json

    host = "127.0.0.1" if settings.host in ("0.0.0.0", "localhost") else settings.host
    if host == "::":
        host = "::1"
    conn = http.client.HTTPConnection(host, settings.port, timeout=2.0)
    try:
        headers = {"Host": "localhost", "X-Stylefold": "1"}
        if settings.token:
            headers["Authorization"] = f"Bearer {settings.token}"
        conn.request("GET", "/api/status", headers=headers)
        reply = conn.getresponse()
        body = json.loads(reply.read(8 << 20)) if reply.status == 200 else {}
    except (OSError, ValueError):
        return False
    finally:
        conn.close()
    return isinstance(body, dict) and body.get("root") == str(config.root.absolute())
