"""Uploads and retries: files into the inbox, and the ids that follow them.

A job's id is given when a daemon claims the file, which may be long after the upload
(the queue, the settle time). So an upload gets its own id, ``up-`` and 16 hex digits,
recorded in ``.stylefold/web.db`` with the file's place in the inbox, its sha256 and the
time. ``resolve`` follows it: still in the inbox (waiting), then a claim folder whose
``job.json`` has that source (claimed, not started), then the journal's first job of that
source since the upload; the job id found is recorded. The file is always in one of
these places, in that order, so a lookup in that order never misses it.

Everything arrives under a hidden ``.part`` name and is renamed into place with no
overwrite (what ``stylefold submit`` does); a sidecar is in place before its image.
"""

from __future__ import annotations

import os
import secrets
import sqlite3
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from ..fsops import free_names, place_no_clobber
from ..hotfolder.claims import JOB_FILE, ClaimMeta
from ..hotfolder.journal import JobRecord
from ..hotfolder.layout import HotFolder, is_ignored
from .reader import JournalReader

__all__ = ["UploadBook", "UploadRecord", "move_back_to_inbox", "sanitise_name"]

_SCHEMA = """
CREATE TABLE IF NOT EXISTS uploads (
    id TEXT PRIMARY KEY, source TEXT NOT NULL, sha256 TEXT NOT NULL, created REAL NOT NULL, job_id TEXT
);
"""
MAX_NAME_BYTES = 150


@dataclass(frozen=True)
class UploadRecord:
    id: str
    source: str  # relative to the inbox
    sha256: str
    created: float
    job_id: str | None


class UploadBook:
    """The upload table; a small SQLite database of the web processes' own."""

    def __init__(self, hot: HotFolder) -> None:
        self.hot = hot
        self.path = hot.state / "web.db"
        self._local = threading.local()

    @contextmanager
    def _db(self) -> Iterator[sqlite3.Connection]:
        conn: sqlite3.Connection | None = getattr(self._local, "conn", None)
        if conn is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            conn = sqlite3.connect(self.path, timeout=10.0, isolation_level=None, check_same_thread=False)
            conn.execute("PRAGMA journal_mode=WAL")
            conn.executescript(_SCHEMA)
            conn.row_factory = sqlite3.Row
            self._local.conn = conn
        yield conn

    def add(self, placed: Path, sha256: str, created: float) -> str:
        """Record an upload placed at ``placed``; ``created``: the time just before it
        was placed (its job is claimed after that, by a daemon on this clock)."""
        upload_id = f"up-{secrets.token_hex(8)}"
        source = placed.relative_to(self.hot.inbox).as_posix()
        with self._db() as db:
            db.execute("INSERT INTO uploads (id, source, sha256, created) VALUES (?, ?, ?, ?)",
                       (upload_id, source, sha256, created))
        return upload_id

    def get(self, upload_id: str) -> UploadRecord | None:
        with self._db() as db:
            row = db.execute("SELECT * FROM uploads WHERE id = ?", (upload_id,)).fetchone()
        if row is None:
            return None
        return UploadRecord(row["id"], row["source"], row["sha256"], float(row["created"]), row["job_id"])

    def resolve(self, upload: UploadRecord, journal: JournalReader) -> JobRecord | str | None:
        """The job an upload became (a journal record), the job id of a claim not yet
        started (str), or None while it waits in the inbox (or left it some other way)."""
        if upload.job_id:
            return journal.get(upload.job_id) or upload.job_id
        if (self.hot.inbox / upload.source).exists():
            return None
        job_id = self._claimed(upload)
        record = journal.get(job_id) if job_id else journal.first_since(upload.source, upload.created)
        found = record.id if record is not None else job_id
        if found is not None:
            with self._db() as db:
                db.execute("UPDATE uploads SET job_id = ? WHERE id = ?", (found, upload.id))
        return record or job_id

    def _claimed(self, upload: UploadRecord) -> str | None:
        try:
            folders = [p for p in self.hot.work.iterdir() if not p.name.startswith(".")]
        except OSError:
            return None
        for folder in folders:
            try:
                meta = ClaimMeta.from_bytes((folder / JOB_FILE).read_bytes())
            except (OSError, ValueError):
                continue
            if meta.source == upload.source and meta.claimed_at >= upload.created:
                return folder.name
        return None


def sanitise_name(filename: str, suffix: str) -> str:
    """A browser's file name made safe for the inbox: no folders, no leading dot or
    ``~$``, no control characters, not a name the watcher ignores, and the suffix of
    what the file really is (``suffix``, from its decoded format)."""
    name = filename.replace("\\", "/").rsplit("/", 1)[-1]
    name = "".join(c for c in name if c.isprintable() and c not in '<>:"|?*')
    stem = PurePosixPath(name).stem.lstrip(".~$ ").strip() or "upload"
    if stem.lower() == "preset":
        stem = "preset-photo"  # its sidecar would be named preset.json: the folder's preset
    while len(os.fsencode(stem + suffix)) > MAX_NAME_BYTES:
        stem = stem[:-1]
    candidate = f"{stem}{suffix}"
    return candidate if not is_ignored(candidate) else f"upload{suffix}"


def move_back_to_inbox(hot: HotFolder, image: str, sidecar: str | None) -> Path:
    """Move a failed original (and its sidecar) from ``failed/`` back into its inbox
    folder under a free name: first under a hidden name (one of two concurrent retries
    wins the rename, the other gets FileNotFoundError), then sidecar, then image."""
    rel = PurePosixPath(image)
    dest = hot.inbox / rel.parent
    dest.mkdir(parents=True, exist_ok=True)
    token = secrets.token_hex(4)
    hidden_image = dest / f".{rel.name[:60]}.{token}.part"
    os.rename(hot.failed / rel, hidden_image)
    hidden_sidecar = None
    if sidecar is not None:
        hidden_sidecar = dest / f".{PurePosixPath(sidecar).name[:60]}.{token}.part"
        try:
            os.rename(hot.failed / sidecar, hidden_sidecar)
        except FileNotFoundError:
            hidden_sidecar = None
    for stem in free_names(rel.stem):
        target = dest / f"{stem}{rel.suffix}"
        if target.exists() or (hidden_sidecar is not None and (dest / f"{stem}.json").exists()):
            continue
        if hidden_sidecar is not None:
            try:
                place_no_clobber(hidden_sidecar, dest / f"{stem}.json")
            except FileExistsError:
                continue
        try:
            place_no_clobber(hidden_image, target)
        except FileExistsError:
            if hidden_sidecar is not None:  # taken meanwhile: the sidecar waits for the next name
                os.rename(dest / f"{stem}.json", hidden_sidecar)
            continue
        return target
    raise FileExistsError(f"no free name for {rel.name} in {dest}")

