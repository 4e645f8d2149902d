"""Shared fixtures: tiny real images and a VGG19 weights file the tests write themselves.

No test downloads anything: weights are either ``random`` or a state dict saved here
from a seeded, randomly initialised torchvision vgg19 (features only, 80 MB).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image


def write_photo(path: Path, width: int = 96, height: int = 72, seed: int = 0) -> Path:
    """A smooth, photo-like RGB image (gradients plus blobs), saved by suffix."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    img = np.stack([x / width, y / height, 0.5 + 0.5 * np.sin((x + y) / 9.0)], axis=-1)
    for _ in range(4):
        cx, cy, r = rng.uniform(0, width), rng.uniform(0, height), rng.uniform(5, 20)
        img += (np.exp(-((x - cx) ** 2 + (y - cy) ** 2) / (2 * r * r))[..., None] * rng.uniform(-0.5, 0.5, 3))
    Image.fromarray((np.clip(img, 0, 1) * 255).astype(np.uint8)).save(path)
    return path


def write_texture(path: Path, size: int = 80, seed: int = 1) -> Path:
    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)).save(path)
    return path


@pytest.fixture
def photo(tmp_path: Path) -> Path:
    return write_photo(tmp_path / "photo.jpg")


@pytest.fixture
def style_image(tmp_path: Path) -> Path:
    return write_texture(tmp_path / "texture.png")


@pytest.fixture(scope="session")
def weights_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A torchvision vgg19 state dict (features only) from seeded random init."""
    import torch
    import torchvision

    path = tmp_path_factory.mktemp("weights") / "vgg19_seeded.pth"
    torch.manual_seed(1234)
    features = torchvision.models.vgg19().features.state_dict()
    torch.save({f"features.{k}": v for k, v in features.items()}, path)
    return path


def book_params(**changes: Any) -> Any:
    """The engine's parameters of the book preset (the preset model's defaults), with ``changes``."""
    import dataclasses

    from stylefold.job.run import engine_params
    from stylefold.presets import Preset

    return dataclasses.replace(engine_params(Preset(), "fp32"), **changes)


@pytest.fixture(scope="session")
def extractor():
    """One random-weights extractor per test session, as the daemon holds one per process."""
    from stylefold.engine.features import build_extractor

    return build_extractor("random", "cpu")
