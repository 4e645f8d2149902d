"""Read-only access to the journal for the web process.

Its own ``mode=ro`` SQLite connection per thread: in WAL mode a reader never blocks the
daemons' writers and takes no lock they wait on, and the web process can never change
a job by mistake. Every query is one indexed statement.
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ..hotfolder.journal import JobRecord, JobState

__all__ = ["JournalReader"]

IDENTITY_CHECK_S = 2.0
COLUMNS = "id, name, source, sha256, preset_key, state, attempts, output, error_kind, error, created, updated, progress"


class JournalReader:
    def __init__(self, path: Path) -> None:
        self.path = path
        self._local = threading.local()

    def _conn(self) -> sqlite3.Connection | None:
        conn: sqlite3.Connection | None = getattr(self._local, "conn", None)
        if conn is not None and time.monotonic() - self._local.checked > IDENTITY_CHECK_S:
            # A daemon may move a corrupt journal aside and rebuild it: follow the new file.
            self._local.checked = time.monotonic()
            if _identity(self.path) != self._local.identity:
                conn.close()
                conn = self._local.conn = None
        if conn is None:
            identity = _identity(self.path)
            if identity is None:
                return None
            self._local.identity, self._local.checked = identity, time.monotonic()
            conn = sqlite3.connect(f"{self.path.absolute().as_uri()}?mode=ro", uri=True, timeout=5.0,
                                   isolation_level=None, check_same_thread=False)
            conn.execute("PRAGMA busy_timeout=5000")
            conn.row_factory = sqlite3.Row
            self._local.conn = conn
        return conn

    def _rows(self, sql: str, params: Sequence[Any]) -> list[JobRecord]:
        conn = self._conn()
        if conn is None:
            return []
        try:
            return [_record(r) for r in conn.execute(sql, params).fetchall()]
        except sqlite3.OperationalError as exc:
            if "no such table" in str(exc):
                return []
            raise

    def get(self, job_id: str) -> JobRecord | None:
        rows = self._rows(f"SELECT {COLUMNS} FROM jobs WHERE id = ?", (job_id,))
        return rows[0] if rows else None

    def by_states(self, states: Sequence[JobState], limit: int) -> list[JobRecord]:
        marks = ", ".join("?" for _ in states)
        return self._rows(f"SELECT {COLUMNS} FROM jobs WHERE state IN ({marks}) ORDER BY updated DESC LIMIT ?",
                          (*[s.value for s in states], limit))

    def changed_since(self, updated: float, limit: int = 200) -> list[JobRecord]:
        return self._rows(f"SELECT {COLUMNS} FROM jobs WHERE updated > ? ORDER BY updated LIMIT ?", (updated, limit))

    def first_since(self, source: str, created: float) -> JobRecord | None:
        """The first job of ``source`` created after ``created`` (an upload's job)."""
        rows = self._rows(f"SELECT {COLUMNS} FROM jobs WHERE source = ? AND created >= ? ORDER BY created LIMIT 1",
                          (source, created))
        return rows[0] if rows else None

    def snapshot(self, recent: int) -> tuple[list[JobRecord], list[JobRecord], list[JobRecord], dict[str, int]]:
        """Running (and stopped), recent done, recent failed jobs and the counts, as
        ``/api/status`` shows them; the same answer again while no daemon has committed
        anything since (SQLite's ``data_version``), which is most polls."""
        conn = self._conn()
        version = conn.execute("PRAGMA data_version").fetchone()[0] if conn is not None else None
        cached = getattr(self._local, "snapshot", None)
        if version is not None and cached is not None and cached[0] == (id(conn), version, recent):
            return cached[1]  # type: ignore[no-any-return]
        result = (self.by_states([JobState.RUNNING, JobState.QUEUED], 100), self.by_states([JobState.DONE], recent),
                  self.by_states([JobState.FAILED], recent), self.counts())
        self._local.snapshot = ((id(conn), version, recent), result)
        return result

    def counts(self) -> dict[str, int]:
        conn = self._conn()
        if conn is None:
            return {}
        try:
            rows = conn.execute("SELECT state, COUNT(*) AS n FROM jobs GROUP BY state").fetchall()
        except sqlite3.OperationalError:
            return {}
        return {r["state"]: int(r["n"]) for r in rows}


def _identity(path: Path) -> tuple[int, int] | None:
    try:
        info = path.stat()
    except OSError:
        return None
    return info.st_dev, info.st_ino


def _record(row: sqlite3.Row) -> JobRecord:
    try:
        progress = json.loads(row["progress"]) if row["progress"] else None
    except ValueError:
        progress = None
    return JobRecord(
        id=row["id"], name=row["name"], source=row["source"], sha256=row["sha256"],
        preset_key=row["preset_key"], state=JobState(row["state"]), attempts=int(row["attempts"]),
        output=row["output"], error_kind=row["error_kind"], error=row["error"],
        created=float(row["created"]), updated=float(row["updated"]),
        progress=progress if isinstance(progress, dict) else None,
    )
