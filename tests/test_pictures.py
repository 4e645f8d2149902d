"""Pictures that explain themselves: what the loss plot, the progress sheet, the presets
sheet and ``init`` tell someone who has only them to go by."""

from __future__ import annotations

import math
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from stylefold.cli import main
from stylefold.config import Config
from stylefold.hotfolder.admin import init_root
from stylefold.job.run import Done, JobCallbacks, Resident, Stopped, run_job
from stylefold.job.spec import Caps, JobSpec
from stylefold.media import imageio, outputs, render
from stylefold.media.render import SERIES_COLOURS, Cell, contact_sheet, loss_plot, progress_sheet, y_tick_labels
from stylefold.presets import Preset, PresetLibrary
from tests.conftest import write_photo, write_texture

PLAIN = re.compile(r"^\d+(\.\d+)?$")  # 0.01, 0.5, 1, 20, 5000
POWERS = re.compile(r"^[125]e-?\d+$")  # 1e-3, 2e-3, 1e0, 5e8


@pytest.fixture(autouse=True)
def _one_torch_thread() -> Iterator[None]:
    """Tiny convolutions gain nothing from threads (see tests/test_hotfolder.py)."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _colour_pixels(image: Image.Image, colour: tuple[int, int, int], tolerance: int = 12) -> int:
    pixels = np.asarray(image, dtype=np.int16)
    return int((np.abs(pixels - np.array(colour, dtype=np.int16)).max(axis=-1) <= tolerance).sum())


def _groups(flags: np.ndarray) -> list[tuple[int, int]]:
    """(first, last) index of each run of True."""
    runs, start = [], None
    for i, flag in enumerate([*flags.tolist(), False]):
        if flag and start is None:
            start = i
        elif not flag and start is not None:
            runs.append((start, i - 1))
            start = None
    return runs


def _longest_blank(image: Image.Image, axis: int) -> int:
    """The longest run of all-white rows (axis=1) or columns (axis=0)."""
    blank = (np.asarray(image.convert("RGB")) >= 245).all(axis=-1).all(axis=axis)
    return max((last - first + 1 for first, last in _groups(blank)), default=0)


def _rows(steps: int = 80) -> list[dict[str, float]]:
    return [{"step": float(s), "style_loss": 1e3 * math.exp(-s / 20) + 10, "content_loss": 0.5 + s / 400,
             "tv_loss": 0.02, "total_loss": 1e3 * math.exp(-s / 20) + 10.52 + s / 400} for s in range(1, steps + 1)]


# ---------------------------------------------------------------- the loss plot


@pytest.mark.parametrize("lo", range(-14, 12))
def test_y_tick_labels_are_all_of_one_notation(lo: int) -> None:
    for span in range(1, 17):
        labels = y_tick_labels(lo, lo + span)
        texts = list(labels.values())
        assert all(PLAIN.match(t) for t in texts) or all(POWERS.match(t) for t in texts), (lo, span, texts)
        for value, text in labels.items():
            assert float(text) == pytest.approx(value), text
        assert min(labels) >= 10.0**lo * 0.999 and max(labels) <= 10.0 ** (lo + span) * 1.001


def test_the_ranges_that_used_to_mix_notations_no_longer_do() -> None:
    assert list(y_tick_labels(-4, 0).values()) == ["1e-4", "1e-3", "1e-2", "1e-1", "1e0"]
    assert list(y_tick_labels(-2, 1).values()) == ["0.01", "0.1", "1", "10"]
    assert list(y_tick_labels(2, 4).values()) == ["1e2", "2e2", "5e2", "1e3", "2e3", "5e3", "1e4"]


def _frame(plot: Image.Image) -> tuple[int, int, int, int]:
    """Left, top, right, bottom of the plot's dark frame."""
    dark = (np.asarray(plot) < 200).all(axis=-1)  # the frame, not the light grid (225)
    cols = np.flatnonzero(dark.sum(axis=0) > 0.5 * plot.height)
    rows = np.flatnonzero(dark.sum(axis=1) > 0.5 * plot.width)
    return int(cols.min()), int(rows.min()), int(cols.max()), int(rows.max())


def test_both_axes_have_titles() -> None:
    plot = loss_plot(_rows(), title="cat.jpg · ink.png")
    left, top, right, bottom = _frame(plot)
    ink = (np.asarray(plot) < 140).all(axis=-1)
    # Left of the frame: the tick labels, and further left, apart, the y axis's title turned upright.
    columns = _groups(ink[top:bottom, : left - 2].any(axis=0))
    assert len(columns) >= 2, columns
    first, last = columns[0]
    title_rows = np.flatnonzero(ink[top:bottom, first : last + 1].any(axis=1))
    assert last - first + 1 < 25 and title_rows.max() - title_rows.min() > 120  # tall and narrow
    # Under the frame: the step labels, then "step" in the middle.
    bands = _groups(ink[bottom + 6 :].any(axis=1))
    assert len(bands) >= 2, bands
    word = np.flatnonzero(ink[bottom + 6 + bands[-1][0] : bottom + 7 + bands[-1][1]].any(axis=0))
    assert abs((word.min() + word.max()) / 2 - (left + right) / 2) < 10
    assert word.max() - word.min() < 60


def test_the_style_line_shows_where_the_total_equals_it_and_so_does_the_total() -> None:
    rows = [{k: v for k, v in row.items() if k != "total_loss"} for row in _rows()]
    coinciding = [{**row, "total_loss": row["style_loss"]} for row in rows]
    style, total = SERIES_COLOURS["style_loss"], SERIES_COLOURS["total_loss"]
    alone = _colour_pixels(loss_plot(rows), style)
    total_alone = _colour_pixels(loss_plot([{"step": r["step"], "total_loss": r["style_loss"]} for r in rows]), total)
    both = loss_plot(coinciding)
    assert _colour_pixels(both, style) > 0.4 * alone
    assert _colour_pixels(both, total) > 0.5 * total_alone


def test_the_subtitle_is_a_line_of_its_own_under_the_title() -> None:
    def bands_above_frame(plot: Image.Image) -> int:
        top = _frame(plot)[1]
        return len(_groups((np.asarray(plot)[: top - 2] < 200).any(axis=-1).any(axis=1)))

    without = loss_plot(_rows(), title="cat.jpg · ink.png")
    with_it = loss_plot(_rows(), title="cat.jpg · ink.png", subtitle="named preset book · 80 steps · 4.2 s")
    assert bands_above_frame(with_it) == bands_above_frame(without) + 1  # title, subtitle, legend
    very_long = loss_plot(_rows(), title="x" * 400, subtitle="y" * 400)
    assert very_long.size == (800, 480)


@pytest.mark.parametrize(("args", "expected"), [
    (("named preset book", 300, 41.234), "named preset book · 300 steps · 41.2 s"),
    (("book", 1, 75.0), "preset book · 1 step · 1 min 15 s"),
    (("folder preset inbox/a/preset.json", 2000, 7322.0),
     "folder preset inbox/a/preset.json · 2000 steps · 2 h 02 min"),
    (("", None, None), ""),
])
def test_run_caption_names_the_preset_the_steps_and_the_time(args: tuple[Any, ...], expected: str) -> None:
    assert render.run_caption(*args) == expected


def test_write_logs_puts_the_preset_steps_and_seconds_under_both_titles(tmp_path: Path,
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    seen: dict[str, str] = {}
    real_plot, real_sheet = render.loss_plot, render.progress_sheet

    def plot(rows: Any, **kwargs: Any) -> Image.Image:
        seen["plot"] = kwargs["subtitle"]
        return real_plot(rows, **kwargs)

    def sheet(snapshots: Any, **kwargs: Any) -> Image.Image:
        seen["sheet"] = kwargs["subtitle"]
        return real_sheet(snapshots, **kwargs)

    monkeypatch.setattr(render, "loss_plot", plot)
    monkeypatch.setattr(render, "progress_sheet", sheet)
    (tmp_path / "logs").mkdir()
    paths = outputs.OutputPaths.for_base(tmp_path, tmp_path / "logs", "cat-ink", ".jpg")
    report = {"preset": {"source": "named preset gatys"}, "steps_run": 80, "seconds": {"total": 12.34}}
    rows = [{**row, "elapsed_s": row["step"] / 10} for row in _rows()]
    outputs.write_logs(paths, rows, report, [(0, Image.new("RGB", (8, 8)))], "cat.jpg · ink.png")
    assert seen == {"plot": "named preset gatys · 80 steps · 12.3 s", "sheet": "named preset gatys · 80 steps · 12.3 s"}
    assert paths.plot.is_file() and paths.progress.is_file()


# ---------------------------------------------------------------- the progress sheet


def test_step_zero_is_captioned_original() -> None:
    snap = Image.new("RGB", (64, 48), (10, 200, 30))
    assert render.snapshot_caption(0) == "original" and render.snapshot_caption(25) == "step 25"
    assert progress_sheet([(0, snap)]).tobytes() == contact_sheet([("original", snap)]).tobytes()


@pytest.mark.parametrize("size", [(256, 192), (192, 256), (256, 144)], ids=["4:3", "3:4", "16:9"])
def test_the_sheet_has_no_wide_empty_band(size: tuple[int, int]) -> None:
    snaps = [(step, Image.new("RGB", size, (200, 40, 90))) for step in range(0, 45, 5)]
    sheet = progress_sheet(snaps, title="photo.jpg · brushstrokes.png", subtitle="preset book · 40 steps · 9.2 s")
    pad = 256 // 24
    assert _longest_blank(sheet, axis=1) <= 2 * pad  # rows: between title, pictures and captions
    assert _longest_blank(sheet, axis=0) <= 2 * pad  # columns: between pictures


def test_a_one_snapshot_sheet_is_wide_enough_for_its_title() -> None:
    sheet = progress_sheet([(3, Image.new("RGB", (64, 48)))], cell=64, title="photo.jpg · brushstrokes.png")
    assert sheet.width > 64 + 2 * 6 + 60


@pytest.fixture
def files(tmp_path: Path) -> tuple[Path, Path]:
    return write_photo(tmp_path / "photo.jpg", 48, 40), write_texture(tmp_path / "tex.png", size=32)


def _spec(files: tuple[Path, Path], **changes: Any) -> JobSpec:
    preset = Preset(steps=4, size=32, init="noise", style="tex.png", snapshot_every=2).model_copy(update=changes)
    return JobSpec.for_files("job-1", files[0], preset, "test", [(files[1], 1.0)], Caps())


def test_the_first_snapshot_of_a_run_is_the_original(extractor: Any, files: tuple[Path, Path]) -> None:
    outcome = run_job(_spec(files), Resident(extractor))
    assert isinstance(outcome, Done)
    snapshots = outcome.rendered.snapshots
    assert [step for step, _ in snapshots] == [0, 2, 4]
    original = imageio.fit_short_side(imageio.load_image(files[0], max_pixels=10**8).image, 32)
    first = np.asarray(snapshots[0][1], dtype=int)
    assert first.shape == np.asarray(original).shape
    assert np.abs(first - np.asarray(original, dtype=int)).max() <= 2  # the photo, not the noise it started from
    assert np.abs(np.asarray(snapshots[1][1], dtype=int) - first).mean() > 10


def test_no_snapshots_no_original_and_no_sheet(extractor: Any, files: tuple[Path, Path]) -> None:
    outcome = run_job(_spec(files, snapshot_every=0), Resident(extractor))
    assert isinstance(outcome, Done) and outcome.rendered.snapshots == []


def test_a_resumed_run_keeps_one_original(extractor: Any, files: tuple[Path, Path]) -> None:
    spec, resident = _spec(files, snapshot_every=1), Resident(extractor)
    steps: list[int] = []
    stopped = run_job(spec, resident, JobCallbacks(on_step=lambda info: steps.append(info.step),
                                                   should_stop=lambda: len(steps) >= 2))
    assert isinstance(stopped, Stopped)
    assert [s for s, _ in stopped.checkpoint.snapshots] == [0, 1, 2]
    done = run_job(spec, resident, resume=stopped.checkpoint)
    assert isinstance(done, Done) and [s for s, _ in done.rendered.snapshots] == [0, 1, 2, 3, 4]


# ---------------------------------------------------------------- the presets sheet


def test_an_inset_sits_in_the_bottom_right_corner_of_its_picture() -> None:
    blue, red = (20, 40, 220), (230, 20, 20)
    sheet = contact_sheet([Cell("gatys · 300 steps", Image.new("RGB", (96, 72), blue),
                                inset=Image.new("RGB", (50, 50), red))], cell=96)
    ys, xs = np.nonzero(np.abs(np.asarray(sheet, dtype=int) - red).max(axis=-1) <= 2)
    picture = np.nonzero(np.abs(np.asarray(sheet, dtype=int) - blue).max(axis=-1) <= 2)
    assert 25 <= xs.max() - xs.min() + 1 <= 40 and 25 <= ys.max() - ys.min() + 1 <= 40  # about a third
    assert xs.min() > (picture[1].min() + picture[1].max()) / 2  # right half
    assert ys.min() > (picture[0].min() + picture[0].max()) / 2  # bottom half
    assert xs.max() < picture[1].max() and ys.max() < picture[0].max()  # inside the picture


def test_a_caption_too_wide_for_its_cell_takes_a_second_line() -> None:
    picture = Image.new("RGB", (64, 48), (20, 40, 220))
    short = contact_sheet([Cell("book", picture)], cell=64)
    long = contact_sheet([Cell("stained-glass · 300 steps", picture)], cell=64)
    assert long.width == short.width and long.height > short.height


def test_the_presets_sheet_shows_each_preset_s_style_and_steps(extractor: Any, tmp_path: Path,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    from stylefold.cli.presets import preset_sheet

    cells: list[Cell] = []
    real = render.contact_sheet

    def recording(items: Any, **kwargs: Any) -> Image.Image:
        cells.extend(items)
        return real(items, **kwargs)

    monkeypatch.setattr(render, "contact_sheet", recording)
    photo = write_photo(tmp_path / "p.jpg", 48, 40)
    library = PresetLibrary.default()
    sheet = preset_sheet(Resident(extractor), library, Config(root=tmp_path), photo, names=["book"], size=32, steps=2)
    assert [c.caption for c in cells] == ["original", "book · 2 steps"]
    assert cells[0].inset is None
    style = Image.open(library.resolve_style(library.load("book").style_refs()[0].path))
    inset = cells[1].inset
    assert inset is not None and inset.width / inset.height == pytest.approx(style.width / style.height, rel=0.05)
    assert sheet.width > 2 * 32


# ---------------------------------------------------------------- init


def test_init_makes_an_inbox_folder_for_each_built_in_preset(tmp_path: Path,
                                                              capsys: pytest.CaptureFixture[str]) -> None:
    names = PresetLibrary.default().names()
    assert {"book", "gatys"} <= set(names)
    root = tmp_path / "studio"
    (root / "inbox" / "gatys").mkdir(parents=True)
    (root / "inbox" / "gatys" / "waiting.jpg").write_bytes(b"not touched")
    created = init_root(root)
    for name in names:
        assert (root / "inbox" / name).is_dir(), name
        assert ((root / "inbox" / name) in created) == (name != "gatys"), name
    assert (root / "inbox" / "gatys" / "waiting.jpg").read_bytes() == b"not touched"
    assert init_root(root) == []

    assert main(["init", str(tmp_path / "other")]) == 0
    out = capsys.readouterr().out
    assert f"created {tmp_path / 'other' / 'inbox' / 'book'}" in out
