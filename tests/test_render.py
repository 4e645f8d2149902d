"""Loss plot and progress sheet, checked on the pixels they produce."""

from __future__ import annotations

import math

import numpy as np
import pytest
from PIL import Image

from stylefold.media.render import SERIES_COLOURS, loss_plot, progress_sheet

SERIES = ("style_loss", "content_loss", "tv_loss", "total_loss")


def _rows(steps: int = 60, **overrides: float) -> list[dict[str, float]]:
    """Decaying losses, each series in its own decades so no line hides another."""
    rows = []
    for step in range(steps):
        decay = math.exp(-step / 15)
        row = {
            "step": float(step),
            "style_loss": 1e6 * decay + 1e3,
            "content_loss": 5.0 + 20 * (1 - decay),
            "tv_loss": 0.05 + 0.2 * decay,
            "total_loss": 1e8 * decay + 1e7,
        }
        row.update(overrides)
        rows.append(row)
    return rows


def _colour_pixels(image: Image.Image, colour: tuple[int, int, int], tolerance: int = 12) -> int:
    """Pixels within `tolerance` of `colour` per channel (the plot is antialiased)."""
    pixels = np.asarray(image, dtype=np.int16)
    return int((np.abs(pixels - np.array(colour, dtype=np.int16)).max(axis=-1) <= tolerance).sum())


def _non_white(image: Image.Image) -> int:
    return int((np.asarray(image) < 250).any(axis=-1).sum())


def test_loss_plot_has_the_requested_size_and_is_drawn() -> None:
    plot = loss_plot(_rows(), title="cat-mosaic", size=(640, 400))
    assert plot.size == (640, 400)
    assert plot.mode == "RGB"
    assert _non_white(plot) > 0.01 * 640 * 400
    # Mostly background: a chart, not a filled rectangle.
    assert _non_white(plot) < 0.5 * 640 * 400


def test_every_series_with_data_is_drawn_in_its_colour() -> None:
    plot = loss_plot(_rows())
    for key in SERIES:
        assert _colour_pixels(plot, SERIES_COLOURS[key]) > 50, key


def test_a_series_that_is_all_zero_is_not_drawn() -> None:
    plot = loss_plot(_rows(tv_loss=0.0))
    assert _colour_pixels(plot, SERIES_COLOURS["tv_loss"]) == 0
    assert _colour_pixels(plot, SERIES_COLOURS["style_loss"]) > 50


def test_a_series_absent_from_the_rows_is_not_drawn() -> None:
    rows = [{k: v for k, v in row.items() if k != "content_loss"} for row in _rows()]
    plot = loss_plot(rows)
    assert _colour_pixels(plot, SERIES_COLOURS["content_loss"]) == 0
    assert _colour_pixels(plot, SERIES_COLOURS["total_loss"]) > 50


def test_nan_inf_zero_and_negative_points_are_skipped() -> None:
    rows = _rows()
    for index, bad in zip((3, 10, 11, 30, 59), (math.nan, math.inf, -math.inf, 0.0, -4.0)):
        rows[index]["style_loss"] = bad
    rows[20]["content_loss"] = math.nan
    plot = loss_plot(rows)
    assert plot.size == (800, 480)
    assert _colour_pixels(plot, SERIES_COLOURS["style_loss"]) > 50
    assert _colour_pixels(plot, SERIES_COLOURS["content_loss"]) > 50


def test_a_series_with_only_unusable_values_is_not_drawn() -> None:
    rows = _rows()
    for row, bad in zip(rows, [math.nan, math.inf, 0.0, -1.0] * 100):
        row["style_loss"] = bad
    plot = loss_plot(rows)
    assert _colour_pixels(plot, SERIES_COLOURS["style_loss"]) == 0
    assert _colour_pixels(plot, SERIES_COLOURS["tv_loss"]) > 50


def test_no_usable_value_at_all_gives_an_empty_frame() -> None:
    bad = [0.0, math.nan, math.inf, -2.0]
    rows = [{"step": float(i), **{key: value for key in SERIES}} for i, value in enumerate(bad)]
    plot = loss_plot(rows, title="nothing")
    assert plot.size == (800, 480)
    for key in SERIES:
        assert _colour_pixels(plot, SERIES_COLOURS[key]) == 0, key
    assert _non_white(plot) > 500  # frame, title and the "no data" note
    assert plot.tobytes() == loss_plot([], title="nothing").tobytes()


def test_a_single_row_is_plotted() -> None:
    plot = loss_plot(_rows(steps=1))
    for key in SERIES:
        assert _colour_pixels(plot, SERIES_COLOURS[key]) > 10, key


def test_rows_out_of_step_order_draw_the_same_plot() -> None:
    rows = _rows()
    assert loss_plot(rows[::-1]).tobytes() == loss_plot(rows).tobytes()


def test_rows_read_from_losses_csv_as_text_plot_like_numbers() -> None:
    rows = _rows()
    as_text = [{key: repr(value) for key, value in row.items()} for row in rows]
    assert loss_plot(as_text).tobytes() == loss_plot(rows).tobytes()  # type: ignore[arg-type]


def test_a_plot_too_small_to_read_is_refused() -> None:
    with pytest.raises(ValueError, match="at least"):
        loss_plot(_rows(), size=(100, 60))


def _snapshot(size: tuple[int, int], colour: tuple[int, int, int] = (200, 40, 90)) -> Image.Image:
    return Image.new("RGB", size, colour)


def test_sheet_lays_its_rows_as_evenly_as_the_columns_allow() -> None:
    cell = 64

    def sheet(count: int) -> Image.Image:
        return progress_sheet([(s * 10, _snapshot((64, 64))) for s in range(count)], columns=4, cell=cell)

    four, five, eight, nine = sheet(4), sheet(5), sheet(8), sheet(9)
    assert five.mode == "RGB"
    assert 4 * cell < four.width < 5 * cell and four.width == eight.width  # rows of four
    assert 3 * cell < five.width < 4 * cell  # 3 + 2, not 4 + 1
    assert nine.width == five.width  # 3 + 3 + 3, not 4 + 4 + 1
    assert cell < four.height < 2 * cell
    assert 2 * cell < five.height < 3 * cell and five.height == eight.height
    assert nine.height - eight.height > cell
    # Five coloured cells, each a full cell x cell square.
    assert _colour_pixels(five, (200, 40, 90), tolerance=2) == 5 * cell * cell


def test_sheet_labels_each_snapshot_under_its_cell() -> None:
    cell = 64
    sheet = progress_sheet([(0, _snapshot((64, 64)))], cell=cell)
    pixels = np.asarray(sheet)
    rows_with_colour = np.flatnonzero((pixels == (200, 40, 90)).all(axis=-1).any(axis=1))
    below = pixels[rows_with_colour.max() + 1 :]
    assert (below < 128).all(axis=-1).sum() > 10  # dark text of "step 0"


def test_sheet_keeps_the_aspect_ratio_of_a_wide_snapshot() -> None:
    sheet = progress_sheet([(100, _snapshot((300, 75)))], cell=128)
    mask = (np.abs(np.asarray(sheet, dtype=np.int16) - (200, 40, 90)).max(axis=-1) <= 2)
    ys, xs = np.nonzero(mask)
    width, height = xs.max() - xs.min() + 1, ys.max() - ys.min() + 1
    assert width == 128
    assert abs(height - 32) <= 1


def test_sheet_with_a_title_is_taller() -> None:
    snapshots = [(0, _snapshot((32, 32)))]
    assert progress_sheet(snapshots, title="cat").height > progress_sheet(snapshots).height


def test_sheet_of_nothing_is_refused() -> None:
    with pytest.raises(ValueError):
        progress_sheet([])
