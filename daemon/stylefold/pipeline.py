"""One photo through one preset: load, stylise, write the outputs of SPEC §5.

``Stylist`` holds what is built once per process (the VGG19 on its device and the style
target cache) and is handed to ``stylefold run`` and to the daemon's worker alike, so a
job's files are the same whichever started it. Failures are ``JobFailure`` with a SPEC
§5 kind and one human sentence; moving originals is the caller's business.
"""

from __future__ import annotations

import datetime as dt
import logging
import platform
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from . import __version__, imageio, outputs
from .digest import sha256_file
from .engine import (
    EngineError,
    FeatureExtractor,
    StepInfo,
    StyleParams,
    StyleTargetCache,
    resolve_precision,
    stylize,
)
from .engine import color
from .presets import Preset
from .vgg_layers import min_side

__all__ = ["JobFailure", "JobResult", "Limits", "Stylist", "sha256_file"]

logger = logging.getLogger(__name__)

SNAPSHOT_CELL = 256


class JobFailure(Exception):
    """A job that cannot produce a result. ``kind`` is one of SPEC §5's."""

    def __init__(self, kind: str, message: str) -> None:
        super().__init__(message)
        self.kind = kind
        self.message = message


@dataclass(frozen=True)
class Limits:
    """Caps a preset cannot exceed (SPEC §4: a preset above a cap fails ``too_large``)."""

    max_steps: int = 2000
    max_size: int = 2048
    max_input_pixels: int = 100_000_000

    def check(self, preset: Preset) -> None:
        if preset.steps > self.max_steps:
            raise JobFailure("too_large", f"the preset asks for {preset.steps} steps; this server allows at most {self.max_steps}")
        if preset.size > self.max_size:
            raise JobFailure("too_large", f"the preset asks for size {preset.size}; this server allows at most {self.max_size}")


@dataclass
class JobResult:
    paths: outputs.OutputPaths
    report: dict[str, Any]
    history: list[StepInfo] = field(default_factory=list)
    stopped: bool = False


@dataclass
class Stylist:
    extractor: FeatureExtractor
    limits: Limits = Limits()
    style_cache: StyleTargetCache = field(default_factory=StyleTargetCache)

    @property
    def device(self) -> torch.device:
        return self.extractor.device

    def process(
        self,
        image_path: Path,
        preset: Preset,
        styles: Sequence[tuple[Path, float]],
        outbox: Path,
        logs: Path,
        *,
        preset_source: str = "",
        on_step: Callable[[StepInfo], None] | None = None,
        should_stop: Callable[[], bool] | None = None,
    ) -> JobResult:
        started_at = dt.datetime.now(dt.timezone.utc)
        t0 = time.perf_counter()
        self.limits.check(preset)
        image_path, outbox, logs = image_path.absolute(), outbox.absolute(), logs.absolute()
        precision = resolve_precision(preset.precision, self.device)
        loaded = self._load(image_path)
        working = imageio.fit_short_side(loaded.image, preset.size)
        needed = min_side(n for n, _ in preset.style_layer_weights() + preset.content_layer_weights())
        if min(working.size) < needed:
            raise JobFailure(
                "too_small",
                f"the photo is {working.size[0]}x{working.size[1]} px; this preset's layers need at least "
                f"{needed} px on the shorter side",
            )
        content = _to_tensor(working)
        style_images = [(self._load(path).image, weight) for path, weight in styles]
        style_size = max(needed, round(preset.style_scale * min(working.size)))
        style_tensors = [(_to_tensor(imageio.resize_short_side(img, style_size)), w) for img, w in style_images]

        target_content, target_styles = content, style_tensors
        if preset.preserve_color == "luminance":
            target_content = color.luminance(content)
            target_styles = [(color.match_luminance(color.luminance(s), target_content), w) for s, w in style_tensors]
        elif preset.preserve_color == "histogram":
            target_styles = [(color.match_color_statistics(s, content), w) for s, w in style_tensors]

        snapshots: list[tuple[int, Any]] = []

        def keep_snapshot(step: int, image: torch.Tensor) -> None:
            snap = _to_pil(self._finish(image, content, preset))
            snap.thumbnail((SNAPSHOT_CELL, SNAPSHOT_CELL))
            snapshots.append((step, snap))

        params = _engine_params(preset, precision)
        t_engine = time.perf_counter()
        try:
            result = stylize(
                self.extractor, target_content, target_styles, params,
                on_step=on_step, on_snapshot=keep_snapshot if preset.snapshot_every else None,
                should_stop=should_stop, style_cache=self.style_cache,
            )
        except EngineError as exc:
            raise JobFailure("internal", str(exc)) from exc
        except torch.OutOfMemoryError as exc:
            raise JobFailure("out_of_memory", f"out of memory on {self.device} at size {preset.size}; lower size") from exc
        engine_s = time.perf_counter() - t_engine

        final = _to_pil(self._finish(result.image, content, preset))
        ext = imageio.output_extension(image_path.suffix, preset.output.format)
        base = outputs.base_name(image_path.name, [p.name for p, _ in styles])
        outbox.mkdir(parents=True, exist_ok=True)
        logs.mkdir(parents=True, exist_ok=True)
        paths = outputs.publish_result(final, outbox, logs, base, ext, quality=preset.output.quality, exif=loaded.exif)
        rows = [asdict(h) for h in result.history]
        report = {
            "status": "stopped" if result.stopped else "done",
            "input": {
                "path": str(image_path), "sha256": sha256_file(image_path), "mode": loaded.source_mode,
                "size": list(loaded.source_size), "icc_profile": loaded.icc_description,
                "alpha_dropped": loaded.alpha_dropped,
            },
            "styles": [{"path": str(p.absolute()), "weight": w, "normalised_weight": w / sum(x for _, x in styles),
                        "sha256": sha256_file(p)} for p, w in styles],
            "preset": {"source": preset_source, "effective": preset.effective()},
            "output": {"path": str(paths.image), "size": list(final.size), "base": paths.base},
            "logs": {"losses_csv": str(paths.losses_csv), "plot": str(paths.plot),
                     "progress": str(paths.progress) if snapshots else None},
            "device": str(self.device), "precision": precision,
            "steps_run": len(result.history),
            "final_losses": {k: v for k, v in rows[-1].items() if k.endswith("loss")} if rows else None,
            "seconds": {"total": round(time.perf_counter() - t0, 3), "engine": round(engine_s, 3)},
            "started_at": started_at.isoformat(timespec="seconds"),
            "finished_at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
            "weights": asdict(self.extractor.weights),
            "versions": versions(),
        }
        title = f"{image_path.name} · {', '.join(p.name for p, _ in styles)}"
        outputs.write_logs(paths, rows, report, snapshots, title)
        logger.info("wrote %s (%d steps, %.1f s)", paths.image, len(rows), report["seconds"]["total"])
        return JobResult(paths=paths, report=report, history=result.history, stopped=result.stopped)

    def _load(self, path: Path) -> imageio.LoadedImage:
        try:
            return imageio.load_image(path, max_pixels=self.limits.max_input_pixels)
        except imageio.ImageError as exc:
            raise JobFailure(exc.kind, str(exc)) from exc

    @staticmethod
    def _finish(image: torch.Tensor, content: torch.Tensor, preset: Preset) -> torch.Tensor:
        if preset.preserve_color == "luminance":
            return color.recombine_chroma(image, content)
        return image


def _engine_params(preset: Preset, precision: str) -> StyleParams:
    return StyleParams(
        style_layers=preset.style_layer_weights(),
        content_layers=preset.content_layer_weights(),
        style_weight=preset.style_weight,
        content_weight=preset.content_weight,
        tv_weight=preset.tv_weight,
        steps=preset.steps,
        lr=preset.lr,
        optimizer=preset.optimizer,
        init=preset.init,
        pooling=preset.pooling,
        normalize=preset.normalize,
        seed=preset.seed,
        precision=precision,  # type: ignore[arg-type]
        snapshot_every=preset.snapshot_every,
    )


def _to_tensor(image: Any) -> torch.Tensor:
    return torch.from_numpy(imageio.to_float_array(image)).permute(2, 0, 1).unsqueeze(0).contiguous()


def _to_pil(image: torch.Tensor) -> Any:
    return imageio.from_float_array(image[0].permute(1, 2, 0).numpy().astype(np.float32))


def versions() -> dict[str, str]:
    import PIL
    import torchvision

    return {
        "stylefold": __version__, "torch": torch.__version__, "torchvision": torchvision.__version__,
        "pillow": PIL.__version__, "python": platform.python_version(),
    }
