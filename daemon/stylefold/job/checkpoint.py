"""Checkpoints of a running job and the finished render kept until it is published.

A ``Checkpoint`` is the engine's state plus the loss rows and snapshots so far, and the
identity of the job description it was made under: a checkpoint of another description
(another preset, other styles, other caps) is never resumed. A ``Rendered`` is a
finished optimisation in memory; saved in the job's folder before anything is
published, it lets a crash after the image is out finish the logs without a second
result (rendered.png is lossless).
"""

from __future__ import annotations

import io
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from PIL import Image

from ..engine import conv_methods
from ..engine.pyramid import PyramidState
from ..engine.stylize import EngineState, best_from_payload, best_payload
from ..fsops import write_atomic

__all__ = ["Checkpoint", "Rendered", "png_bytes"]

Snapshots = list[tuple[int, Image.Image]]


@dataclass
class Checkpoint:
    """An interrupted render: enough to go on from ``step`` bit for bit. A coarse-to-fine
    job's also has its ``pyramid`` (scale, tile, the tiles so far; ``state`` is then the
    tile's); ``preview``: where the job's preview was written, if it was."""

    spec_identity: str
    state: EngineState
    rows: list[dict[str, float]]
    snapshots: Snapshots
    pyramid: PyramidState | None = None
    preview: str | None = None
    precision: str | None = None  # the run's: a job gone over to fp32 resumes in fp32
    # How each conv size ran (engine/conv_methods.py), taken up again on resume: the
    # methods differ by fp32 rounding, and a resumed job must go on as it went.
    conv_methods: list[tuple[list[int], str]] = field(default_factory=conv_methods.snapshot)

    @property
    def step(self) -> int:
        """The last step run, numbered as in the loss log (across scales and tiles)."""
        return self.pyramid.global_step if self.pyramid is not None else self.state.step

    def save(self, path: Path) -> None:
        """torch.save to a temp name, then rename: a checkpoint is whole or absent."""
        payload = {
            "spec_identity": self.spec_identity, "step": self.state.step, "image": self.state.image,
            "optimizer": self.state.optimizer_state, "rows": self.rows,
            "snapshots": [(s, png_bytes(img)) for s, img in self.snapshots],
            "recent_totals": self.state.recent_totals,
            "best": best_payload(self.state.best),
            "pyramid": self.pyramid.to_payload() if self.pyramid is not None else None,
            "preview": self.preview,
            "precision": self.precision,
            "conv_methods": self.conv_methods,
        }
        buf = io.BytesIO()
        torch.save(payload, buf)
        write_atomic(path, buf.getvalue())

    @classmethod
    def load(cls, path: Path) -> Checkpoint:
        # weights_only: a checkpoint file is data; unpickling it can never run code.
        return cls._from_payload(torch.load(path, map_location="cpu", weights_only=True))

    @classmethod
    def from_bytes(cls, data: bytes) -> Checkpoint:
        """``load`` of a checkpoint's bytes (one a worker sent), with the same care."""
        return cls._from_payload(torch.load(io.BytesIO(data), map_location="cpu", weights_only=True))

    @classmethod
    def _from_payload(cls, payload: Any) -> Checkpoint:
        state = EngineState(step=int(payload["step"]), image=payload["image"], optimizer_state=payload["optimizer"],
                            recent_totals=[float(x) for x in payload.get("recent_totals", [])],
                            best=best_from_payload(payload.get("best")))
        snaps = [(int(s), Image.open(io.BytesIO(b)).convert("RGB")) for s, b in payload["snapshots"]]
        pyramid = PyramidState.from_payload(payload["pyramid"]) if payload.get("pyramid") is not None else None
        preview, precision = payload.get("preview"), payload.get("precision")
        return cls(str(payload.get("spec_identity", "")), state, list(payload["rows"]), snaps, pyramid,
                   str(preview) if preview is not None else None, str(precision) if precision is not None else None,
                   payload.get("conv_methods") or [])


@dataclass
class Rendered:
    """A finished optimisation, in memory, not yet written anywhere."""

    image: Image.Image
    exif: bytes | None
    ext: str
    base: str
    quality: int
    rows: list[dict[str, float]]
    snapshots: Snapshots
    report: dict[str, Any]
    title: str

    def save(self, folder: Path) -> None:
        write_atomic(folder / "rendered.png", png_bytes(self.image))
        for step, snap in self.snapshots:
            write_atomic(folder / f"snapshot-{step}.png", png_bytes(snap))
        meta = {"exif": self.exif.hex() if self.exif else None, "ext": self.ext, "base": self.base,
                "quality": self.quality, "rows": self.rows, "snapshots": [s for s, _ in self.snapshots],
                "report": self.report, "title": self.title}
        write_atomic(folder / "rendered.json", json.dumps(meta).encode())

    @classmethod
    def load(cls, folder: Path) -> Rendered | None:
        """The render saved in ``folder``, or None if there is none (or it is damaged)."""
        try:
            meta = json.loads((folder / "rendered.json").read_bytes())
            image = Image.open(folder / "rendered.png").convert("RGB")
            snaps = [(s, Image.open(folder / f"snapshot-{s}.png").convert("RGB")) for s in meta["snapshots"]]
        except (OSError, ValueError, KeyError):
            return None
        return cls(image=image, exif=bytes.fromhex(meta["exif"]) if meta["exif"] else None, ext=meta["ext"],
                   base=meta["base"], quality=meta["quality"], rows=meta["rows"], snapshots=snaps,
                   report=meta["report"], title=meta["title"])


def png_bytes(image: Image.Image) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return buf.getvalue()
