"""The workers the broker knows, for ``status``, the page, ``doctor`` and the daemon's
check of their weights. redis-py only (no torch, no celery)."""

from __future__ import annotations

import json
import time
from typing import Any, Literal

import redis

from .protocol import WORKERS_SET, worker_key

__all__ = ["list_workers"]


def list_workers(client: redis.Redis, weights: str | None = None) -> list[dict[str, Any]]:
    """Every worker with a live heartbeat record, by name: ``name``, ``host``, ``device``,
    ``weights``, ``job`` (its current job id or None), ``source``, ``heartbeat`` (unix
    time) and ``heartbeat_age_s``; with ``weights``, ``refused`` says whether its
    weights differ from those (it then never takes this daemon's jobs)."""
    names = sorted(n.decode(errors="replace") for n in client.smembers(WORKERS_SET))  # type: ignore[union-attr]
    if not names:
        return []
    raw: Any = client.mget([worker_key(n) for n in names])
    now, found = time.time(), []
    for name, value in zip(names, raw, strict=True):
        if value is None:
            client.srem(WORKERS_SET, name)  # its record lapsed: the worker is gone
            continue
        try:
            record = json.loads(value)
        except ValueError:
            continue
        record["heartbeat_age_s"] = round(max(0.0, now - float(record.get("heartbeat", now))), 1)
        if weights is not None:
            record["refused"] = record.get("weights") != weights
        found.append(record)
    return found


def check_broker(url: str, weights_setting: str) -> tuple[Literal["OK", "WARN", "FAIL"], str, str]:
    """``doctor``'s broker check: reachable, and how many live workers hold this
    daemon's weights. (status, detail, fix)."""
    from .identity import identity_of_setting
    from .protocol import redact
    from .store import connect

    shown = redact(url)
    try:
        client = connect(url, retries=0, timeout_s=3.0)
        info: Any = client.info("server")
    except (redis.RedisError, ValueError) as exc:
        return ("FAIL", f"cannot reach the broker {shown}: {exc}",
                "start redis-server there, check the host, port and password (the URL's :PASSWORD@)")
    try:
        weights: str | None = identity_of_setting(weights_setting)
    except ValueError:
        weights = None
    workers = list_workers(client, weights)
    ours = [w["name"] for w in workers if not w.get("refused")]
    refused = [w["name"] for w in workers if w.get("refused")]
    detail = (f"{shown}: redis {info.get('redis_version', '?')}, {len(ours)} worker(s) with these weights"
              f"{' (' + ', '.join(ours) + ')' if ours else ''}")
    if refused:
        detail += f"; refused for other weights: {', '.join(refused)}"
    if not ours:
        return ("WARN", detail, "start `stylefold worker --broker URL` on a GPU box, with the same --weights")
    return ("OK", detail, "")
