"""Running one job: a ``JobSpec`` + the resident model + callbacks -> a typed outcome.

``run_job`` is what ``stylefold run``, the hot-folder worker and (next) a remote
worker call. It knows nothing of hot folders and publishes nothing: a ``Done`` carries
the render in memory, a ``Stopped`` the checkpoint to resume from, a ``Failed`` a kind
and one sentence. No exception escapes it.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from PIL import Image

from ..engine.features import FeatureExtractor
from ..engine.pyramid import bytes_per_pixel, plan_pyramid, stylize_pyramid
from ..engine.runtime import memory_budget_bytes, resolve_precision
from ..engine.steps import StepInfo
from ..engine.stylize import EngineError, EngineState, StyleParams, StyleResult, StyleTargetCache, stylize
from ..failures import FailureKind, JobFailure, classify
from ..media import imageio, outputs
from ..presets import Preset
from .checkpoint import Checkpoint, Rendered
from .prepare import Prepared, prepare, to_pil
from .report import build_report, utc_now
from .spec import JobSpec

__all__ = ["Done", "Failed", "JobCallbacks", "Outcome", "Resident", "Stopped", "engine_params", "run_job"]

logger = logging.getLogger(__name__)

SNAPSHOT_CELL = 256


@dataclass
class Resident:
    """What a process builds once and hands to every job: VGG19 on its device and the
    style-target cache (studios reuse a handful of styles)."""

    extractor: FeatureExtractor
    style_cache: StyleTargetCache = field(default_factory=StyleTargetCache)

    @property
    def device(self) -> torch.device:
        return self.extractor.device


@dataclass
class JobCallbacks:
    """How a job talks to whoever runs it; all optional."""

    on_step: Callable[[StepInfo], None] | None = None
    on_checkpoint: Callable[[Checkpoint], None] | None = None
    checkpoint_every: int = 0
    should_stop: Callable[[], bool] | None = None


@dataclass
class Done:
    rendered: Rendered


@dataclass
class Stopped:
    checkpoint: Checkpoint


@dataclass
class Failed:
    kind: FailureKind
    message: str


Outcome = Done | Stopped | Failed


def run_job(spec: JobSpec, resident: Resident, callbacks: JobCallbacks | None = None,
            resume: Checkpoint | None = None) -> Outcome:
    """Render ``spec``; ``resume`` continues an interrupted run of the same spec."""
    callbacks = callbacks or JobCallbacks()
    try:
        return _run(spec, resident, callbacks, resume)
    except Exception as exc:  # a job's failure is an outcome, never an escape
        failure = classify(exc, device=str(resident.device), size=spec.preset.size)
        if failure.kind == FailureKind.INTERNAL and not isinstance(exc, JobFailure):
            logger.exception("%s: internal error", spec.input.name)
        if failure.kind == FailureKind.OUT_OF_MEMORY and resident.device.type == "cuda":
            torch.cuda.empty_cache()  # give the next job the memory this one held
        return Failed(failure.kind, failure.message)


def _run(spec: JobSpec, resident: Resident, callbacks: JobCallbacks, resume: Checkpoint | None) -> Outcome:
    started_at, t0 = utc_now(), time.perf_counter()
    spec.caps.check(spec.preset)
    precision = resolve_precision(spec.preset.precision, resident.device)
    prepared = prepare(spec)
    resume = _usable(resume, spec, prepared)
    record = _Recorder(spec.identity(), callbacks, prepared.finish, original=prepared.content)
    if resume is not None:
        record.resume_from(resume)
    t_engine = time.perf_counter()
    result = _optimise(spec, resident, prepared, precision, resume, record)
    engine_s = time.perf_counter() - t_engine
    if result.stopped:
        return Stopped(Checkpoint(spec.identity(), result.state, record.rows, record.snapshots))
    report = build_report(spec, prepared.loaded, record.rows, stopped=False, device=str(resident.device),
                          precision=precision, weights=resident.extractor.weights, started_at=started_at,
                          seconds_total=time.perf_counter() - t0, seconds_engine=engine_s)
    return Done(Rendered(
        image=to_pil(prepared.finish(result.image)), exif=prepared.loaded.exif,
        ext=imageio.output_extension(Path(spec.input.name).suffix, spec.preset.output.format),
        base=outputs.base_name(spec.input.name, [s.name for s in spec.styles]),
        quality=spec.preset.output.quality, rows=record.rows, snapshots=record.snapshots, report=report,
        title=f"{spec.input.name} · {', '.join(s.name for s in spec.styles)}",
    ))


@dataclass
class _Recorder:
    """The loss rows and snapshots of a run, fed by the engine's callbacks. A run with
    snapshots starts them with ``original`` (the photo at its working size) as step 0,
    so its progress sheet shows where it began."""

    spec_identity: str
    callbacks: JobCallbacks
    finish: Callable[[torch.Tensor], torch.Tensor]
    rows: list[dict[str, float]] = field(default_factory=list)
    snapshots: list[tuple[int, Image.Image]] = field(default_factory=list)
    offset_s: float = 0.0
    original: torch.Tensor | None = None

    def resume_from(self, checkpoint: Checkpoint) -> None:
        self.rows, self.snapshots = list(checkpoint.rows), list(checkpoint.snapshots)
        # Elapsed time continues across a resume, so the CSV reads as one run.
        self.offset_s = self.rows[-1]["elapsed_s"] if self.rows else 0.0

    def restart(self) -> None:
        self.rows, self.snapshots, self.offset_s = [], [], 0.0

    def step(self, info: StepInfo) -> None:
        info = dataclasses.replace(info, elapsed_s=info.elapsed_s + self.offset_s)
        self.rows.append(asdict(info))
        if self.callbacks.on_step is not None:
            self.callbacks.on_step(info)

    def snapshot(self, number: int, image: torch.Tensor) -> None:
        # The engine's steps start at 1: step 0 is free for the photo itself. Added with
        # the first snapshot (a restart clears it; a checkpoint carries it).
        if self.original is not None and not any(step == 0 for step, _ in self.snapshots):
            self.snapshots.insert(0, (0, self._thumbnail(self.original)))
        self.snapshots.append((number, self._thumbnail(self.finish(image))))

    @staticmethod
    def _thumbnail(image: torch.Tensor) -> Image.Image:
        snap = to_pil(image)
        snap.thumbnail((SNAPSHOT_CELL, SNAPSHOT_CELL))
        return snap

    def checkpoint(self, state: EngineState) -> None:
        if self.callbacks.on_checkpoint is not None:
            self.callbacks.on_checkpoint(Checkpoint(self.spec_identity, state, list(self.rows), list(self.snapshots)))


def _optimise(spec: JobSpec, resident: Resident, prepared: Prepared, precision: str,
              resume: Checkpoint | None, record: _Recorder) -> StyleResult:
    """One optimisation when the result fits the memory budget, else coarse to fine."""
    preset, callbacks = spec.preset, record.callbacks
    params = engine_params(preset, precision)
    layers = [n for n, _ in preset.style_layer_weights() + preset.content_layer_weights()]
    content = prepared.content
    budget = memory_budget_bytes(resident.device, spec.caps.memory_budget_mb)
    plan = plan_pyramid(content.shape[-2], content.shape[-1], preset.steps,
                        max(1, int(budget / bytes_per_pixel(layers, precision))), layers=layers)
    try:
        if len(plan) == 1 and len(plan[0].tiles) == 1:
            return stylize(
                resident.extractor, prepared.target_content, prepared.target_styles, params,
                on_step=record.step, on_snapshot=record.snapshot if preset.snapshot_every else None,
                should_stop=callbacks.should_stop, style_cache=resident.style_cache,
                resume=resume.state if resume else None, on_state=record.checkpoint,
                state_every=callbacks.checkpoint_every,
            )
        logger.info("%s: %dx%d exceeds one optimisation's memory budget (%.1f GB): %s",
                    spec.input.name, content.shape[-1], content.shape[-2], budget / 2**30,
                    ", ".join(f"{s.width}x{s.height}/{s.steps} steps/{len(s.tiles)} tiles" for s in plan))
        # No mid-pyramid checkpoints: an interrupted multi-scale job starts over.
        record.restart()
        return stylize_pyramid(
            resident.extractor, prepared.target_content, prepared.target_styles, params, plan,
            style_scale=preset.style_scale, on_step=record.step, should_stop=callbacks.should_stop,
            style_cache=resident.style_cache, on_snapshot=record.snapshot,
        )
    except EngineError as exc:
        raise JobFailure(str(exc), kind=FailureKind.INTERNAL) from exc


def _usable(resume: Checkpoint | None, spec: JobSpec, prepared: Prepared) -> Checkpoint | None:
    if resume is None:
        return None
    if resume.spec_identity != spec.identity():
        logger.warning("%s: checkpoint is of another job description; starting over", spec.input.name)
        return None
    if tuple(resume.state.image.shape[-2:]) != tuple(prepared.content.shape[-2:]):
        logger.warning("%s: checkpoint is for another size; starting over", spec.input.name)
        return None
    return resume


def engine_params(preset: Preset, precision: str) -> StyleParams:
    """The engine's parameters: the preset's fields of the same names (the preset model
    is the one source of their defaults), with ``precision`` resolved."""
    values = {f.name: getattr(preset, f.name) for f in dataclasses.fields(StyleParams)
              if f.name not in ("style_layers", "content_layers", "precision")}
    return StyleParams(style_layers=preset.style_layer_weights(), content_layers=preset.content_layer_weights(),
                       precision=precision, **values)  # type: ignore[arg-type]
