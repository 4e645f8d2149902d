"""The coordinator's side of one job on the broker: send it, follow it, take its end.

``Dispatch`` is shared by the daemon's lanes (one Celery app, one Redis client);
``Delivery`` is the record in the claim folder (``cluster.json``) of which delivery is
current and how many workers died running the job: it survives a ``kill -9`` of the
daemon, so a restart attaches to the job still running on a worker instead of sending
it twice, and poison is counted across restarts.
"""

from __future__ import annotations

import hashlib
import json
import logging
import threading
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import redis
from pydantic import ValidationError

from ..fsops import write_atomic
from ..job.spec import JobSpec
from .protocol import JOB_TTL_S, TASK_NAME, Keys, Outcome, RenderMessage, blob_key
from .store import TransferTooLarge, get_capped, put_blob

__all__ = ["Delivery", "Dispatch"]

logger = logging.getLogger(__name__)

STATE_FILE = "cluster.json"


@dataclass
class Delivery:
    """Kept in the claim folder: the current delivery, the deaths so far and the preview."""

    delivery: str | None = None
    deaths: int = 0
    workers: list[str] = field(default_factory=list)  # those that died on it, for the error sentence
    preview: str | None = None  # where this box wrote the job's preview, once it came

    @classmethod
    def load(cls, folder: Path) -> Delivery:
        try:
            data = json.loads((folder / STATE_FILE).read_bytes())
            preview = data.get("preview")
            return cls(data.get("delivery"), int(data.get("deaths", 0)), list(data.get("workers", [])),
                       preview if isinstance(preview, str) else None)
        except (OSError, ValueError, TypeError):
            return cls()

    def save(self, folder: Path) -> None:
        write_atomic(folder / STATE_FILE, json.dumps(vars(self)).encode())


@dataclass
class Dispatch:
    client: redis.Redis
    app: Any  # the Celery app (celery is untyped)
    weights: str
    queue: str
    checkpoint_every: int
    lease_s: float
    max_transfer: int
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def send(self, spec: JobSpec, folder: Path, checkpoint: Path, state: Delivery) -> str:
        """A new delivery of ``spec``: its files by content, its checkpoint if the broker
        lost it, then the message. Recorded in the claim before the message goes."""
        keys = Keys(spec.job_id)
        self._upload(Path(spec.input.path), spec.input.sha256, f"the photo {spec.input.name}")
        for style in spec.styles:
            self._upload(Path(style.path), style.sha256, f"the style {style.name}")
        if checkpoint.is_file() and not self.client.exists(keys.checkpoint):
            data = checkpoint.read_bytes()
            if len(data) <= self.max_transfer:
                self.client.set(keys.checkpoint, data, ex=JOB_TTL_S)
        delivery = uuid.uuid4().hex
        state.delivery = delivery
        state.save(folder)
        pipe = self.client.pipeline()
        pipe.delete(keys.outcome, keys.cancel, keys.started, keys.rendered)
        pipe.set(keys.delivery, delivery, ex=JOB_TTL_S)
        pipe.execute()
        message = RenderMessage(job_id=spec.job_id, delivery=delivery, spec=spec, weights=self.weights,
                                checkpoint_every=self.checkpoint_every)
        with self._lock:  # one producer for the lanes
            self.app.send_task(TASK_NAME, args=[message.body()], queue=self.queue)
        return delivery

    def _upload(self, path: Path, sha256: str, what: str) -> None:
        size = path.stat().st_size
        if size > self.max_transfer:
            raise TransferTooLarge(what, size, self.max_transfer)
        data = path.read_bytes()
        if hashlib.sha256(data).hexdigest() != sha256:
            # The claimed file changed under us: nothing a worker makes of it would be this job.
            raise OSError(f"{path} no longer has the content the job was described with")
        put_blob(self.client, data, sha256)

    def outcome(self, keys: Keys, delivery: str) -> Outcome | None:
        raw: Any = self.client.get(keys.outcome)
        if raw is None:
            return None
        try:
            outcome = Outcome.model_validate_json(raw)
        except ValidationError:
            logger.warning("an unreadable outcome for job %s is ignored", keys.delivery)
            return None
        return outcome if outcome.delivery == delivery else None

    def rendered_files(self, keys: Keys, outcome: Outcome) -> dict[str, bytes] | None:
        """The render's files, checked against the sha256 the outcome names."""
        files: dict[str, bytes] = {}
        for name, sha in outcome.files.items():
            data: Any = self.client.hget(keys.rendered, name)
            if data is None or hashlib.sha256(data).hexdigest() != sha:
                return None
            files[name] = bytes(data)
        return files

    def checkpoint(self, keys: Keys) -> bytes | None:
        return get_capped(self.client, keys.checkpoint, self.max_transfer, "the checkpoint")

    def forget(self, job_id: str, photo_sha256: str | None = None) -> None:
        """The job is finished here: its keys and its photo go (the broker's memory must
        not grow with the throughput); style blobs, shared by jobs, lapse by themselves. A
        job of the same photo in flight meanwhile gets it sent again (``retry``)."""
        try:
            photo = [blob_key(photo_sha256)] if photo_sha256 else []
            self.client.delete(*Keys(job_id).all(), *photo)
        except redis.RedisError as exc:
            logger.warning("could not remove job %s from the broker (%s); its keys lapse in a week", job_id, exc)
