"""The weights identity a coordinator and its workers must share.

What the report records (``engine.features.WeightsInfo``), reduced to what the weights
*are*: a file by its sha256, torchvision's ImageNet file by its hash-checked name, the
random weights by their seed. Computed by the coordinator from its settings without
loading torch (a coordinator box may have no GPU), by a worker from what it loaded.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Protocol

__all__ = ["IMAGENET_FILE", "identity_of_info", "identity_of_setting"]

# torchvision's VGG19_Weights.IMAGENET1K_V1 file; its name carries the sha256 prefix that
# torch.hub checks on download (tests compare it with torchvision's own).
IMAGENET_FILE = "vgg19-dcbb9e9d.pth"
RANDOM_SEED = 0  # engine.features.build_extractor's default seed


class _Info(Protocol):
    @property
    def source(self) -> str: ...
    @property
    def name(self) -> str: ...
    @property
    def sha256(self) -> str | None: ...


def identity_of_info(info: _Info) -> str:
    if info.source == "random":
        return info.name
    if info.source == "imagenet":
        return f"imagenet/{info.name}"
    return f"sha256:{info.sha256}"


def identity_of_setting(weights: str) -> str:
    """``--weights`` as the identity a worker loading it reports; a missing file is a
    ``ValueError`` naming it."""
    if weights == "random":
        return f"random(seed={RANDOM_SEED})"
    if weights == "imagenet":
        return f"imagenet/{IMAGENET_FILE}"
    path = Path(weights)
    try:
        with path.open("rb") as f:
            return "sha256:" + hashlib.file_digest(f, "sha256").hexdigest()
    except OSError as exc:
        raise ValueError(f"weights file {path}: {exc.strerror or exc}") from exc
