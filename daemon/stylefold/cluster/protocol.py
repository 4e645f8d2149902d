"""What travels between the hot-folder daemon (the coordinator) and its workers.

One Celery task, ``stylefold.render``, whose only argument is a ``RenderMessage`` as a
JSON object: the job id, a delivery id, the ``JobSpec`` and the coordinator's weights
identity. Everything else goes through plain Redis keys beside Celery's queue, all
under ``stylefold:``:

- ``blob:<sha256>``: a photo or style image by content (workers cache them on disk);
- ``job:<id>:delivery``: the delivery the coordinator currently wants run. A message of
  another delivery is stale (a redelivery after its job went elsewhere) and is dropped;
- ``job:<id>:lease``: ``<worker>|<delivery>``, set NX by the worker that runs it and
  renewed every ``lease_s / 4``. While it lives no other worker runs the job (however
  Celery redelivers); when it lapses the coordinator counts the worker as dead;
- ``job:<id>:events``: a list of progress and checkpoint events (lossy by design);
- ``job:<id>:ckpt``: the latest checkpoint (torch, weights-only), which the
  coordinator copies into the claim folder and a redelivered job resumes from;
- ``job:<id>:rendered`` (hash of file name to bytes) then ``job:<id>:outcome``: the end;
- ``job:<id>:cancel``: the delivery the coordinator asks to stop (its SIGTERM);
- ``job:<id>:preview``: the job's preview as a PNG (``cluster.preview``), announced by
  a ``preview`` event;
- ``worker:<name>``: a worker's heartbeat record, in the set ``workers``.

Torch-free and celery-free: the coordinator's status and doctor read this.
"""

from __future__ import annotations

import json
import re
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from ..failures import FailureKind
from ..job.spec import JobSpec

__all__ = ["PREFIX", "TASK_NAME", "Keys", "Outcome", "RenderMessage", "queue_for", "redact", "text"]

PREFIX = "stylefold:"
TASK_NAME = "stylefold.render"
MESSAGE_VERSION = 1
JOB_ID = r"^[0-9a-f]{1,32}-[0-9a-f]{1,32}$"
DELIVERY = r"^[0-9a-f]{32}$"
WORKER_NAME = r"^[A-Za-z0-9_.@-]{1,64}$"
SHA256 = r"^[0-9a-f]{64}$"
# How long job keys outlive a coordinator that never comes back (a week).
JOB_TTL_S = 7 * 86_400
BLOB_TTL_S = 2 * 86_400


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class RenderMessage(_Model):
    """The task's one argument. Validated by the worker as hostile input."""

    v: Literal[1] = 1
    job_id: Annotated[str, Field(pattern=JOB_ID)]
    delivery: Annotated[str, Field(pattern=DELIVERY)]
    spec: JobSpec
    weights: Annotated[str, Field(min_length=1, max_length=300)]
    checkpoint_every: Annotated[int, Field(ge=1, le=100_000)]

    def body(self) -> dict[str, Any]:
        # json round trip through JobSpec.to_json: file names that are not UTF-8 survive.
        data = json.loads(self.model_dump_json(exclude={"spec"}))
        data["spec"] = json.loads(self.spec.to_json())
        return data  # type: ignore[no-any-return]


class Outcome(_Model):
    """How a delivery ended, written by the worker (``job:<id>:outcome``)."""

    delivery: Annotated[str, Field(pattern=DELIVERY)]
    worker: Annotated[str, Field(pattern=WORKER_NAME)]
    end: Literal["done", "failed", "stopped", "device_error", "retry"]
    kind: FailureKind | None = None
    message: Annotated[str, Field(max_length=4000)] = ""
    files: dict[Annotated[str, Field(pattern=r"^[A-Za-z0-9_.-]{1,64}$")], Annotated[str, Field(pattern=SHA256)]] = {}
    step: Annotated[int, Field(ge=0)] = 0


class Keys:
    """The Redis key names of one job."""

    def __init__(self, job_id: str) -> None:
        if not re.match(JOB_ID, job_id):
            raise ValueError(f"not a job id: {job_id!r}")
        base = f"{PREFIX}job:{job_id}:"
        self.delivery = base + "delivery"
        self.lease = base + "lease"
        self.started = base + "started"
        self.events = base + "events"
        self.checkpoint = base + "ckpt"
        self.rendered = base + "rendered"
        self.outcome = base + "outcome"
        self.cancel = base + "cancel"
        self.preview = base + "preview"

    def all(self) -> list[str]:
        return [self.delivery, self.lease, self.started, self.events, self.checkpoint, self.rendered,
                self.outcome, self.cancel, self.preview]


def blob_key(sha256: str) -> str:
    if not re.match(r"^[0-9a-f]{64}$", sha256):
        raise ValueError(f"not a sha256: {sha256!r}")
    return f"{PREFIX}blob:{sha256}"


def worker_key(name: str) -> str:
    return f"{PREFIX}worker:{name}"


WORKERS_SET = f"{PREFIX}workers"


def queue_for(weights: str) -> str:
    """One queue per weights identity: a worker only ever receives jobs made for the
    weights it holds (results must not silently differ by box)."""
    import hashlib

    return f"stylefold.{hashlib.sha256(weights.encode()).hexdigest()[:16]}"


def text(value: Any) -> str | None:
    """A Redis reply as text (the client answers bytes)."""
    if value is None:
        return None
    return value.decode(errors="replace") if isinstance(value, bytes) else str(value)


def redact(url: str) -> str:
    """A broker URL fit for a log line: the password (and user) replaced by ***."""
    return re.sub(r"^(\w+://)[^@/]*@", r"\1***@", url)
