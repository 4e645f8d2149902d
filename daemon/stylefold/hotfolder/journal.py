"""Job states and the SQLite journal under ``.stylefold/``.

The journal records what happened to every claimed file: its content hash and
effective-preset key (idempotency), how many attempts it took (a file that keeps
crashing the process is failed as poison instead of looping), and where its result or
failure went. It runs in WAL mode so that several daemons on one folder (one per GPU)
and ``stylefold status`` can read and write it at once. The folders stay the source of
truth for where a file *is*; the journal says what was done with it.
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Any

__all__ = ["JobRecord", "JobState", "Journal"]


class JobState(StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    DONE = "done"
    FAILED = "failed"


@dataclass(frozen=True)
class JobRecord:
    id: str
    name: str
    source: str
    sha256: str
    preset_key: str
    state: JobState
    attempts: int
    output: str | None
    error_kind: str | None
    error: str | None
    created: float
    updated: float
    progress: dict[str, Any] | None


_SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
    id TEXT PRIMARY KEY,
    name TEXT NOT NULL,
    source TEXT NOT NULL,
    sha256 TEXT NOT NULL,
    preset_key TEXT NOT NULL,
    state TEXT NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    output TEXT,
    error_kind TEXT,
    error TEXT,
    created REAL NOT NULL,
    updated REAL NOT NULL,
    progress TEXT
);
CREATE INDEX IF NOT EXISTS jobs_key ON jobs (sha256, preset_key, state);
CREATE INDEX IF NOT EXISTS jobs_updated ON jobs (updated);
"""


class Journal:
    """A thread-safe handle on the journal; one connection per thread."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._local = threading.local()
        path.parent.mkdir(parents=True, exist_ok=True)
        self._conn().executescript(_SCHEMA)  # executescript manages its own transaction

    def _conn(self) -> sqlite3.Connection:
        conn = getattr(self._local, "conn", None)
        if conn is None:
            conn = sqlite3.connect(self.path, timeout=30.0, isolation_level=None)
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=NORMAL")
            conn.execute("PRAGMA busy_timeout=30000")
            conn.row_factory = sqlite3.Row
            self._local.conn = conn
        return conn

    @contextmanager
    def _tx(self) -> Iterator[sqlite3.Connection]:
        conn = self._conn()
        conn.execute("BEGIN IMMEDIATE")
        try:
            yield conn
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        conn.execute("COMMIT")

    def close(self) -> None:
        conn = getattr(self._local, "conn", None)
        if conn is not None:
            conn.close()
            self._local.conn = None

    # ------------------------------------------------------------ writes

    def start_attempt(self, job_id: str, *, name: str, source: str, sha256: str, preset_key: str) -> int:
        """Record a job as running and count the attempt *before* any work, so a job
        that kills the process is still counted. Returns the attempt number."""
        now = time.time()
        with self._tx() as db:
            row = db.execute("SELECT attempts FROM jobs WHERE id = ?", (job_id,)).fetchone()
            if row is None:
                db.execute(
                    "INSERT INTO jobs (id, name, source, sha256, preset_key, state, attempts, created, updated)"
                    " VALUES (?, ?, ?, ?, ?, ?, 1, ?, ?)",
                    (job_id, _text(name), _text(source), sha256, preset_key, JobState.RUNNING.value, now, now),
                )
                return 1
            attempts = int(row["attempts"]) + 1
            db.execute("UPDATE jobs SET state = ?, attempts = ?, updated = ? WHERE id = ?",
                       (JobState.RUNNING.value, attempts, now, job_id))
            return attempts

    def set_state(self, job_id: str, state: JobState, *, output: str | None = None,
                  error_kind: str | None = None, error: str | None = None) -> None:
        with self._tx() as db:
            db.execute(
                "UPDATE jobs SET state = ?, output = COALESCE(?, output), error_kind = ?, error = ?,"
                " updated = ?, progress = CASE WHEN ? IN ('done', 'failed') THEN NULL ELSE progress END"
                " WHERE id = ?",
                (state.value, _text(output), error_kind, _text(error), time.time(), state.value, job_id),
            )

    def undo_attempt(self, job_id: str) -> None:
        """A graceful stop (SIGTERM) is not a crash: it does not count towards poison."""
        with self._tx() as db:
            db.execute("UPDATE jobs SET attempts = MAX(0, attempts - 1) WHERE id = ?", (job_id,))

    def set_progress(self, job_id: str, progress: dict[str, Any]) -> None:
        with self._tx() as db:
            db.execute("UPDATE jobs SET progress = ?, updated = ? WHERE id = ?",
                       (json.dumps(progress), time.time(), job_id))

    # ------------------------------------------------------------ reads

    def find_done(self, sha256: str, preset_key: str) -> JobRecord | None:
        """A finished job for the same bytes and the same effective preset."""
        row = self._conn().execute(
            "SELECT * FROM jobs WHERE sha256 = ? AND preset_key = ? AND state = ? ORDER BY updated DESC LIMIT 1",
            (sha256, preset_key, JobState.DONE.value),
        ).fetchone()
        return _record(row) if row else None

    def failed_with(self, sha256: str) -> list[JobRecord]:
        """Failed jobs of these bytes (their ``output`` is their error file)."""
        rows = self._conn().execute(
            "SELECT * FROM jobs WHERE sha256 = ? AND state = ? ORDER BY updated DESC LIMIT 100",
            (sha256, JobState.FAILED.value),
        ).fetchall()
        return [_record(r) for r in rows]

    def by_state(self, state: JobState, limit: int = 100) -> list[JobRecord]:
        rows = self._conn().execute(
            "SELECT * FROM jobs WHERE state = ? ORDER BY updated DESC LIMIT ?", (state.value, limit)
        ).fetchall()
        return [_record(r) for r in rows]

    def counts(self) -> dict[str, int]:
        rows = self._conn().execute("SELECT state, COUNT(*) AS n FROM jobs GROUP BY state").fetchall()
        return {r["state"]: int(r["n"]) for r in rows}


def _text(value: str | None) -> str | None:
    """Text as SQLite can store it. Linux file names are bytes; one that is not UTF-8
    (an SMB client with another charset, an old zip) reaches Python with surrogate
    escapes, which SQLite refuses with UnicodeEncodeError, and that crashed the daemon
    on every restart. The journal records names for people, so such bytes become '?'."""
    return None if value is None else value.encode("utf-8", "replace").decode("utf-8")


def _record(row: sqlite3.Row) -> JobRecord:
    return JobRecord(
        id=row["id"], name=row["name"], source=row["source"], sha256=row["sha256"],
        preset_key=row["preset_key"], state=JobState(row["state"]), attempts=int(row["attempts"]),
        output=row["output"], error_kind=row["error_kind"], error=row["error"],
        created=float(row["created"]), updated=float(row["updated"]),
        progress=json.loads(row["progress"]) if row["progress"] else None,
    )
