"""The files of SPEC §5: result image, loss CSV, report JSON, loss plot, progress sheet.

Every file is written to a hidden temporary name in its destination folder, fsynced,
then renamed (SPEC §6.2). The result image is published with a no-overwrite link, so
two processes choosing the same ``NAME-STYLE`` cannot clobber each other: the loser
moves on to ``NAME-STYLE-2``. No torch here.
"""

from __future__ import annotations

import csv
import io
import json
import os
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from PIL import Image

from ..fsops import MAX_NAME_ATTEMPTS, free_names, write_atomic
from ..names import clean_stem, fit
from . import imageio, render

__all__ = ["CSV_HEADER", "PREVIEWS", "OutputPaths", "base_name", "losses_csv", "previews_dir", "publish_preview",
           "publish_result", "settle_preview", "write_logs"]

CSV_HEADER = ("step", "style_loss", "content_loss", "tv_loss", "total_loss", "elapsed_s")
MAX_SHEET_CELLS = 24
MAX_BASE_CHARS = 150  # leaves room for "-N", ".losses.csv" and temp names in 255 bytes
PREVIEWS = "previews"  # outbox/previews/: never outbox/ itself, which editors may auto-import
PREVIEW_QUALITY = 90


@dataclass(frozen=True)
class OutputPaths:
    base: str
    image: Path
    losses_csv: Path
    report: Path
    plot: Path
    progress: Path

    @classmethod
    def for_base(cls, outbox: Path, logs: Path, base: str, ext: str) -> OutputPaths:
        return cls(
            base=base,
            image=outbox / f"{base}{ext}",
            losses_csv=logs / f"{base}.losses.csv",
            report=logs / f"{base}.json",
            plot=logs / f"{base}.losses.png",
            progress=logs / f"{base}.progress.jpg",
        )

    def logs_exist(self) -> bool:
        return any(p.exists() for p in (self.losses_csv, self.report, self.plot, self.progress))


def base_name(image_name: str, style_names: Sequence[str]) -> str:
    """``NAME-STYLE``; blended styles are joined with ``+`` (``photo-ink+mosaic``).
    Control characters (a newline, ESC) become ``_``: editors and other programs list
    these names. Long names are cut (at a character boundary) so that the job cannot fail
    after the whole optimisation with ENAMETOOLONG; the original keeps its own name."""
    stem = Path(image_name).stem
    styles = "+".join(Path(s).stem for s in style_names)
    return fit(clean_stem(f"{stem}-{styles}"), limit=MAX_BASE_CHARS)


def publish_result(image: Image.Image, outbox: Path, logs: Path, base: str, ext: str, *,
                   quality: int, exif: bytes | None,
                   before_link: Callable[[OutputPaths], None] | None = None) -> OutputPaths:
    """Save the result under the first free ``base``, ``base-2``, ... and return all the
    paths of that name. Nothing that exists is ever overwritten. ``before_link`` is told
    each name just before it is tried, so a crash right after the link can still find
    the name it used (one result per job, SPEC §6.3)."""
    for candidate in free_names(base):
        paths = OutputPaths.for_base(outbox, logs, candidate, ext)
        if paths.image.exists() or paths.logs_exist():
            continue
        if before_link is not None:
            before_link(paths)
        try:
            imageio.save_image_atomic(image, paths.image, quality=quality, exif=exif, overwrite=False)
        except FileExistsError:
            continue  # another process took this name between our check and the link
        return paths
    raise FileExistsError(f"no free output name for {base} after {MAX_NAME_ATTEMPTS} tries")


def previews_dir(outbox: Path) -> Path:
    return outbox / PREVIEWS


def publish_preview(image: Image.Image, outbox: Path, logs: Path, base: str, *, exif: bytes | None = None) -> Path:
    """Save a job's preview as ``outbox/previews/BASE.jpg`` under the first name that is
    free for the result too (so it usually shares the result's base name); never
    overwrites."""
    folder = previews_dir(outbox)
    folder.mkdir(parents=True, exist_ok=True)
    for candidate in free_names(base):
        target = folder / f"{candidate}.jpg"
        result = OutputPaths.for_base(outbox, logs, candidate, ".jpg")
        if target.exists() or result.logs_exist() or any(outbox.glob(f"{_glob_escape(candidate)}.*")):
            continue
        try:
            imageio.save_image_atomic(image, target, quality=PREVIEW_QUALITY, exif=exif, overwrite=False)
        except FileExistsError:
            continue
        return target
    raise FileExistsError(f"no free preview name for {base} after {MAX_NAME_ATTEMPTS} tries")


def settle_preview(preview: Path, base: str) -> Path:
    """Give the preview the result's base name when the result took another one (the
    name was taken meanwhile), if that name is free; else leave it where it is."""
    target = preview.with_name(f"{base}.jpg")
    if target == preview or not preview.is_file():
        return preview
    try:
        os.link(preview, target)
    except OSError:
        return preview
    preview.unlink(missing_ok=True)
    return target


def _glob_escape(name: str) -> str:
    return "".join(f"[{c}]" if c in "*?[" else c for c in name)


def losses_csv(rows: Iterable[Mapping[str, float]]) -> bytes:
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(CSV_HEADER)
    for row in rows:
        # repr keeps every digit of the float: the log is compared against the chapter's.
        writer.writerow([int(row["step"]), *(repr(float(row[k])) for k in CSV_HEADER[1:])])
    return buf.getvalue().encode()


def write_logs(paths: OutputPaths, rows: Sequence[Mapping[str, float]], report: Mapping[str, Any],
               snapshots: Sequence[tuple[int, Image.Image]], title: str) -> None:
    """Loss CSV, plot, progress sheet, then the report last: a report means done. The
    pictures say under their title what was run: preset, steps, seconds (from the report)."""
    write_atomic(paths.losses_csv, losses_csv(rows))
    preset, seconds = report.get("preset") or {}, report.get("seconds") or {}
    caption = render.run_caption(str(preset.get("source") or ""), report.get("steps_run"), seconds.get("total"))
    plot = render.loss_plot(rows, title=title, subtitle=caption)
    write_atomic(paths.plot, _encode(plot, "PNG"))
    if snapshots:
        # At most MAX_SHEET_CELLS, evenly spread and always with the last: a sheet of
        # every step of a long run would outgrow what JPEG can hold (65,500 px).
        if len(snapshots) > MAX_SHEET_CELLS:
            pick = {round(i * (len(snapshots) - 1) / (MAX_SHEET_CELLS - 1)) for i in range(MAX_SHEET_CELLS)}
            snapshots = [snap for i, snap in enumerate(snapshots) if i in pick]
        sheet = render.progress_sheet(snapshots, title=title, subtitle=caption)
        write_atomic(paths.progress, _encode(sheet, "JPEG", quality=90))
    write_atomic(paths.report, (json.dumps(report, indent=2, sort_keys=False) + "\n").encode())


def _encode(image: Image.Image, fmt: str, **options: Any) -> bytes:
    buf = io.BytesIO()
    image.convert("RGB").save(buf, format=fmt, **options)
    return buf.getvalue()
