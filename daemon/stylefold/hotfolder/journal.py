"""Job states and the SQLite journal under ``.stylefold/``.

The journal records what happened to every claimed file: its content hash and
effective-preset key (idempotency), how many attempts it took (a file that keeps
crashing the process is failed as poison instead of looping), and where its result or
failure went. It runs in WAL mode so that several daemons on one folder (one per GPU)
and ``stylefold status`` can read and write it at once. The folders stay the source of
truth for where a file *is*; the journal says what was done with it, so a journal that
is lost can be rebuilt from them (``rebuild.open_journal``).

What the journal survives (issue 13), without ever raising into the daemon's loop:

- **Corrupt** (garbage, truncated, a ``-wal`` that is not a write-ahead log, failing
  ``PRAGMA quick_check``): found when it is opened, or by an operation that meets
  SQLITE_CORRUPT/NOTADB. Given a ``rebuild`` source, the file (with its ``-wal``,
  ``-shm``) is moved aside to ``journal.db.corrupt-YYYYMMDDTHHMMSSZ`` (kept, never
  deleted), one warning says so, and a new journal is filled from the folders.
  Without one, opening raises ``JournalCorrupt`` (what the read-only ``status`` wants).
- **Deleted or replaced while running**: each write transaction (and a read at most
  every ``CHECK_FILE_EVERY_S``) compares the path's inode with the one opened; a
  journal that is gone is recreated (rebuilt the same way), one that another daemon
  already recreated is reopened. Writing on into the unlinked inode would lose it all.
- **Locked by another process** (a ``BEGIN EXCLUSIVE`` in a sqlite3 shell, say): each
  try waits at most ``busy_timeout_s`` (a few seconds, not SQLite's usual 30), then
  ``on_wait`` is called (the service feeds its watchdog there) and the operation is
  tried again, for as long as it takes. One warning when the wait starts, one line
  when it ends. A warm stop (SIGTERM) waits too; a second signal exits at once and
  the claim resumes at the next start.

Recreating or rebuilding the file happens under an ``flock`` on ``journal.lock``, and
a new journal is built under a temporary name and renamed into place, so two daemons
never rebuild it twice nor see half of one. Operations are serialised by one lock on
one connection (the daemon uses the journal from one thread at a time anyway), which
lets a reopen replace the connection safely.
"""

from __future__ import annotations

import json
import logging
import sqlite3
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Any, TypeVar

from ..failures import is_disk_full
from . import journal_files as files
from .journal_files import JournalCorrupt, journal_problem

__all__ = ["BUSY_TIMEOUT_S", "JobRecord", "JobState", "Journal", "JournalCorrupt", "Rebuilder", "journal_problem"]

logger = logging.getLogger(__name__)

BUSY_TIMEOUT_S = 2.0  # one wait for another process's lock; the watchdog is fed between two
CHECK_FILE_EVERY_S = 1.0  # how often a read looks whether the file was deleted (a write always does)
READ_ONLY_PATIENCE_S = 10.0  # a read-only handle (``stylefold status``) gives up on a lock after this
RETRY_PREPARE_S = 10.0  # after a rebuild that failed (a full disk), the next one waits this long
_MAX_PAUSE_S = 0.5  # between two tries, for a lock refused at once (SQLITE_BUSY without waiting)

T = TypeVar("T")


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


Rebuilder = Callable[[], Iterable[JobRecord]]


class Journal:
    """A thread-safe handle on the journal: one connection, operations serialised.

    ``rebuild``: what a new journal is filled with when the file is missing, corrupt or
    deleted (``rebuild.records_from_folders``); without it a missing journal starts
    empty and a corrupt one raises ``JournalCorrupt``. ``read_only``: never writes,
    moves or creates anything (``status``); a corrupt file raises ``JournalCorrupt``.
    ``on_wait``: called between two tries while another process holds the lock.
    """

    def __init__(self, path: Path, *, rebuild: Rebuilder | None = None, read_only: bool = False,
                 busy_timeout_s: float = BUSY_TIMEOUT_S, on_wait: Callable[[], None] | None = None) -> None:
        self.path = path
        self.rebuild = rebuild
        self.read_only = read_only
        self.busy_timeout_s = busy_timeout_s
        self.on_wait = on_wait
        self._lock = threading.RLock()
        self._db: sqlite3.Connection | None = None
        self._identity: tuple[int, int] | None = None
        self._last_check = 0.0
        # Why the file must be looked at before the next connection, if it must.
        self._pending: str | None = None if read_only else "start"
        self._retry_prepare_at = 0.0
        self._progress_dropped = False
        if read_only:
            files.check_readable(path, busy_timeout_s)
        else:
            path.parent.mkdir(parents=True, exist_ok=True)
        try:
            self._run(lambda db: None)  # connect now: a journal that cannot be opened fails here
        except (OSError, sqlite3.OperationalError) as exc:
            if read_only or not is_disk_full(exc):
                raise
            # A full disk at start: the daemon starts anyway, its jobs wait (the worker
            # treats a journal that cannot record as a wait) and the next use tries again.
            logger.error("journal %s cannot be made now (%s); trying again when it is next used", path, exc)

    # ------------------------------------------------------------ the file

    def _prepare(self, event: str) -> None:
        """Make the file at ``path`` a sound journal: keep it, or move a corrupt one
        aside, or create a missing one, filled by ``rebuild``. ``event``: why we look
        (``start``, ``deleted``, ``corrupt``), for the one line that says what was done."""
        self.path.parent.mkdir(parents=True, exist_ok=True)  # .stylefold/ itself may have been removed
        with files.rebuild_lock(self.path):
            state, detail = files.probe(self.path, self.busy_timeout_s)
            if state in (files.OK, files.BUSY):
                if event == "deleted":
                    logger.warning("journal %s was replaced by another process; reopened it", self.path)
                return
            if state == files.CORRUPT and self.rebuild is None:
                raise JournalCorrupt(f"{self.path} is corrupt: {detail}")
            aside = files.move_aside(self.path, "corrupt" if state == files.CORRUPT else "orphaned")
            records = list(self.rebuild()) if self.rebuild is not None else []
            files.create(self.path, files.SCHEMA, [_row(r) for r in records])
        summary = _summary(records)
        if state == files.CORRUPT:
            logger.warning("journal %s is corrupt (%s); moved it aside to %s and rebuilt it from the folders: %s",
                           self.path, detail, aside.name if aside else "?", summary)
        elif event == "deleted":
            logger.warning("journal %s was deleted while the daemon ran; recreated it from the folders: %s",
                           self.path, summary)
        elif records:
            logger.warning("journal %s was missing; rebuilt it from the folders: %s", self.path, summary)
        else:
            logger.info("created the journal %s", self.path)

    def _connection(self) -> sqlite3.Connection:
        if self._db is None and self._pending is not None:
            if time.monotonic() < self._retry_prepare_at:
                raise sqlite3.OperationalError(f"journal {self.path} could not be made a moment ago; not yet again")
            try:
                self._prepare(self._pending)
            except (OSError, sqlite3.OperationalError):
                self._retry_prepare_at = time.monotonic() + RETRY_PREPARE_S  # a rebuild reads every report
                raise
            self._pending = None
        if self._db is None:
            target = files.readonly_uri(self.path) if self.read_only else str(self.path)
            db = sqlite3.connect(target, timeout=self.busy_timeout_s, isolation_level=None,
                                 check_same_thread=False, uri=self.read_only)
            try:
                db.row_factory = sqlite3.Row
                if not self.read_only:
                    db.execute("PRAGMA journal_mode=WAL")
                    db.execute("PRAGMA synchronous=NORMAL")
                    if not files.has_schema(db):  # an older journal, or one made without a rebuild
                        db.executescript(files.SCHEMA)
            except BaseException:
                db.close()
                raise
            self._db = db
            self._identity = files.identity(self.path)
        return self._db

    def _drop_connection(self) -> None:
        if self._db is not None:
            try:
                self._db.close()
            except sqlite3.Error:  # closing one on a corrupt or vanished file may complain
                pass
            self._db = None
            self._identity = None

    def _watch_file(self, force: bool) -> None:
        """Reopen when the file was deleted or replaced under us (cheap: one stat)."""
        if self.read_only or self._identity is None:
            return
        now = time.monotonic()
        if not force and now - self._last_check < CHECK_FILE_EVERY_S:
            return
        self._last_check = now
        if files.identity(self.path) != self._identity:
            self._drop_connection()
            self._pending = "deleted"

    # ------------------------------------------------------------ running operations

    def _run(self, op: Callable[[sqlite3.Connection], T], *, write: bool = False,
             patient: bool = True) -> T:
        """``op`` on the connection (in one write transaction with ``write``), tried
        again while another process holds the lock (``patient=False``: raise after one
        wait instead), and once more after a corrupt journal was moved aside and rebuilt."""
        with self._lock:
            waiting = _Waiting(self)
            recovered = False
            while True:
                try:
                    self._watch_file(force=write)
                    db = self._connection()
                    result = files.transaction(db, op) if write else op(db)
                except sqlite3.DatabaseError as exc:
                    if files.is_busy(exc):
                        if not patient:
                            raise
                        waiting.again(exc)
                        continue
                    if files.is_corrupt(exc) and not self.read_only and not recovered:
                        recovered = True
                        self._drop_connection()
                        self._pending = "corrupt"
                        continue
                    raise
                waiting.done()
                return result

    def close(self) -> None:
        with self._lock:
            self._drop_connection()

    # ------------------------------------------------------------ writes

    def start_attempt(self, job_id: str, *, name: str, source: str, sha256: str, preset_key: str) -> int:
        """Record a job as running and count the attempt *before* any work, so a job
        that kills the process is still counted. Returns the attempt number."""
        now = time.time()

        def op(db: sqlite3.Connection) -> int:
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

        return self._run(op, write=True)

    def set_state(self, job_id: str, state: JobState, *, output: str | None = None,
                  error_kind: str | None = None, error: str | None = None) -> None:
        self._run(lambda db: db.execute(
            "UPDATE jobs SET state = ?, output = COALESCE(?, output), error_kind = ?, error = ?,"
            " updated = ?, progress = CASE WHEN ? IN ('done', 'failed') THEN NULL ELSE progress END"
            " WHERE id = ?",
            (state.value, _text(output), error_kind, _text(error), time.time(), state.value, job_id),
        ), write=True)

    def undo_attempt(self, job_id: str) -> None:
        """A graceful stop (SIGTERM) is not a crash: it does not count towards poison."""
        self._run(lambda db: db.execute("UPDATE jobs SET attempts = MAX(0, attempts - 1) WHERE id = ?",
                                        (job_id,)), write=True)

    def set_progress(self, job_id: str, progress: dict[str, Any]) -> None:
        """Best effort: while another process holds the lock, a progress note is dropped
        after one wait (``busy_timeout_s``) rather than stalling the running job's steps;
        the next one is tried again."""
        try:
            self._run(lambda db: db.execute("UPDATE jobs SET progress = ?, updated = ? WHERE id = ?",
                                            (json.dumps(progress), time.time(), job_id)), write=True, patient=False)
        except sqlite3.OperationalError as exc:
            if not files.is_busy(exc):
                raise
            if not self._progress_dropped:
                logger.warning("journal %s is locked by another process; the running job's progress is not "
                               "recorded until it is free", self.path)
            self._progress_dropped = True
            return
        if self._progress_dropped:
            logger.info("journal %s is free again: progress is recorded again", self.path)
        self._progress_dropped = False

    # ------------------------------------------------------------ reads

    def find_done(self, sha256: str, preset_key: str) -> JobRecord | None:
        """A finished job for the same bytes and the same effective preset."""
        row = self._run(lambda db: db.execute(
            "SELECT * FROM jobs WHERE sha256 = ? AND preset_key = ? AND state = ? ORDER BY updated DESC LIMIT 1",
            (sha256, preset_key, JobState.DONE.value),
        ).fetchone())
        return _record(row) if row else None

    def failed_with(self, sha256: str) -> list[JobRecord]:
        """Failed jobs of these bytes (their ``output`` is their error file)."""
        rows = self._run(lambda db: db.execute(
            "SELECT * FROM jobs WHERE sha256 = ? AND state = ? ORDER BY updated DESC LIMIT 100",
            (sha256, JobState.FAILED.value),
        ).fetchall())
        return [_record(r) for r in rows]

    def by_state(self, state: JobState, limit: int = 100) -> list[JobRecord]:
        rows = self._run(lambda db: db.execute(
            "SELECT * FROM jobs WHERE state = ? ORDER BY updated DESC LIMIT ?", (state.value, limit)
        ).fetchall())
        return [_record(r) for r in rows]

    def counts(self) -> dict[str, int]:
        rows = self._run(lambda db: db.execute("SELECT state, COUNT(*) AS n FROM jobs GROUP BY state").fetchall())
        return {r["state"]: int(r["n"]) for r in rows}


class _Waiting:
    """One wait for another process's lock: said once when it starts and once when it
    ends, however many tries it takes."""

    def __init__(self, journal: Journal) -> None:
        self.journal = journal
        self.since: float | None = None
        self.tries = 0

    def again(self, exc: sqlite3.DatabaseError) -> None:
        journal, now = self.journal, time.monotonic()
        if self.since is None:
            self.since = now
            logger.warning("journal %s is locked by another process (%s); waiting for it, trying again every %g s",
                           journal.path, exc, journal.busy_timeout_s)
        elif journal.read_only and now - self.since > READ_ONLY_PATIENCE_S:
            raise exc
        self.tries += 1
        if journal.on_wait is not None:
            try:
                journal.on_wait()
            except Exception:  # the hook's trouble must not turn a wait into a crash
                logger.exception("journal wait hook failed")
        time.sleep(min(0.05 * self.tries, _MAX_PAUSE_S))

    def done(self) -> None:
        if self.since is not None:
            logger.info("journal %s is free again after %.1f s", self.journal.path, time.monotonic() - self.since)


def _summary(records: list[JobRecord]) -> str:
    counts = {state: sum(1 for r in records if r.state == state) for state in JobState}
    return (f"{counts[JobState.DONE]} done, {counts[JobState.FAILED]} failed, "
            f"{counts[JobState.RUNNING] + counts[JobState.QUEUED]} interrupted or running")


def _text(value: str | None) -> str | None:
    """Text as SQLite can store it. Linux file names are bytes; one that is not UTF-8
    (an SMB client with another charset, an old zip) reaches Python with surrogate
    escapes, which SQLite refuses with UnicodeEncodeError, and that crashed the daemon
    on every restart. The journal records names for people, so such bytes become '?'."""
    return None if value is None else value.encode("utf-8", "replace").decode("utf-8")


def _row(r: JobRecord) -> tuple[Any, ...]:
    """A record as the columns of ``jobs``, in order."""
    return (r.id, _text(r.name), _text(r.source), r.sha256, r.preset_key, r.state.value, r.attempts,
            _text(r.output), r.error_kind, _text(r.error), r.created, r.updated,
            json.dumps(r.progress) if r.progress is not None else None)


def _record(row: sqlite3.Row) -> JobRecord:
    return JobRecord(
        id=row["id"], name=row["name"], source=row["source"], sha256=row["sha256"],
        preset_key=row["preset_key"], state=JobState(row["state"]), attempts=int(row["attempts"]),
        output=row["output"], error_kind=row["error_kind"], error=row["error"],
        created=float(row["created"]), updated=float(row["updated"]),
        progress=json.loads(row["progress"]) if row["progress"] else None,
    )
