"""``stylefold bench --time-to-result``: seconds to the preview and to the finished
picture, the figure a photographer waits on (issue 11), against the same preset run
flat: at full size, for all its steps, no preview, no early stop.

The photo is made here (``make_photo``): a landscape-like picture with sky, hills,
foliage texture, hard edges and a little grain, so the numbers do not depend on a file
someone has to find. Every figure is from one process, A then B per case, so a
loaded machine distorts both alike; step counts and losses are deterministic.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import tempfile
import time
import uuid
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from ..engine.features import build_extractor
from ..engine.runtime import resolve_device, tune_cpu_allocator
from ..engine.stylize import stylize
from ..presets import Preset, PresetLibrary
from .prepare import prepare
from .run import Done, JobCallbacks, PreviewImage, Resident, engine_params, run_job
from .spec import Caps, JobSpec

__all__ = ["TimeToResult", "make_photo", "run_time_to_result", "time_to_result"]

FLAT_BUDGET_MB = 1 << 20  # large enough that the flat run is one optimisation at full size


def make_photo(path: Path, short_side: int, aspect: float = 1.5, seed: int = 0) -> Path:
    """A photo-like landscape of ``short_side`` x ``short_side * aspect`` px, saved by suffix."""
    rng = np.random.default_rng(seed)
    h, w = short_side, round(short_side * aspect)
    y = np.linspace(0, 1, h, dtype=np.float32)[:, None]
    x = np.linspace(0, 1, w, dtype=np.float32)[None, :]
    ones = np.ones((h, w), np.float32)
    img = np.stack([(0.45 + 0.3 * y) * ones, (0.6 + 0.25 * y) * ones, (0.95 - 0.2 * y) * ones], axis=-1)
    sun = np.exp(-((x - 0.72) ** 2 + (y - 0.22) ** 2 * 2.25) / 0.002)[..., None]
    img = img * (1 - sun) + np.array([1.0, 0.93, 0.7], np.float32) * sun
    land = np.zeros((h, w, 1), np.float32)
    for level, colour, freq in ((0.55, (0.35, 0.42, 0.3), 3.0), (0.68, (0.22, 0.38, 0.16), 5.0)):
        ridge = level + 0.08 * np.sin(2 * np.pi * freq * x + rng.uniform(0, 6)) + 0.03 * np.sin(17 * x)
        land = (y > ridge).astype(np.float32)[..., None]
        img = img * (1 - land) + np.array(colour, np.float32) * land
    # Foliage: band-limited noise on the land, made at a lower resolution and enlarged.
    small = rng.normal(0, 1, (max(2, h // 8), max(2, w // 8), 3)).astype(np.float32)
    texture = np.asarray(Image.fromarray(((small * 0.15 + 0.5).clip(0, 1) * 255).astype(np.uint8)).resize(
        (w, h), Image.Resampling.BICUBIC), np.float32) / 255 - 0.5
    texture = 0.8 * texture.mean(axis=-1, keepdims=True) + 0.2 * texture
    img += texture * 0.6 * land
    # A house: hard vertical and horizontal edges.
    top, left = int(0.62 * h), int(0.2 * w)
    img[top:top + h // 8, left:left + w // 10] = (0.75, 0.7, 0.62)
    img[top + h // 32:top + h // 16, left + w // 40:left + w // 20] = (0.2, 0.25, 0.35)
    img += rng.normal(0, 0.01, img.shape).astype(np.float32)  # sensor grain
    Image.fromarray((img.clip(0, 1) * 255).astype(np.uint8)).save(path, quality=92)
    return path


@dataclass(frozen=True)
class TimeToResult:
    preset: str
    size: int
    preview_s: float | None
    result_s: float
    steps_run: int
    stopped_early_at: int | None
    final_total: float
    flat_s: float
    flat_steps: int
    flat_final_total: float
    # The objective (fp32, full size) on each finished picture: a loss log's last row is
    # one step's, and coarse to fine in tiles, the last tile's only.
    picture_total: float
    flat_picture_total: float

    @property
    def speedup(self) -> float:
        return self.flat_s / self.result_s

    @property
    def loss_ratio(self) -> float:
        return self.final_total / self.flat_final_total

    @property
    def picture_loss_ratio(self) -> float:
        return self.picture_total / self.flat_picture_total


def picture_loss(resident: Resident, spec: JobSpec, done: Done) -> float:
    """The preset's total loss of the finished picture at full size, in fp32: one
    evaluation (a one-step run whose first loss-log row is the picture's loss)."""
    pixels = np.asarray(done.rendered.image.convert("RGB"), np.float32) / 255
    image = torch.from_numpy(pixels).permute(2, 0, 1)[None].contiguous()
    prepared = prepare(spec)
    params = dataclasses.replace(engine_params(spec.preset, "fp32"), steps=1, early_stop=False, snapshot_every=0)
    run = stylize(resident.extractor, prepared.target_content, prepared.target_styles, params, init_image=image,
                  style_cache=resident.style_cache)
    return run.history[0].total_loss


def _render(resident: Resident, photo: Path, preset: Preset, name: str,
            caps: Caps) -> tuple[Done, float, float | None, JobSpec]:
    library = PresetLibrary.default()
    styles = [(library.resolve_style(ref.path), ref.weight) for ref in preset.style_refs()]
    preview_at: list[float] = []
    t0 = time.perf_counter()

    def on_preview(_: PreviewImage) -> None:
        preview_at.append(time.perf_counter() - t0)

    spec = JobSpec.for_files(uuid.uuid4().hex, photo, preset, name, styles, caps)
    outcome = run_job(spec, resident, JobCallbacks(on_preview=on_preview))
    seconds = time.perf_counter() - t0
    if not isinstance(outcome, Done):
        raise RuntimeError(f"{name} at {preset.size}: {outcome}")
    return outcome, seconds, preview_at[0] if preview_at else None, spec


def time_to_result(resident: Resident, photo: Path, name: str, size: int | None, *, flat: bool = True,
                   caps: Caps | None = None) -> TimeToResult:
    """The preset as shipped (preview, early stop, coarse to fine where it or the budget
    asks) at ``size`` (None: the preset's own), then flat: one scale at full size, for
    all its steps."""
    library = PresetLibrary.default()
    shipped = library.load(name)
    if size is not None:
        shipped = shipped.model_copy(update={"size": size})
    # Warm up first, at the preview's and the result's sizes: the first steps at a new
    # shape pay for kernel selection (oneDNN primitives, cuDNN autotuning), and the run
    # measured first would carry it alone.
    for warm_size in {shipped.preview.size if shipped.preview else shipped.size, shipped.size}:
        warm = shipped.model_copy(update={"size": warm_size, "steps": 2, "preview": False, "early_stop": False,
                                          "coarse_to_fine": False})
        _render(resident, photo, warm, name, Caps(max_size=16384, memory_budget_mb=FLAT_BUDGET_MB))
    done, seconds, preview_s, spec = _render(resident, photo, shipped, name, caps or Caps())
    picture = picture_loss(resident, spec, done)
    rows, report = done.rendered.rows, done.rendered.report
    flat_s, flat_steps, flat_final, flat_picture = float("nan"), 0, float("nan"), float("nan")
    if flat:
        plain = shipped.model_copy(update={"preview": False, "early_stop": False, "coarse_to_fine": False,
                                           "snapshot_every": 0})
        flat_done, flat_s, _, flat_spec = _render(resident, photo, plain, name,
                                                  Caps(max_size=16384, memory_budget_mb=FLAT_BUDGET_MB))
        flat_picture = picture_loss(resident, flat_spec, flat_done)
        flat_steps, flat_final = len(flat_done.rendered.rows), float(flat_done.rendered.rows[-1]["total_loss"])
    return TimeToResult(name, shipped.size, preview_s, seconds, len(rows), report.get("stopped_early_at"),
                        float(rows[-1]["total_loss"]), flat_s, flat_steps, flat_final, picture, flat_picture)


def run_time_to_result(args: argparse.Namespace) -> int:
    device = resolve_device(args.device or "auto")
    if device.type == "cpu":
        tune_cpu_allocator()
    resident = Resident(build_extractor(args.weights, device))
    folder = Path(tempfile.mkdtemp(prefix="stylefold-ttr-"))
    photo = make_photo(folder / "photo.jpg", int(args.photo_short_side))
    sizes = [None if s == "default" else int(s) for s in str(args.sizes or "default,1024").split(",") if s]
    names = [n for n in str(args.presets or ",".join(PresetLibrary.default().names())).split(",") if n]
    rows = []
    for name in names:
        for size in sizes:
            row = time_to_result(resident, photo, name, size, flat=not args.no_flat)
            rows.append(row)
            if not args.json:
                print(_line(row), flush=True)
    if args.json:
        print(json.dumps({"device": str(device), "photo": list(Image.open(photo).size),
                          "rows": [_json_row(r) for r in rows]}, indent=2))
    return 0


def _json_row(r: TimeToResult) -> dict[str, Any]:
    """A row for ``--json``: without the flat run (``--no-flat``) its figures are null
    (``NaN`` is not JSON)."""
    row = {**asdict(r), "speedup": r.speedup, "loss_ratio": r.loss_ratio, "picture_loss_ratio": r.picture_loss_ratio}
    return {k: None if isinstance(v, float) and math.isnan(v) else v for k, v in row.items()}


def _line(r: TimeToResult) -> str:
    preview = f"{r.preview_s:.1f} s" if r.preview_s is not None else "none"
    stopped = f", stopped early at {r.stopped_early_at}" if r.stopped_early_at else ""
    line = (f"{r.preset} at {r.size}: preview {preview}, result {r.result_s:.1f} s ({r.steps_run} steps{stopped}, "
            f"total loss {r.final_total:.4g}); ")
    if not r.flat_steps:
        return line + f"flat not run (--no-flat); the finished picture's loss {r.picture_total:.4g}"
    return line + (f"flat {r.flat_s:.1f} s ({r.flat_steps} steps, {r.flat_final_total:.4g}): "
                   f"{r.speedup:.2f}x sooner, loss x{r.loss_ratio:.3f}; the finished pictures' loss "
                   f"{r.picture_total:.4g} against {r.flat_picture_total:.4g}: x{r.picture_loss_ratio:.3f}")

