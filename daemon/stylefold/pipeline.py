"""One photo through one preset: load, stylise, write the outputs of SPEC §5.

``Stylist`` holds what is built once per process (the VGG19 on its device and the style
target cache) and is handed to ``stylefold run`` and to the daemon's worker alike, so a
job's files are the same whichever started it. Failures are ``JobFailure`` with a SPEC
§5 kind and one human sentence; moving originals is the caller's business.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import io
import json
import logging
import platform
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from . import __version__, imageio, outputs
from .digest import sha256_file
from .engine import (
    EngineError,
    EngineState,
    FeatureExtractor,
    StepInfo,
    StyleParams,
    StyleTargetCache,
    resolve_precision,
    stylize,
)
from .engine import color
from .engine.pyramid import bytes_per_pixel, plan_pyramid, stylize_pyramid
from .engine.runtime import memory_budget_bytes
from .presets import Preset
from .vgg_layers import min_side

__all__ = ["Checkpoint", "JobFailure", "JobResult", "Limits", "Rendered", "Stylist", "sha256_file"]

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
    max_size: int = 4096
    max_input_pixels: int = 100_000_000
    memory_budget_mb: int = 0  # 0: automatic (see engine.runtime.memory_budget_bytes)

    def check(self, preset: Preset) -> None:
        if preset.steps > self.max_steps:
            raise JobFailure("too_large", f"the preset asks for {preset.steps} steps; this server allows at most {self.max_steps}")
        if preset.size > self.max_size:
            raise JobFailure("too_large", f"the preset asks for size {preset.size}; this server allows at most {self.max_size}")


@dataclass
class JobResult:
    paths: outputs.OutputPaths
    report: dict[str, Any]
    rows: list[dict[str, float]] = field(default_factory=list)
    stopped: bool = False


@dataclass
class Checkpoint:
    """An interrupted render: the engine's state plus the log rows and snapshots so far."""

    state: EngineState
    rows: list[dict[str, float]]
    snapshots: list[tuple[int, Image.Image]]

    def save(self, path: Path) -> None:
        """torch.save to a temp name, then rename: a checkpoint is whole or absent."""
        payload = {
            "step": self.state.step, "image": self.state.image, "optimizer": self.state.optimizer_state,
            "rows": self.rows, "snapshots": [(s, _png_bytes(img)) for s, img in self.snapshots],
        }
        buf = io.BytesIO()
        torch.save(payload, buf)
        outputs.write_atomic(path, buf.getvalue())

    @classmethod
    def load(cls, path: Path) -> Checkpoint:
        payload = torch.load(path, map_location="cpu", weights_only=True)
        state = EngineState(step=int(payload["step"]), image=payload["image"], optimizer_state=payload["optimizer"])
        snaps = [(int(s), Image.open(io.BytesIO(b)).convert("RGB")) for s, b in payload["snapshots"]]
        return cls(state, list(payload["rows"]), snaps)


@dataclass
class Rendered:
    """A finished optimisation, in memory, not yet written to the outbox."""

    image: Image.Image
    exif: bytes | None
    ext: str
    base: str
    quality: int
    rows: list[dict[str, float]]
    snapshots: list[tuple[int, Image.Image]]
    report: dict[str, Any]
    title: str
    stopped: bool
    state: EngineState

    def save(self, folder: Path) -> None:
        """Persist everything publish() needs, so a crash after the image is out can
        finish the logs without a second result (rendered.png is lossless)."""
        outputs.write_atomic(folder / "rendered.png", _png_bytes(self.image))
        for step, snap in self.snapshots:
            outputs.write_atomic(folder / f"snapshot-{step}.png", _png_bytes(snap))
        meta = {"exif": self.exif.hex() if self.exif else None, "ext": self.ext, "base": self.base,
                "quality": self.quality, "rows": self.rows, "snapshots": [s for s, _ in self.snapshots],
                "report": self.report, "title": self.title, "stopped": self.stopped}
        outputs.write_atomic(folder / "rendered.json", json.dumps(meta).encode())

    @classmethod
    def load(cls, folder: Path) -> Rendered | None:
        try:
            meta = json.loads((folder / "rendered.json").read_bytes())
            image = Image.open(folder / "rendered.png").convert("RGB")
            snaps = [(s, Image.open(folder / f"snapshot-{s}.png").convert("RGB")) for s in meta["snapshots"]]
        except (OSError, ValueError, KeyError):
            return None
        empty = EngineState(step=len(meta["rows"]), image=torch.empty(0), optimizer_state={})
        return cls(image=image, exif=bytes.fromhex(meta["exif"]) if meta["exif"] else None, ext=meta["ext"],
                   base=meta["base"], quality=meta["quality"], rows=meta["rows"], snapshots=snaps,
                   report=meta["report"], title=meta["title"], stopped=meta["stopped"], state=empty)


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
        """Render, then publish: what ``stylefold run`` does for each photo."""
        rendered = self.render(image_path, preset, styles, preset_source=preset_source,
                               on_step=on_step, should_stop=should_stop)
        return self.publish(rendered, outbox, logs)

    def render(
        self,
        image_path: Path,
        preset: Preset,
        styles: Sequence[tuple[Path, float]],
        *,
        preset_source: str = "",
        on_step: Callable[[StepInfo], None] | None = None,
        should_stop: Callable[[], bool] | None = None,
        resume: Checkpoint | None = None,
        on_checkpoint: Callable[[Checkpoint], None] | None = None,
        checkpoint_every: int = 0,
        input_sha256: str | None = None,
    ) -> Rendered:
        """Load the photo and styles, optimise, and return the result in memory."""
        started_at = dt.datetime.now(dt.timezone.utc)
        t0 = time.perf_counter()
        self.limits.check(preset)
        image_path = image_path.absolute()
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
        for img, _ in style_images:
            w, h = img.size
            pixels = style_size * style_size * max(w, h) / min(w, h)
            # A style is resized to the photo's scale keeping its aspect ratio: a 100000x10
            # px file would become hundreds of megapixels. Cap it like an input image.
            if pixels > max(4 * content.shape[-1] * content.shape[-2], 4_000_000):
                raise JobFailure("too_large", f"the style image ({w}x{h}) at this size would be {pixels / 1e6:.0f} "
                                 "megapixels; use a less elongated style image or a smaller style_scale")
        style_tensors = [(_to_tensor(imageio.resize_short_side(img, style_size)), w) for img, w in style_images]

        target_content, target_styles = content, style_tensors
        if preset.preserve_color == "luminance":
            target_content = color.luminance(content)
            target_styles = [(color.match_luminance(color.luminance(s), target_content), w) for s, w in style_tensors]
        elif preset.preserve_color == "histogram":
            target_styles = [(color.match_color_statistics(s, content), w) for s, w in style_tensors]

        if resume is not None and tuple(resume.state.image.shape[-2:]) != tuple(content.shape[-2:]):
            logger.warning("%s: checkpoint is for another size; starting over", image_path.name)
            resume = None
        rows: list[dict[str, float]] = list(resume.rows) if resume else []
        snapshots: list[tuple[int, Image.Image]] = list(resume.snapshots) if resume else []
        # Elapsed time continues across a resume, so the CSV reads as one run.
        offset = rows[-1]["elapsed_s"] if rows else 0.0

        def step(info: StepInfo) -> None:
            info = dataclasses.replace(info, elapsed_s=info.elapsed_s + offset)
            rows.append(asdict(info))
            if on_step is not None:
                on_step(info)

        def keep_snapshot(step: int, image: torch.Tensor) -> None:
            snap = _to_pil(self._finish(image, content, preset))
            snap.thumbnail((SNAPSHOT_CELL, SNAPSHOT_CELL))
            snapshots.append((step, snap))

        def state(engine_state: EngineState) -> None:
            if on_checkpoint is not None:
                on_checkpoint(Checkpoint(engine_state, list(rows), list(snapshots)))

        params = _engine_params(preset, precision)
        layers = [n for n, _ in preset.style_layer_weights() + preset.content_layer_weights()]
        budget = memory_budget_bytes(self.device, self.limits.memory_budget_mb)
        plan = plan_pyramid(content.shape[-2], content.shape[-1], preset.steps,
                            max(1, int(budget / bytes_per_pixel(layers, precision))), layers=layers)
        t_engine = time.perf_counter()
        try:
            if len(plan) == 1 and len(plan[0].tiles) == 1:
                result = stylize(
                    self.extractor, target_content, target_styles, params,
                    on_step=step, on_snapshot=keep_snapshot if preset.snapshot_every else None,
                    should_stop=should_stop, style_cache=self.style_cache,
                    resume=resume.state if resume else None, on_state=state, state_every=checkpoint_every,
                )
            else:
                logger.info("%s: %dx%d exceeds one optimisation's memory budget (%.1f GB): %s",
                            image_path.name, content.shape[-1], content.shape[-2], budget / 2**30,
                            ", ".join(f"{s.width}x{s.height}/{s.steps} steps/{len(s.tiles)} tiles" for s in plan))
                # No mid-pyramid checkpoints: an interrupted multi-scale job starts over.
                rows.clear()
                snapshots.clear()
                result = stylize_pyramid(
                    self.extractor, target_content, target_styles, params, plan,
                    style_scale=preset.style_scale, on_step=step, should_stop=should_stop,
                    style_cache=self.style_cache, on_snapshot=keep_snapshot,
                )
        except EngineError as exc:
            raise JobFailure("internal", str(exc)) from exc
        except torch.OutOfMemoryError as exc:
            if self.device.type == "cuda":
                torch.cuda.empty_cache()  # give the next job the memory this one held
            raise JobFailure(
                "out_of_memory", f"out of memory on {self.device} at size {preset.size}; lower the preset's size"
            ) from exc
        engine_s = time.perf_counter() - t_engine
        final = _to_pil(self._finish(result.image, content, preset))
        report = {
            "status": "stopped" if result.stopped else "done",
            "input": {
                "path": str(image_path), "sha256": input_sha256 or sha256_file(image_path), "mode": loaded.source_mode,
                "size": list(loaded.source_size), "icc_profile": loaded.icc_description,
                "alpha_dropped": loaded.alpha_dropped,
            },
            "styles": [{"path": str(p.absolute()), "weight": w, "normalised_weight": w / sum(x for _, x in styles),
                        "sha256": sha256_file(p)} for p, w in styles],
            "preset": {"source": preset_source, "effective": preset.effective()},
            "device": str(self.device), "precision": precision,
            "steps_run": len(rows),
            "final_losses": {k: v for k, v in rows[-1].items() if k.endswith("loss")} if rows else None,
            "seconds": {"total": round(time.perf_counter() - t0, 3), "engine": round(engine_s, 3)},
            "started_at": started_at.isoformat(timespec="seconds"),
            "weights": asdict(self.extractor.weights),
            "versions": versions(),
        }
        return Rendered(
            image=final, exif=loaded.exif,
            ext=imageio.output_extension(image_path.suffix, preset.output.format),
            base=outputs.base_name(image_path.name, [p.name for p, _ in styles]),
            quality=preset.output.quality, rows=rows, snapshots=snapshots, report=report,
            title=f"{image_path.name} · {', '.join(p.name for p, _ in styles)}",
            stopped=result.stopped, state=result.state,
        )

    def publish(self, rendered: Rendered, outbox: Path, logs: Path, *,
                reserved: outputs.OutputPaths | None = None,
                on_reserve: Callable[[outputs.OutputPaths], None] | None = None) -> JobResult:
        """Write the SPEC §5 files. ``reserved``: the names a crashed earlier attempt
        already published the image under (its logs are then rewritten, nothing new is
        created); ``on_reserve`` is told each name just before the image is linked to it."""
        outbox, logs = outbox.absolute(), logs.absolute()
        outbox.mkdir(parents=True, exist_ok=True)
        logs.mkdir(parents=True, exist_ok=True)
        paths = reserved or outputs.publish_result(
            rendered.image, outbox, logs, rendered.base, rendered.ext, quality=rendered.quality, exif=rendered.exif,
            before_link=on_reserve,
        )
        report = {
            **rendered.report,
            "output": {"path": str(paths.image), "size": list(rendered.image.size), "base": paths.base},
            "logs": {"losses_csv": str(paths.losses_csv), "plot": str(paths.plot),
                     "progress": str(paths.progress) if rendered.snapshots else None},
            "finished_at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        }
        try:
            outputs.write_logs(paths, rendered.rows, report, rendered.snapshots, rendered.title)
        except OSError as exc:
            # The result is out: failing the job now would move its original to failed/
            # beside a finished picture, and a second drop would make a -2 result.
            logger.error("%s: result written, but its logs could not be (%s)", paths.image.name, exc)
        logger.info("wrote %s (%d steps, %.1f s)", paths.image, len(rendered.rows), report["seconds"]["total"])
        return JobResult(paths=paths, report=report, rows=rendered.rows, stopped=rendered.stopped)

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


def _png_bytes(image: Image.Image) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return buf.getvalue()


def _to_pil(image: torch.Tensor) -> Any:
    return imageio.from_float_array(image[0].permute(1, 2, 0).numpy().astype(np.float32))


def versions() -> dict[str, str]:
    import PIL
    import torchvision

    return {
        "stylefold": __version__, "torch": torch.__version__, "torchvision": torchvision.__version__,
        "pillow": PIL.__version__, "python": platform.python_version(),
    }
