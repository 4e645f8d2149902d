"""sd_notify(3) spoken directly: a few lines over the ``NOTIFY_SOCKET`` datagram socket.

No libsystemd, no torch. Without ``NOTIFY_SOCKET`` (a terminal, tests, another init)
every call is a no-op returning False. A failed send is logged once per distinct error,
never raised: losing a STATUS line must not kill a job, but a READY=1 that never
arrives should be visible in the journal next to systemd's start timeout.
"""

from __future__ import annotations

import logging
import os
import re
import socket
import threading
import time
from collections.abc import Iterable, Mapping

__all__ = ["Notifier", "WatchdogGate"]

logger = logging.getLogger(__name__)

_KEY = re.compile(r"^[A-Z][A-Z0-9_]*$")
# A blocking send to a full notify queue must not hang the daemon forever.
_SEND_TIMEOUT_S = 2.0


class Notifier:
    """Sends ``KEY=value`` lines to the service manager (``Type=notify`` units)."""

    def __init__(self, address: str | None, watchdog_usec: int | None = None) -> None:
        self._address = address or None
        self._watchdog_usec = watchdog_usec if watchdog_usec and watchdog_usec > 0 else None
        self._reported: set[str] = set()
        self._lock = threading.Lock()

    @classmethod
    def from_env(cls, environ: Mapping[str, str] = os.environ) -> Notifier:
        """``NOTIFY_SOCKET``: a path or ``@abstract`` name. ``WATCHDOG_USEC`` counts only
        when ``WATCHDOG_PID`` is unset or names this process (sd_watchdog_enabled(3))."""
        usec: int | None = None
        raw_usec, raw_pid = environ.get("WATCHDOG_USEC"), environ.get("WATCHDOG_PID")
        try:
            if raw_usec and (not raw_pid or int(raw_pid) == os.getpid()):
                usec = int(raw_usec)
        except ValueError:
            logger.warning("ignoring the watchdog: WATCHDOG_USEC=%r WATCHDOG_PID=%r", raw_usec, raw_pid)
        return cls(environ.get("NOTIFY_SOCKET"), usec)

    @property
    def enabled(self) -> bool:
        return self._address is not None

    @property
    def watchdog_interval_s(self) -> float | None:
        """Half of ``WATCHDOG_USEC``, as sd_watchdog_enabled(3) recommends; None if off."""
        if self._address is None or self._watchdog_usec is None:
            return None
        return self._watchdog_usec / 2e6

    def ready(self) -> bool:
        return self.notify(READY=1)

    def status(self, text: str) -> bool:
        return self.notify(STATUS=text)

    def watchdog(self) -> bool:
        """Keep-alive; sent only when the manager asked for it (``WATCHDOG_USEC``)."""
        if self.watchdog_interval_s is None:
            return False
        return self.notify(WATCHDOG=1)

    def stopping(self) -> bool:
        return self.notify(STOPPING=1)

    def notify(self, **fields: object) -> bool:
        """Send ``fields`` as one datagram; True if it was sent. Never raises."""
        if self._address is None or not fields:
            return False
        bad = [key for key in fields if not _KEY.match(key)]
        if bad:
            self._report(f"invalid sd_notify field names {bad}")
            return False
        # One field per line: a newline inside a value would start a bogus field.
        payload = "".join(f"{k}={str(v).replace(chr(10), ' ')}\n" for k, v in fields.items())
        address = "\0" + self._address[1:] if self._address.startswith("@") else self._address
        if not address.startswith(("/", "\0")):
            self._report(f"unsupported NOTIFY_SOCKET address {self._address!r} (want a path or @name)")
            return False
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
                sock.settimeout(_SEND_TIMEOUT_S)
                sock.sendto(payload.encode(), address)
        except (OSError, ValueError) as exc:
            self._report(f"sd_notify to {self._address} failed: {type(exc).__name__}: {exc}")
            return False
        return True

    def _report(self, message: str) -> None:
        with self._lock:
            first = message not in self._reported
            self._reported.add(message)
        if first:
            logger.warning("%s (the service manager may miss READY/STATUS/WATCHDOG)", message)
        else:
            logger.debug("%s (again)", message)


class WatchdogGate:
    """Decides whether WATCHDOG=1 may be sent: only while every component moves.

    Each component ("watcher", "worker") calls ``beat()`` whenever it makes progress:
    the watcher after each event batch or scan, the worker after each optimisation step
    and each idle poll of the queue. A component counts from its registration, so a
    fresh one is not stale. With no component registered the gate is open.
    """

    def __init__(self, components: Iterable[str] = (), now: float | None = None) -> None:
        self._lock = threading.Lock()
        self._last: dict[str, float] = {}
        for name in components:
            self.beat(name, now)

    def beat(self, component: str, now: float | None = None) -> None:
        with self._lock:
            self._last[component] = time.monotonic() if now is None else now

    def stale(self, now: float | None = None, max_silence_s: float = 60.0) -> list[str]:
        """Components silent for longer than ``max_silence_s``, most silent first."""
        at = time.monotonic() if now is None else now
        with self._lock:
            silent = {name: at - last for name, last in self._last.items() if at - last > max_silence_s}
        return sorted(silent, key=silent.__getitem__, reverse=True)

    def healthy(self, now: float | None = None, max_silence_s: float = 60.0) -> bool:
        return not self.stale(now, max_silence_s)
