"""A worker's heartbeat: its record in ``workers`` and the lease on the job it runs.

One daemon thread renews both every ``lease_s / 4``. It also tells the running job to
stop (``should_stop``) when the job is no longer this worker's: the coordinator asked
(``cancel``), gave the job another delivery, or another worker holds the lease.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import threading
import time
from dataclasses import dataclass, field
from typing import Any

import redis

from .protocol import WORKERS_SET, Keys, text, worker_key

__all__ = ["Heartbeat", "Running"]

logger = logging.getLogger(__name__)


@dataclass
class Running:
    """The job a worker runs now, as its lease names it."""

    keys: Keys
    job_id: str
    delivery: str
    source: str
    lease_value: str
    stop: threading.Event = field(default_factory=threading.Event)
    why_stop: str = ""


@dataclass
class Heartbeat:
    client: redis.Redis
    name: str
    info: dict[str, Any]
    lease_s: float
    running: Running | None = None
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _quit: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    @property
    def lease_ms(self) -> int:
        return int(self.lease_s * 1000)

    def start(self) -> None:
        self.beat()
        self._thread = threading.Thread(target=self._loop, name="stylefold-heartbeat", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._quit.set()
        try:
            self.client.srem(WORKERS_SET, self.name)
            self.client.delete(worker_key(self.name))
        except redis.RedisError:
            pass

    def acquire(self, running: Running) -> bool:
        """Take the job's lease; False if another worker holds it."""
        keys = running.keys
        if not self.client.set(keys.lease, running.lease_value, nx=True, px=self.lease_ms):
            held = self.client.get(keys.lease)
            if held is None or text(held) != running.lease_value:
                return False
            self.client.pexpire(keys.lease, self.lease_ms)
        with self._lock:
            self.running = running
        self._record()
        return True

    def release(self) -> None:
        with self._lock:
            running, self.running = self.running, None
        if running is not None:
            try:
                held = self.client.get(running.keys.lease)
                if held is not None and text(held) == running.lease_value:
                    self.client.delete(running.keys.lease)
            except redis.RedisError as exc:
                logger.warning("could not release the lease of %s (%s); it lapses by itself", running.job_id, exc)
        self._record()

    def _loop(self) -> None:
        while not self._quit.wait(self.lease_s / 4):
            try:
                self.beat()
            except redis.RedisError as exc:  # a broker restart: the next beat tries again
                logger.warning("heartbeat failed (%s); trying again", exc)
            except Exception:
                logger.exception("heartbeat failed")

    def beat(self) -> None:
        with self._lock:
            running = self.running
        if running is not None:
            self._renew(running)
        self._record()

    def _renew(self, running: Running) -> None:
        keys, value = running.keys, running.lease_value
        client = self.client
        # SET NX re-creates a lease a broker lost with its data; then only ours is renewed.
        if not client.set(keys.lease, value, nx=True, px=self.lease_ms):
            held = client.get(keys.lease)
            if held is not None and text(held) != value:
                self._lose(running, f"another worker holds its lease ({text(held)})")
                return
            client.pexpire(keys.lease, self.lease_ms)
        current = client.get(keys.delivery)
        if current is not None and text(current) != running.delivery:
            self._lose(running, "the daemon gave it to another worker")
        cancel = client.get(keys.cancel)
        if cancel is not None and text(cancel) == running.delivery:
            running.why_stop = running.why_stop or "cancel"
            running.stop.set()

    @staticmethod
    def _lose(running: Running, why: str) -> None:
        if not running.stop.is_set():
            logger.warning("%s is no longer this worker's: %s; stopping it", running.source, why)
        running.why_stop = "lost"
        running.stop.set()

    def _record(self) -> None:
        with self._lock:
            running = self.running
        record = {**self.info, "name": self.name, "host": socket.gethostname(), "pid": os.getpid(),
                  "job": running.job_id if running else None, "source": running.source if running else None,
                  "heartbeat": time.time()}
        pipe = self.client.pipeline()
        pipe.set(worker_key(self.name), json.dumps(record), px=self.lease_ms * 3)
        pipe.sadd(WORKERS_SET, self.name)
        pipe.execute()
