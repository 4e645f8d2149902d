"""The journal's file on disk: is it sound, moving a bad one aside, making a new one.

Kept apart from the journal's operations (``journal.py``): this is what a start, a
deleted file or a corrupt one needs, and what ``stylefold doctor`` checks. Stdlib only.

SQLite keeps a WAL database in three files: ``journal.db``, ``journal.db-wal`` (the
write-ahead log) and ``journal.db-shm`` (its index, shared between processes). They
only make sense together: a new ``journal.db`` beside an old ``-wal`` could replay the
old log into the new file, so whatever is moved aside takes its ``-wal``/``-shm`` along,
and a missing journal's leftovers are moved aside before a new one is put in place.
"""

from __future__ import annotations

import fcntl
import os
import secrets
import sqlite3
import stat
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any, TypeVar

__all__ = [
    "BUSY",
    "CORRUPT",
    "EMPTY",
    "MISSING",
    "OK",
    "SCHEMA",
    "JournalCorrupt",
    "check_readable",
    "create",
    "has_schema",
    "identity",
    "is_busy",
    "is_corrupt",
    "journal_problem",
    "move_aside",
    "probe",
    "readonly_uri",
    "rebuild_lock",
    "transaction",
]

OK, MISSING, EMPTY, CORRUPT, BUSY = "ok", "missing", "empty", "corrupt", "busy"
SIDE_FILES = ("-wal", "-shm", "-journal")
_WAL_MAGIC = (b"\x37\x7f\x06\x82", b"\x37\x7f\x06\x83")  # sqlite.org/fileformat2.html#walformat
T = TypeVar("T")
_TABLES = ("jobs", "jobs_key", "jobs_updated")
# SQLite's primary result codes (the low byte of an extended code).
_SQLITE_BUSY, _SQLITE_LOCKED, _SQLITE_CORRUPT, _SQLITE_FULL, _SQLITE_NOTADB = 5, 6, 11, 13, 26


class JournalCorrupt(sqlite3.DatabaseError):
    """The journal file cannot be used; ``str()`` says why in one sentence."""


SCHEMA = """
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


def transaction(db: sqlite3.Connection, op: Callable[[sqlite3.Connection], T]) -> T:
    """``op`` in one write transaction, rolled back on any error."""
    db.execute("BEGIN IMMEDIATE")
    try:
        result = op(db)
        db.execute("COMMIT")
    except BaseException:
        if db.in_transaction:
            try:
                db.execute("ROLLBACK")
            except sqlite3.Error:  # the error that brought us here is the one to tell
                pass
        raise
    return result


def is_busy(exc: sqlite3.DatabaseError) -> bool:
    """Another process holds the lock (SQLITE_BUSY / SQLITE_LOCKED)."""
    # By code only (Python 3.11 sets it on every error SQLite raises): a message can hold
    # a path with any word in it, and our own errors (JournalCorrupt) have no code.
    code = getattr(exc, "sqlite_errorcode", None)
    return code is not None and code & 0xFF in (_SQLITE_BUSY, _SQLITE_LOCKED)


def is_corrupt(exc: sqlite3.DatabaseError) -> bool:
    """The file is not (or no longer) a sound database (SQLITE_CORRUPT / SQLITE_NOTADB)."""
    code = getattr(exc, "sqlite_errorcode", None)
    return code is not None and code & 0xFF in (_SQLITE_CORRUPT, _SQLITE_NOTADB)


def identity(path: Path) -> tuple[int, int] | None:
    """Which file ``path`` names now (device, inode); None if none does."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return None
    return st.st_dev, st.st_ino


def readonly_uri(path: Path) -> str:
    return f"{path.absolute().as_uri()}?mode=ro"


def has_schema(db: sqlite3.Connection) -> bool:
    marks = ",".join("?" * len(_TABLES))
    row = db.execute(f"SELECT COUNT(*) FROM sqlite_master WHERE name IN ({marks})", _TABLES).fetchone()
    return int(row[0]) == len(_TABLES)


def probe(path: Path, busy_timeout_s: float = 2.0) -> tuple[str, str]:
    """``(state, detail)``: OK, MISSING, EMPTY (a file of 0 bytes: a journal not yet
    made, or one truncated to nothing), CORRUPT with the reason, or BUSY (another
    process holds it so that it cannot even be read; not a reason to move it). Reads
    only: opened read-only, which also leaves a ``-wal`` in place on close."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return MISSING, ""
    if not stat.S_ISREG(st.st_mode):
        return CORRUPT, "it is not a regular file"
    wal = _wal_problem(path)
    if wal:
        return CORRUPT, wal
    if st.st_size == 0:
        return EMPTY, ""
    try:
        db = sqlite3.connect(readonly_uri(path), uri=True, timeout=busy_timeout_s, isolation_level=None)
    except sqlite3.DatabaseError as exc:
        return _failed(exc)
    try:
        rows = db.execute("PRAGMA quick_check(1)").fetchall()
        if [tuple(r) for r in rows] != [("ok",)]:
            return CORRUPT, f"PRAGMA quick_check says {rows[0][0] if rows else 'nothing'}"
        if db.execute("SELECT COUNT(*) FROM sqlite_master WHERE type = 'table' AND name = 'jobs'").fetchone()[0] != 1:
            return CORRUPT, "it holds no jobs table"
    except sqlite3.DatabaseError as exc:
        return _failed(exc)
    finally:
        db.close()
    return OK, ""


def _failed(exc: sqlite3.DatabaseError) -> tuple[str, str]:
    if is_busy(exc):
        return BUSY, str(exc)
    if is_corrupt(exc):
        return CORRUPT, str(exc)
    raise exc  # permissions, a missing folder...: not the file's fault, not a reason to move it


def _wal_problem(path: Path) -> str:
    """A ``-wal`` whose header is not a write-ahead log's: SQLite ignores such a file and
    silently shows the database as it was before every transaction the log held."""
    wal = path.with_name(path.name + "-wal")
    try:
        with wal.open("rb") as f:
            magic = f.read(4)
    except FileNotFoundError:
        return ""
    except OSError as exc:
        return f"its write-ahead log {wal.name} cannot be read ({exc.strerror or exc})"
    if len(magic) == 4 and magic not in _WAL_MAGIC:
        return f"its write-ahead log {wal.name} is not one"
    return ""


def journal_problem(path: Path, busy_timeout_s: float = 2.0) -> str | None:
    """None if the journal at ``path`` is sound (or not made yet), else why not, in a
    sentence. Reads only (``stylefold doctor``)."""
    state, detail = probe(path, busy_timeout_s)
    if state == CORRUPT:
        return f"{path} is corrupt: {detail}"
    if state == BUSY:
        return f"{path} is locked by another process ({detail})"
    return None


def check_readable(path: Path, busy_timeout_s: float) -> None:
    """For a read-only handle: FileNotFoundError or JournalCorrupt unless it can be read."""
    state, detail = probe(path, busy_timeout_s)
    if state == MISSING:
        raise FileNotFoundError(f"no journal at {path}")
    if state in (EMPTY, CORRUPT):
        raise JournalCorrupt(f"{path} is corrupt: {detail or 'it is empty'}")


@contextmanager
def rebuild_lock(path: Path) -> Iterator[None]:
    """Held while the journal's file is checked, moved aside or made, so that of two
    daemons one rebuilds and the other finds the result."""
    fd = os.open(path.with_name("journal.lock"), os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # drops the lock


def move_aside(path: Path, label: str) -> Path | None:
    """Move ``path`` (when it is ``label`` "corrupt") and its side files to
    ``NAME.LABEL-YYYYMMDDTHHMMSSZ[-N]`` (+ ``-wal``...), never overwriting anything.
    Returns the new name of ``path``, or None when only side files (or nothing) moved."""
    present = [s for s in SIDE_FILES if path.with_name(path.name + s).exists()]
    main = label == "corrupt" and path.exists()
    if not present and not main:
        return None
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    for n in range(1, 1000):
        aside = path.with_name(f"{path.name}.{label}-{stamp}" + (f"-{n}" if n > 1 else ""))
        if not any(aside.with_name(aside.name + s).exists() for s in ("", *SIDE_FILES)):
            break
    else:
        raise FileExistsError(f"no free name to move {path} aside")
    if main:
        os.rename(path, aside)
    for side in present:
        with suppress(FileNotFoundError):
            os.rename(path.with_name(path.name + side), aside.with_name(aside.name + side))
    _fsync_dir(path.parent)
    return aside if main else None


def create(path: Path, schema: str, rows: Sequence[Sequence[Any]]) -> None:
    """A new journal at ``path`` holding ``rows`` (all the columns of ``jobs``, in
    order), built under a hidden name and renamed into place: no process ever opens a
    half-made one. Built in rollback mode, so no ``-wal`` is left behind to rename; the
    first connection turns it to WAL."""
    building = path.with_name(f".{path.name}.new-{os.getpid()}-{secrets.token_hex(4)}")
    try:
        db = sqlite3.connect(building, isolation_level=None)
        try:
            db.executescript(schema)
            db.execute("BEGIN")
            db.executemany(f"INSERT OR IGNORE INTO jobs VALUES ({','.join('?' * 13)})", rows)
            db.execute("COMMIT")
        finally:
            db.close()
        os.replace(building, path)
    except BaseException:
        for leftover in (building, building.with_name(building.name + "-journal")):
            leftover.unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)


def _fsync_dir(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    except OSError:  # some filesystems refuse fsync on a folder; the rename stands
        pass
    finally:
        os.close(fd)
