"""The Redis side channel: blobs by content, the content cache of a worker, and the
connection (with retries, so a broker restart is a pause, not a failed job).

redis-py only; never celery or torch.
"""

from __future__ import annotations

import hashlib
import logging
import os
import tempfile
import time
from pathlib import Path
from typing import Any

import redis
from redis.backoff import ExponentialBackoff
from redis.retry import Retry

from ..failures import FailureKind, JobFailure
from .protocol import BLOB_TTL_S, blob_key, redact

__all__ = ["ContentCache", "TransferTooLarge", "connect", "get_capped", "put_blob"]

logger = logging.getLogger(__name__)

# A broker restart (with or without its data) takes a few seconds; retrying for about
# a minute rides it out.
RETRIES = 12


class TransferTooLarge(JobFailure):
    def __init__(self, what: str, size: int, cap: int) -> None:
        super().__init__(f"{what} is {size / 2**20:.1f} MiB, above the {cap >> 20} MiB that may travel "
                         f"between the daemon and its workers ([cluster] max_transfer_mb)", kind=FailureKind.TOO_LARGE)


def connect(url: str, *, retries: int = RETRIES, timeout_s: float = 10.0) -> redis.Redis:
    """A client that retries connection errors with backoff (a restarting broker)."""
    try:
        client = redis.Redis.from_url(
            url, socket_timeout=timeout_s, socket_connect_timeout=timeout_s, health_check_interval=15,
            retry=Retry(ExponentialBackoff(cap=8.0, base=0.2), retries),
            retry_on_error=[redis.ConnectionError, redis.TimeoutError])
    except ValueError as exc:
        raise ValueError(f"broker {redact(url)}: {exc}") from None
    return client


def put_blob(client: redis.Redis, data: bytes, sha256: str) -> None:
    """Upload ``data`` under its sha256 unless it is there already (styles repeat)."""
    key = blob_key(sha256)
    if client.exists(key):
        client.expire(key, BLOB_TTL_S)
        return
    client.set(key, data, ex=BLOB_TTL_S)


def get_capped(client: redis.Redis, key: str, cap: int, what: str) -> bytes | None:
    """The value of ``key``, refused above ``cap`` bytes before it is fetched."""
    size = client.strlen(key)
    if not size:
        return None
    if size > cap:
        raise TransferTooLarge(what, int(size), cap)
    value: Any = client.get(key)
    return bytes(value) if value is not None else None


class ContentCache:
    """A worker's files by content: ``DIR/ab/abcdef...``. The only place a worker reads
    inputs from; a blob whose bytes do not hash to its name is refused."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        folder.mkdir(parents=True, exist_ok=True)

    def path(self, sha256: str) -> Path:
        blob_key(sha256)  # validates: a hex digest, never a path
        return self.folder / sha256[:2] / sha256

    def fetch(self, client: redis.Redis, sha256: str, cap: int, what: str) -> Path | None:
        """The cached file of ``sha256``, fetched from the broker if need be; None if
        the broker does not have it (lost with its data: the coordinator sends it again)."""
        path = self.path(sha256)
        if path.is_file():
            os.utime(path)  # recently used: what a size-bounded clean-up would keep
            return path
        data = get_capped(client, blob_key(sha256), cap, what)
        if data is None:
            return None
        if hashlib.sha256(data).hexdigest() != sha256:
            raise JobFailure(f"{what} arrived damaged (its sha256 does not match)", kind=FailureKind.INTERNAL)
        path.parent.mkdir(exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".part-")
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(data)
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        return path


def wait_for(client: redis.Redis, timeout_s: float) -> None:
    """Ping until the broker answers (a worker started before its broker)."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            client.ping()
            return
        except (redis.ConnectionError, redis.TimeoutError):
            if time.monotonic() > deadline:
                raise
            time.sleep(0.5)
