"""Pictures of a job, drawn with Pillow alone: the loss curves and the snapshot sheet (SPEC §5)."""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from itertools import groupby

from PIL import Image, ImageDraw, ImageFont, ImageOps

__all__ = ["SERIES_COLOURS", "contact_sheet", "loss_plot", "progress_sheet"]

logger = logging.getLogger(__name__)

Colour = tuple[int, int, int]
Draw = ImageDraw.ImageDraw
Font = ImageFont.FreeTypeFont | ImageFont.ImageFont
Points = list[tuple[float, float] | None]

# One colour per loss column of losses.csv: saturated, unlike the greys of text and grid.
SERIES_COLOURS: dict[str, Colour] = {
    "style_loss": (214, 39, 40),
    "content_loss": (31, 119, 180),
    "tv_loss": (44, 160, 44),
    "total_loss": (148, 103, 189),
}

_WHITE = (255, 255, 255)
_INK = (30, 30, 30)
_GRID = (225, 225, 225)
_MINOR = (242, 242, 242)
_LABEL = (90, 90, 90)
_SUPERSAMPLE = 3


def _font(size: int) -> Font:
    """Pillow's bundled font; sized where Pillow >= 10.1 allows, bitmap otherwise."""
    try:
        return ImageFont.load_default(size=size)
    except (TypeError, OSError):  # older Pillow, or built without FreeType
        return ImageFont.load_default()


def _text_size(draw: Draw, text: str, font: Font) -> tuple[int, int]:
    """Width of the ink, and height from the drawing origin to the bottom of the ink."""
    left, _, right, bottom = draw.textbbox((0, 0), text, font=font)
    return int(right - left), int(bottom)


def _as_float(value: object) -> float | None:
    try:
        number = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None


def _series_points(rows: Sequence[Mapping[str, float]], key: str) -> Points:
    """(step, loss) per row in step order; None where the loss can't go on a log axis."""
    pairs = [(_as_float(row.get("step")), _as_float(row.get(key))) for row in rows]
    return [(x, y) if x is not None and y is not None and y > 0 else None for x, y in pairs]


def _nice_step(span: float, target_ticks: int = 5) -> int:
    """An integer tick spacing of 1, 2 or 5 times a power of ten."""
    raw = max(span / target_ticks, 1.0)
    power = 10 ** math.floor(math.log10(raw))
    return int(next(f * power for f in (1, 2, 5, 10) if f * power >= raw))


def _log_label(mantissa: int, exponent: int) -> str:
    """0.01 … 1000 written out, 1e6 / 5e-4 beyond: short labels whatever the range."""
    return f"{mantissa * 10.0**exponent:g}" if -2 <= exponent <= 3 else f"{mantissa}e{exponent}"


@dataclass(frozen=True)
class _Frame:
    """The plot area in pixels and the data range it shows (log10 decades on y)."""
    left: float
    top: float
    right: float
    bottom: float
    x_min: float
    x_max: float
    lo: int
    hi: int

    def to_px(self, step: float, loss: float) -> tuple[float, float]:
        fx = (step - self.x_min) / (self.x_max - self.x_min)
        fy = (math.log10(loss) - self.lo) / (self.hi - self.lo)
        x_px = self.left + fx * (self.right - self.left)
        return x_px, self.bottom - fy * (self.bottom - self.top)


def _y_labels(lo: int, hi: int) -> dict[float, str]:
    """Decade labels, thinned to about eight; 2 and 5 as well when there are few decades."""
    stride = max(1, math.ceil((hi - lo) / 8))
    first = math.ceil(lo / stride) * stride  # labels on round exponents: 1e-8, 1, 1e8
    labels = {10.0**e: _log_label(1, e) for e in range(first, hi + 1, stride)}
    if hi - lo <= 2:
        labels |= {m * 10.0**e: _log_label(m, e) for e in range(lo, hi) for m in (2, 5)}
    return labels


def _draw_grid(draw: Draw, frame: _Frame, font: Font, k: int, one_step: bool) -> None:
    if frame.hi - frame.lo <= 6:  # minor lines at 2..9 of each decade while they stay readable
        for value in (m * 10.0**e for e in range(frame.lo, frame.hi) for m in range(2, 10)):
            y = frame.to_px(frame.x_min, value)[1]
            draw.line([(frame.left, y), (frame.right, y)], fill=_MINOR, width=k)
    for value, label in _y_labels(frame.lo, frame.hi).items():
        y = frame.to_px(frame.x_min, value)[1]
        draw.line([(frame.left, y), (frame.right, y)], fill=_GRID, width=k)
        draw.text((frame.left - 8 * k, y), label, fill=_LABEL, font=font, anchor="rm")
    if one_step:  # the range was widened by one step each side; only the step is real
        ticks = [(frame.x_min + frame.x_max) / 2]
    else:
        stride = _nice_step(frame.x_max - frame.x_min)
        first = math.ceil(frame.x_min / stride) * stride
        ticks = [float(t) for t in range(first, math.floor(frame.x_max) + 1, stride)]
    for tick in ticks:
        x = frame.to_px(tick, 10.0**frame.lo)[0]
        draw.line([(x, frame.top), (x, frame.bottom)], fill=_GRID, width=k)
        draw.line([(x, frame.bottom), (x, frame.bottom + 4 * k)], fill=_INK, width=k)
        draw.text((x, frame.bottom + 8 * k), str(int(tick)), fill=_LABEL, font=font, anchor="mt")


def _draw_series(draw: Draw, frame: _Frame, colour: Colour, points: Points, width: int) -> None:
    # A skipped point breaks the line rather than bridging it.
    for present, group in groupby(points, key=lambda point: point is not None):
        run = [frame.to_px(*point) for point in group if point is not None]
        if not present:
            continue
        if len(run) == 1:  # nothing to join: a dot
            (x, y), r = run[0], width
            draw.ellipse([x - r, y - r, x + r, y + r], fill=colour)
        else:
            draw.line(run, fill=colour, width=width, joint="curve")


def loss_plot(
    rows: Sequence[Mapping[str, float]], *, title: str = "", size: tuple[int, int] = (800, 480)
) -> Image.Image:
    """Loss curves against step on a log y axis, one coloured line per non-empty series.

    Points that are zero, negative, NaN or infinite are skipped (a gap in the line);
    a series with no usable point is neither drawn nor listed in the legend.
    """
    width, height = size
    if width < 320 or height < 200:
        raise ValueError(f"plot size must be at least 320x200, got {width}x{height}")
    k = _SUPERSAMPLE  # drawn k times larger, then reduced: Pillow's lines aren't antialiased
    image = Image.new("RGB", (width * k, height * k), _WHITE)
    draw = ImageDraw.Draw(image)
    font = _font(k * max(10, height // 40))
    title_font = _font(k * max(12, height // 28))

    ordered = sorted(rows, key=lambda row: _as_float(row.get("step")) or 0.0)
    series = {key: _series_points(ordered, key) for key in SERIES_COLOURS}
    series = {key: pts for key, pts in series.items() if any(p is not None for p in pts)}
    for key in SERIES_COLOURS.keys() - series.keys():
        logger.debug("loss plot: no positive finite values for %s; not drawn", key)
    usable = [p for pts in series.values() for p in pts if p is not None]

    # Vertical layout: title, legend row, plot area, step labels.
    _, text_h = _text_size(draw, "0123456789e", font)
    top = 10 * k
    if title:
        draw.text((width * k / 2, top), title, fill=_INK, font=title_font, anchor="mt")
        top += _text_size(draw, title, title_font)[1] + 10 * k
    legend_y = top
    top += text_h + 14 * k

    lo, hi, x_min, x_max = _ranges(usable)
    if single_step := x_min == x_max:
        x_min, x_max = x_min - 1, x_max + 1
    labels = _y_labels(lo, hi).values() if usable else []
    label_w = max((_text_size(draw, s, font)[0] for s in labels), default=0)
    bottom = height * k - text_h - 24 * k
    frame = _Frame(22 * k + label_w, top, (width - 20) * k, bottom, x_min, x_max, lo, hi)

    if usable:
        _draw_grid(draw, frame, font, k, single_step)
    draw.rectangle([frame.left, frame.top, frame.right, frame.bottom], outline=_INK, width=k)
    if not usable:
        centre = ((frame.left + frame.right) / 2, (frame.top + frame.bottom) / 2)
        draw.text(centre, "no data", fill=_LABEL, font=title_font, anchor="mm")
        return image.resize(size, Image.Resampling.BOX)

    # The total goes first and widest: it usually hugs the style loss, which stays visible on it.
    line_width = k * max(2, height // 240)
    for key in sorted(series, key=lambda key: key != "total_loss"):
        extra = 2 * k if key == "total_loss" else 0
        _draw_series(draw, frame, SERIES_COLOURS[key], series[key], line_width + extra)

    _draw_legend(draw, list(series), frame.left, legend_y, text_h, font, k, line_width)
    return image.resize(size, Image.Resampling.BOX)


def _draw_legend(draw: Draw, keys: Sequence[str], x: float, y: float, text_h: int, font: Font, k: int,
                 line_width: int) -> None:
    """In one row under the title, so it never hides a curve."""
    for key in keys:
        mid = y + text_h / 2 + k
        draw.line([(x, mid), (x + 24 * k, mid)], fill=SERIES_COLOURS[key], width=line_width + k)
        name = key.removesuffix("_loss")
        draw.text((x + 30 * k, y), name, fill=_INK, font=font)
        x += 54 * k + _text_size(draw, name, font)[0]


def _ranges(usable: Sequence[tuple[float, float]]) -> tuple[int, int, float, float]:
    """Decades of the y axis (10**lo to 10**hi) and the steps of the x axis."""
    if not usable:
        return 0, 1, 0.0, 1.0
    lo = math.floor(math.log10(min(p[1] for p in usable)))
    hi = max(math.ceil(math.log10(max(p[1] for p in usable))), lo + 1)
    return lo, hi, min(p[0] for p in usable), max(p[0] for p in usable)


def progress_sheet(
    snapshots: Sequence[tuple[int, Image.Image]],
    *,
    columns: int = 4,
    cell: int = 256,
    title: str = "",
) -> Image.Image:
    """A contact sheet: each snapshot fitted into a cell x cell box, captioned "step N".

    Fewer snapshots than `columns` give a narrower sheet rather than empty columns.
    """
    if not snapshots:
        raise ValueError("progress_sheet needs at least one snapshot")
    return contact_sheet([(f"step {step}", image) for step, image in snapshots],
                         columns=columns, cell=cell, title=title)


def contact_sheet(
    items: Sequence[tuple[str, Image.Image]],
    *,
    columns: int = 4,
    cell: int = 256,
    title: str = "",
) -> Image.Image:
    """Images side by side, each fitted into a cell x cell box above its caption."""
    if not items:
        raise ValueError("a contact sheet needs at least one image")
    if columns < 1 or cell < 16:
        raise ValueError(f"columns must be >= 1 and cell >= 16, got {columns} and {cell}")
    cols = min(columns, len(items))
    rows = math.ceil(len(items) / cols)
    pad = max(6, cell // 24)
    font = _font(max(12, cell // 18))
    title_font = _font(max(12, cell // 12))
    probe = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    _, label_h = _text_size(probe, "step 0123456789", font)
    title_h = _text_size(probe, title, title_font)[1] + pad if title else 0

    pitch_x, pitch_y = cell + pad, cell + label_h + 2 * pad
    sheet = Image.new("RGB", (cols * pitch_x + pad, title_h + rows * pitch_y + pad), _WHITE)
    draw = ImageDraw.Draw(sheet)
    if title:
        draw.text((sheet.width / 2, pad), title, fill=_INK, font=title_font, anchor="mt")

    for index, (caption, snapshot) in enumerate(items):
        x0 = pad + (index % cols) * pitch_x
        y0 = title_h + pad + (index // cols) * pitch_y
        fitted = ImageOps.contain(snapshot.convert("RGB"), (cell, cell), Image.Resampling.LANCZOS)
        sheet.paste(fitted, (x0 + (cell - fitted.width) // 2, y0 + (cell - fitted.height) // 2))
        xy = (x0 + cell / 2, y0 + cell + pad // 2)
        draw.text(xy, caption, fill=_INK, font=font, anchor="mt")
    return sheet
