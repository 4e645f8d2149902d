"""``/api/events``: Server-Sent Events of job changes, from the journal.

One poller per process, whatever the number of clients: every ``interval_s`` it asks
the journal for the rows updated since it last looked (one indexed query, in a worker
thread) and turns each change into an event: ``start`` (a job began running), ``step``
(its progress moved), ``done``, ``failed``, ``waiting`` (stopped, resumes later). It
runs only while someone listens. Every daemon on the root writes the journal, so the
stream shows all their jobs.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import AsyncIterator
from typing import Any

from ..hotfolder.journal import JobRecord, JobState
from .reader import JournalReader

__all__ = ["EventHub", "event_of"]

HEARTBEAT_S = 15.0
QUEUE_SIZE = 256
MAX_KNOWN = 10_000


def event_of(record: JobRecord, before: tuple[JobState, int | None] | None) -> tuple[str, dict[str, Any]] | None:
    """The event a changed journal row means, given what was known of it before."""
    progress = record.progress or {}
    step = progress.get("step") if isinstance(progress.get("step"), int) else None
    body: dict[str, Any] = {"id": record.id, "name": record.name, "source": record.source, "step": step,
                            "steps": progress.get("steps"), "total_loss": progress.get("total_loss")}
    if record.state is JobState.DONE:
        kind = "done"
    elif record.state is JobState.FAILED:
        kind, body["error"] = "failed", {"kind": record.error_kind, "error": record.error}
    elif record.state is JobState.QUEUED:
        kind = "waiting"
    elif before is None or before[0] is not JobState.RUNNING:
        kind = "start"
    elif step != before[1]:
        kind = "step"
    else:
        return None
    if before is not None and before == (record.state, step) and kind != "step":
        return None
    return kind, body


class EventHub:
    def __init__(self, reader: JournalReader, interval_s: float = 1.0) -> None:
        self.reader = reader
        self.interval_s = interval_s
        self._clients: set[asyncio.Queue[str]] = set()
        self._known: dict[str, tuple[JobState, int | None]] = {}
        self._cursor = time.time()
        self._task: asyncio.Task[None] | None = None

    async def stream(self) -> AsyncIterator[str]:
        queue: asyncio.Queue[str] = asyncio.Queue(QUEUE_SIZE)
        self._clients.add(queue)
        if self._task is None or self._task.done():
            self._task = asyncio.create_task(self._poll())
        try:
            yield "retry: 3000\n\n"
            while True:
                try:
                    yield await asyncio.wait_for(queue.get(), HEARTBEAT_S)
                except TimeoutError:
                    yield ": keep-alive\n\n"
        finally:
            self._clients.discard(queue)

    async def _poll(self) -> None:
        while self._clients:
            with contextlib.suppress(Exception):  # a locked or missing journal: try again next tick
                for text in await asyncio.to_thread(self.changes):
                    for queue in list(self._clients):
                        with contextlib.suppress(asyncio.QueueFull):  # a stalled client misses events
                            queue.put_nowait(text)
            await asyncio.sleep(self.interval_s)

    def changes(self) -> list[str]:
        """The events since the last call, as SSE text."""
        # >=: two rows may share a timestamp; the (state, step) memory drops repeats.
        rows = self.reader.changed_since(self._cursor - 1e-6)
        out = []
        for record in rows:
            self._cursor = max(self._cursor, record.updated)
            event = event_of(record, self._known.get(record.id))
            progress = record.progress or {}
            self._known[record.id] = (record.state, progress.get("step") if isinstance(progress.get("step"), int)
                                      else None)
            if event is not None:
                kind, body = event
                out.append(f"event: {kind}\ndata: {json.dumps(body)}\n\n")
        if len(self._known) > MAX_KNOWN:
            self._known.clear()
        return out
