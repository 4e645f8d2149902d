"""The `book` preset reproduces the chapter's loss trajectory (issue: fidelity).

Same weights file, same images, content init, fp32: every step's total loss within
1e-4 relative of the chapter's own loop; bf16 within 2% at the last step. Runs through
`stylefold run`, so image loading, resizing and the CSV are part of what is checked.
"""

from __future__ import annotations

import csv
from pathlib import Path

import pytest

from stylefold.cli import main

from .chapter_reference import chapter_losses
from .conftest import write_photo, write_texture

STEPS = 20
SIZE = 64


@pytest.fixture(scope="module")
def images(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    folder = tmp_path_factory.mktemp("fidelity")
    # Larger than SIZE so both loops really resize (the chapter's Resize, our fit).
    return write_photo(folder / "taj.jpg", 120, 90), write_texture(folder / "painting.png", 100)


@pytest.fixture(scope="module")
def chapter_rows(images: tuple[Path, Path], weights_file: Path) -> list[tuple[int, float, float, float, float]]:
    content, style = images
    return chapter_losses(content, style, weights_file, steps=STEPS, size=SIZE, init="content")


def _run_book(tmp_path: Path, images: tuple[Path, Path], weights: Path, precision: str) -> list[dict[str, str]]:
    content, style = images
    out = tmp_path / "out"
    code = main([
        "run", str(content), "--preset", "book", "--weights", str(weights), "--out", str(out),
        "--set", f"style={style}", "--set", f"steps={STEPS}", "--set", f"size={SIZE}",
        "--set", "init=content", "--set", f"precision={precision}",
    ])
    assert code == 0
    with (out / "logs" / "taj-painting.losses.csv").open() as f:
        return list(csv.DictReader(f))


def test_book_fp32_matches_chapter_every_step(tmp_path, images, weights_file, chapter_rows):
    rows = _run_book(tmp_path, images, weights_file, "fp32")
    assert len(rows) == STEPS == len(chapter_rows)
    for ours, theirs in zip(rows, chapter_rows):
        step, style, content, total, _ = theirs
        assert int(ours["step"]) == step
        assert float(ours["total_loss"]) == pytest.approx(total, rel=1e-4), f"step {step}"
        assert float(ours["style_loss"]) == pytest.approx(style, rel=1e-4), f"step {step}"
        assert float(ours["content_loss"]) == pytest.approx(content, rel=1e-4, abs=1e-12), f"step {step}"
    # The trajectory must actually move, or matching it would prove little.
    assert chapter_rows[-1][3] != pytest.approx(chapter_rows[0][3], rel=1e-2)


def test_book_bf16_within_two_percent_at_last_step(tmp_path, images, weights_file, chapter_rows):
    rows = _run_book(tmp_path, images, weights_file, "bf16")
    assert float(rows[-1]["total_loss"]) == pytest.approx(chapter_rows[-1][3], rel=0.02)
