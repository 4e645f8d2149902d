"""Pictures of a job, drawn with Pillow alone: the loss curves and the snapshot sheet (SPEC §5)."""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from itertools import groupby

from PIL import Image, ImageDraw, ImageFont, ImageOps

__all__ = ["SERIES_COLOURS", "Cell", "contact_sheet", "loss_plot", "progress_sheet", "run_caption",
           "snapshot_caption", "style_swatch", "y_tick_labels"]

logger = logging.getLogger(__name__)

Colour = tuple[int, int, int]
Draw = ImageDraw.ImageDraw
Font = ImageFont.FreeTypeFont | ImageFont.ImageFont
Points = list[tuple[float, float] | None]
Line = list[tuple[float, float]]

# One colour per loss column of losses.csv: saturated, unlike the greys of text and grid.
SERIES_COLOURS: dict[str, Colour] = {
    "style_loss": (214, 39, 40),
    "content_loss": (31, 119, 180),
    "tv_loss": (44, 160, 44),
    "total_loss": (148, 103, 189),
}
Y_AXIS_TITLES = ("loss (weighted, log scale)", "loss (log scale)", "loss")  # the first that fits

_WHITE = (255, 255, 255)
_INK = (30, 30, 30)
_GRID = (225, 225, 225)
_MINOR = (242, 242, 242)
_LABEL = (90, 90, 90)
_SUPERSAMPLE = 3
_DASH = (4, 5)  # the total's dashes and gaps, in output pixels: a loss under it shows through


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


def _fit(draw: Draw, text: str, font: Font, width: float) -> str:
    """``text``, cut short with an ellipsis where it is wider than ``width``."""
    if _text_size(draw, text, font)[0] <= width:
        return text
    while text and _text_size(draw, text + "…", font)[0] > width:
        text = text[:-1]
    return text.rstrip() + "…"


def run_caption(preset_source: str, steps: int | None, seconds: float | None) -> str:
    """What was run, in a line: ``named preset book · 300 steps · 41.2 s``."""
    parts = []
    if preset_source:
        parts.append(preset_source if " " in preset_source else f"preset {preset_source}")
    if steps is not None:
        parts.append(f"{steps} step{'' if steps == 1 else 's'}")
    if seconds is not None and math.isfinite(seconds) and seconds >= 0:
        minutes, secs = divmod(round(seconds), 60)
        parts.append(f"{seconds:.1f} s" if seconds < 60 else
                     f"{minutes} min {secs:02d} s" if minutes < 60 else f"{minutes // 60} h {minutes % 60:02d} min")
    return " · ".join(parts)


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


def y_tick_labels(lo: int, hi: int) -> dict[float, str]:
    """The y axis's labels from 10**lo to 10**hi: decades, thinned to about eight, and 2
    and 5 as well when there are few decades. One notation per axis, never a mix: plain
    numbers (0.01 … 5000) when every label can be one, else all like ``1e-3`` (``1e0`` too)."""
    stride = max(1, math.ceil((hi - lo) / 8))
    first = math.ceil(lo / stride) * stride  # labels on round exponents: 1e-8, 1e0, 1e8
    ticks = [(1, e) for e in range(first, hi + 1, stride)]
    if hi - lo <= 2:
        ticks += [(m, e) for e in range(lo, hi) for m in (2, 5)]
    plain = all(-2 <= e <= 3 for _, e in ticks)
    ticks.sort(key=lambda t: t[0] * 10.0 ** t[1])
    return {m * 10.0**e: f"{m * 10.0**e:g}" if plain else f"{m}e{e}" for m, e in ticks}


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


def _draw_grid(draw: Draw, frame: _Frame, font: Font, k: int, one_step: bool) -> None:
    if frame.hi - frame.lo <= 6:  # minor lines at 2..9 of each decade while they stay readable
        for value in (m * 10.0**e for e in range(frame.lo, frame.hi) for m in range(2, 10)):
            y = frame.to_px(frame.x_min, value)[1]
            draw.line([(frame.left, y), (frame.right, y)], fill=_MINOR, width=k)
    for value, label in y_tick_labels(frame.lo, frame.hi).items():
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


def _dashes(line: Line, on: float, off: float) -> list[Line]:
    """The pieces of a polyline that a dash pattern draws; the pattern runs on across vertices."""
    pieces: list[Line] = []
    current: Line = []
    travelled = 0.0
    for (x0, y0), (x1, y1) in zip(line, line[1:], strict=False):
        length, t = math.hypot(x1 - x0, y1 - y0), 0.0
        while t < length:
            phase = travelled % (on + off)
            span = min((on - phase) if phase < on else (on + off - phase), length - t)
            if phase < on:
                current = current or [(x0 + (x1 - x0) * t / length, y0 + (y1 - y0) * t / length)]
                current.append((x0 + (x1 - x0) * (t + span) / length, y0 + (y1 - y0) * (t + span) / length))
            elif current:
                pieces, current = [*pieces, current], []
            t, travelled = t + span, travelled + span
    return [*pieces, current] if len(current) > 1 else pieces


def _draw_series(draw: Draw, frame: _Frame, colour: Colour, points: Points, width: int,
                 dash: tuple[float, float] | None = None) -> None:
    # A skipped point breaks the line rather than bridging it.
    for present, group in groupby(points, key=lambda point: point is not None):
        run = [frame.to_px(*point) for point in group if point is not None]
        if not present:
            continue
        if len(run) == 1:  # nothing to join: a dot
            (x, y), r = run[0], width
            draw.ellipse([x - r, y - r, x + r, y + r], fill=colour)
        else:
            for piece in _dashes(run, *dash) if dash else [run]:
                draw.line(piece, fill=colour, width=width, joint="curve")


def loss_plot(rows: Sequence[Mapping[str, float]], *, title: str = "", subtitle: str = "",
              size: tuple[int, int] = (800, 480)) -> Image.Image:
    """Loss curves against step on a log y axis, one coloured line per non-empty series;
    the total dashed and on top, so a loss it coincides with shows through its gaps.

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

    ordered = sorted(rows, key=lambda row: _as_float(row.get("step")) or 0.0)
    series = {key: _series_points(ordered, key) for key in SERIES_COLOURS}
    series = {key: pts for key, pts in series.items() if any(p is not None for p in pts)}
    for key in SERIES_COLOURS.keys() - series.keys():
        logger.debug("loss plot: no positive finite values for %s; not drawn", key)
    usable = [p for pts in series.values() for p in pts if p is not None]

    # Vertical layout: title, what was run, legend row, plot area, step labels, "step".
    _, text_h = _text_size(draw, "0123456789e", font)
    legend_y = _draw_titles(draw, title, subtitle, width * k, k, height, font)
    lo, hi, x_min, x_max = _ranges(usable)
    if single_step := x_min == x_max:
        x_min, x_max = x_min - 1, x_max + 1
    labels = y_tick_labels(lo, hi).values() if usable else []
    label_w = max((_text_size(draw, s, font)[0] for s in labels), default=0)
    frame = _Frame(32 * k + text_h + label_w, legend_y + text_h + 14 * k, (width - 20) * k,
                   height * k - 2 * text_h - 30 * k, x_min, x_max, lo, hi)

    if usable:
        _draw_grid(draw, frame, font, k, single_step)
    draw.rectangle([frame.left, frame.top, frame.right, frame.bottom], outline=_INK, width=k)
    _draw_axis_titles(image, draw, frame, font, k, text_h)
    if not usable:
        centre = ((frame.left + frame.right) / 2, (frame.top + frame.bottom) / 2)
        draw.text(centre, "no data", fill=_LABEL, font=_font(k * max(12, height // 28)), anchor="mm")
        return image.resize(size, Image.Resampling.BOX)

    line_width = k * max(2, height // 240)
    for key in sorted(series, key=lambda key: key == "total_loss"):  # the total last: on top
        total = key == "total_loss"
        _draw_series(draw, frame, SERIES_COLOURS[key], series[key], line_width if total else line_width + k,
                     (_DASH[0] * k, _DASH[1] * k) if total else None)

    _draw_legend(draw, list(series), frame.left, legend_y, text_h, font, k, line_width)
    return image.resize(size, Image.Resampling.BOX)


def _draw_titles(draw: Draw, title: str, subtitle: str, width: int, k: int, height: int, font: Font) -> float:
    """The title and, under it in grey, what was run; returns where the legend goes."""
    top = 10 * k
    for text, text_font, fill in ((title, _font(k * max(12, height // 28)), _INK), (subtitle, font, _LABEL)):
        if text:
            text = _fit(draw, text, text_font, width - 20 * k)
            draw.text((width / 2, top), text, fill=fill, font=text_font, anchor="mt")
            top += _text_size(draw, text, text_font)[1] + 8 * k
    return top + 2 * k


def _draw_axis_titles(image: Image.Image, draw: Draw, frame: _Frame, font: Font, k: int, text_h: int) -> None:
    """"step" under the step labels; the y axis's title turned a quarter, left of its labels."""
    draw.text(((frame.left + frame.right) / 2, frame.bottom + 16 * k + text_h), "step",
              fill=_INK, font=font, anchor="mt")
    room = frame.bottom - frame.top
    label = next((t for t in Y_AXIS_TITLES if _text_size(draw, t, font)[0] <= room), "")
    if not label:
        return
    w, h = _text_size(draw, label, font)
    mask = Image.new("L", (w + 2 * k, h + 2 * k), 0)
    ImageDraw.Draw(mask).text((k, k), label, fill=255, font=font)
    mask = mask.rotate(90, expand=True)
    image.paste(_INK, (10 * k, round((frame.top + frame.bottom - mask.height) / 2)), mask)


def _draw_legend(draw: Draw, keys: Sequence[str], x: float, y: float, text_h: int, font: Font, k: int,
                 line_width: int) -> None:
    """In one row under the title, so it never hides a curve; each sample drawn as its line is."""
    for key in keys:
        mid = y + text_h / 2 + k
        sample = [(x, mid), (x + 28 * k, mid)]
        total = key == "total_loss"
        for piece in _dashes(sample, _DASH[0] * k, _DASH[1] * k) if total else [sample]:
            draw.line(piece, fill=SERIES_COLOURS[key], width=line_width if total else line_width + k)
        name = key.removesuffix("_loss")
        draw.text((x + 34 * k, y), name, fill=_INK, font=font)
        x += 58 * k + _text_size(draw, name, font)[0]


def _ranges(usable: Sequence[tuple[float, float]]) -> tuple[int, int, float, float]:
    """Decades of the y axis (10**lo to 10**hi) and the steps of the x axis."""
    if not usable:
        return 0, 1, 0.0, 1.0
    lo = math.floor(math.log10(min(p[1] for p in usable)))
    hi = max(math.ceil(math.log10(max(p[1] for p in usable))), lo + 1)
    return lo, hi, min(p[0] for p in usable), max(p[0] for p in usable)


def snapshot_caption(step: int) -> str:
    """A progress sheet's caption: step 0 is the photo the run started from."""
    return "original" if step == 0 else f"step {step}"


def progress_sheet(snapshots: Sequence[tuple[int, Image.Image]], *, columns: int = 4, cell: int = 256,
                   title: str = "", subtitle: str = "") -> Image.Image:
    """A contact sheet: each snapshot fitted into a cell x cell box, captioned "step N"
    ("original" for step 0, the photo itself)."""
    if not snapshots:
        raise ValueError("progress_sheet needs at least one snapshot")
    return contact_sheet([(snapshot_caption(step), image) for step, image in snapshots],
                         columns=columns, cell=cell, title=title, subtitle=subtitle)


@dataclass(frozen=True)
class Cell:
    """One picture of a contact sheet; ``inset``, if any, drawn small in its corner."""

    caption: str
    image: Image.Image
    inset: Image.Image | None = None


def style_swatch(styles: Sequence[Image.Image], height: int = 96) -> Image.Image:
    """Style images side by side at one height: a blend's styles in one inset."""
    if not styles:
        raise ValueError("a swatch needs at least one style image")
    tiles = [ImageOps.contain(s.convert("RGB"), (8 * height, height), Image.Resampling.LANCZOS) for s in styles]
    swatch = Image.new("RGB", (sum(t.width for t in tiles) + len(tiles) - 1, height), _WHITE)
    x = 0
    for tile in tiles:
        swatch.paste(tile, (x, (height - tile.height) // 2))
        x += tile.width + 1
    return swatch


def _caption_lines(draw: Draw, caption: str, font: Font, width: float) -> list[str]:
    """The caption on one line if it fits, else broken at its " · " (each line cut to fit)."""
    lines: list[str] = []
    for part in caption.split(" · "):
        joined = f"{lines[-1]} · {part}" if lines else part
        if lines and _text_size(draw, joined, font)[0] <= width:
            lines[-1] = joined
        else:
            lines.append(part)
    return [_fit(draw, line, font, width) for line in lines]


def contact_sheet(items: Sequence[Cell | tuple[str, Image.Image]], *, columns: int = 4, cell: int = 256,
                  title: str = "", subtitle: str = "") -> Image.Image:
    """Images side by side, each fitted into a cell x cell box above its caption.

    Rows and columns are as tall and wide as the fitted images are (no band of white
    where 4:3 pictures sit in square boxes), and the rows as even as ``columns`` allows.
    """
    if not items:
        raise ValueError("a contact sheet needs at least one image")
    if columns < 1 or cell < 16:
        raise ValueError(f"columns must be >= 1 and cell >= 16, got {columns} and {cell}")
    cells = [item if isinstance(item, Cell) else Cell(*item) for item in items]
    rows = math.ceil(len(cells) / columns)
    cols = math.ceil(len(cells) / rows)
    pad = max(6, cell // 24)
    font, title_font = _font(max(12, cell // 18)), _font(max(12, cell // 12))
    probe = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    fitted = [ImageOps.contain(c.image.convert("RGB"), (cell, cell), Image.Resampling.LANCZOS) for c in cells]
    box_w, box_h = max(f.width for f in fitted), max(f.height for f in fitted)
    captions = [_caption_lines(probe, c.caption, font, box_w) for c in cells]
    line_h = _text_size(probe, "step 0123456789", font)[1] + 2
    heads = [(t, f, fill) for t, f, fill in ((title, title_font, _INK), (subtitle, font, _LABEL)) if t]
    head_h = sum(_text_size(probe, t, f)[1] + pad // 2 for t, f, _ in heads) + (pad // 2 if heads else 0)

    pitch_x = box_w + pad
    # Each row as tall as its own captions: one two-line caption does not pad every row.
    row_h = [box_h + pad // 2 + max(map(len, captions[r * cols:(r + 1) * cols])) * line_h + pad for r in range(rows)]
    tops = [head_h + pad + sum(row_h[:r]) for r in range(rows + 1)]
    # As wide as the title needs, within reason: a one-snapshot sheet still says what it is.
    grid_w = cols * pitch_x + pad
    head_w = max((_text_size(probe, t, f)[0] + 2 * pad for t, f, _ in heads), default=0)
    sheet = Image.new("RGB", (max(grid_w, min(head_w, 4 * cell)), tops[-1]), _WHITE)
    draw = ImageDraw.Draw(sheet)
    y = pad
    for text, text_font, fill in heads:
        text = _fit(draw, text, text_font, sheet.width - 2 * pad)
        draw.text((sheet.width / 2, y), text, fill=fill, font=text_font, anchor="mt")
        y += _text_size(draw, text, text_font)[1] + pad // 2

    for index, (item, picture, lines) in enumerate(zip(cells, fitted, captions, strict=True)):
        x0 = (sheet.width - grid_w) // 2 + pad + (index % cols) * pitch_x
        y0 = tops[index // cols]
        at = (x0 + (box_w - picture.width) // 2, y0 + (box_h - picture.height) // 2)
        sheet.paste(picture, at)
        if item.inset is not None:
            _paste_inset(sheet, item.inset, at, picture.size, max(12, cell // 3))
        for number, line in enumerate(lines):
            xy = (x0 + box_w / 2, y0 + box_h + pad // 2 + number * line_h)
            draw.text(xy, line, fill=_INK, font=font, anchor="mt")
    return sheet


def _paste_inset(sheet: Image.Image, inset: Image.Image, at: tuple[int, int], size: tuple[int, int],
                 side: int) -> None:
    """The inset in the bottom-right corner of the picture at ``at``, framed in white."""
    thumb = ImageOps.contain(inset.convert("RGB"), (side, side), Image.Resampling.LANCZOS)
    framed = ImageOps.expand(thumb, border=1, fill=_WHITE)
    margin = max(2, side // 16)
    sheet.paste(framed, (at[0] + size[0] - framed.width - margin, at[1] + size[1] - framed.height - margin))
