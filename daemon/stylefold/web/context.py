"""What every route of one web process shares, and how a job id is looked up."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from ..config import Config
from ..hotfolder.journal import JobRecord
from ..hotfolder.layout import HotFolder
from .events import EventHub
from .jobs import JOB_ID, JobFiles, job_view
from .reader import JournalReader
from .settings import WebSettings
from .status import StatusBoard
from .uploads import UploadBook

__all__ = ["Context", "Lookup"]


@dataclass
class Lookup:
    """A job id (or upload id) as found: its journal record once it has one."""

    asked: str
    record: JobRecord | None
    view: dict[str, Any]


@dataclass
class Context:
    config: Config
    settings: WebSettings
    hot: HotFolder = field(init=False)
    reader: JournalReader = field(init=False)
    files: JobFiles = field(init=False)
    board: StatusBoard = field(init=False)
    uploads: UploadBook = field(init=False)
    hub: EventHub = field(init=False)

    def __post_init__(self) -> None:
        self.hot = HotFolder(self.config.root)
        self.reader = JournalReader(self.hot.journal)
        self.files = JobFiles(self.hot)
        self.board = StatusBoard(self.config, self.hot, self.reader, self.files)
        self.uploads = UploadBook(self.hot)
        self.hub = EventHub(self.reader)

    def lookup(self, job_id: str, *, detail: bool = False) -> Lookup | None:
        """A job by its id or an upload's; None when there is no such job."""
        if not JOB_ID.match(job_id):
            return None
        if job_id.startswith("up-"):
            return self._upload(job_id, detail)
        record = self.reader.get(job_id)
        if record is not None:
            return Lookup(job_id, record, job_view(record, self.files, detail=detail))
        meta = self.files.claim_meta(job_id)
        if meta is None:
            return None
        return Lookup(job_id, None, _waiting(job_id, meta.name, meta.source, "claimed; starts soon", job_id))

    def _upload(self, upload_id: str, detail: bool) -> Lookup | None:
        upload = self.uploads.get(upload_id)
        if upload is None:
            return None
        name = upload.source.rsplit("/", 1)[-1]
        for _ in range(2):  # claimed between the inbox check and the queue scan: look again
            found = self.uploads.resolve(upload, self.reader)
            if isinstance(found, JobRecord):
                view = job_view(found, self.files, detail=detail)
                return Lookup(upload_id, found, {**view, "id": upload_id, "job_id": found.id, "upload_id": upload_id})
            if isinstance(found, str):
                return Lookup(upload_id, None, _waiting(upload_id, name, upload.source, "claimed; starts soon", found))
            reason = next((q["reason"] for q in self.board.queue() if q["source"] == upload.source), None)
            if reason is not None:
                return Lookup(upload_id, None, _waiting(upload_id, name, upload.source, reason, None))
        return None  # it left the inbox without becoming a job (taken away)

def _waiting(asked: str, name: str, source: str, reason: str, job_id: str | None) -> dict[str, Any]:
    return {"id": asked, "job_id": job_id, "name": name, "source": source, "state": "waiting", "reason": reason,
            "step": None, "steps": None, "total_loss": None, "result": None, "error": None}
