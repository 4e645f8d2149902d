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

from ..engine import conv_methods
from ..engine.features import FeatureExtractor
from ..engine.pyramid import PyramidState, Scale, bytes_per_pixel, plan_key, plan_pyramid, stylize_pyramid
from ..engine.runtime import memory_budget_bytes, resolve_precision
from ..engine.steps import StepInfo
from ..engine.stylize import (
    Diverged,
    EarlyStop,
    EngineError,
    EngineState,
    StyleParams,
    StyleResult,
    StyleTargetCache,
    stylize,
)
from ..failures import FailureKind, JobFailure, classify
from ..media import imageio, outputs
from ..names import printable
from ..presets import Preset
from .checkpoint import Checkpoint, Rendered
from .prepare import Prepared, prepare, to_pil
from .preview import PreviewImage, coarse_scale_is_preview, render_preview
from .report import build_report, utc_now
from .spec import JobSpec

__all__ = ["Done", "Failed", "JobCallbacks", "Outcome", "PreviewImage", "Resident", "Stopped", "engine_params",
           "run_job"]

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
    # Told the job's preview (preset ``preview``) before the full render goes on; returns
    # where it was written (recorded in the report and the checkpoint), or None.
    on_preview: Callable[[PreviewImage], str | None] | None = None


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
    if resume is not None and resume.precision == "fp32" and precision != "fp32" and spec.preset.precision == "auto":
        # The run went over to fp32 after diverging in the lower precision (below).
        logger.info("%s: resuming in fp32, as the run was when it stopped", printable(spec.input.name))
        precision = "fp32"
    prepared = prepare(spec)
    plan = _plan(spec, resident, prepared, precision)
    resume = _usable(resume, spec, prepared, plan)
    base = outputs.base_name(spec.input.name, [s.name for s in spec.styles])
    record = _Recorder(spec.identity(), callbacks, prepared.finish, original=prepared.content,
                       preview_base=base, exif=prepared.loaded.exif, t0=t0, precision=precision)
    if resume is not None:
        record.resume_from(resume)
        conv_methods.adopt(resume.conv_methods)  # each conv size runs as it did before the stop
    t_engine = time.perf_counter()
    try:
        result = _optimise(spec, resident, prepared, precision, resume, record, plan)
    except _LowPrecisionDiverged as exc:
        # `auto` chose the lower precision for speed; its range is what failed, not the
        # photo or the preset. The job starts over in fp32 rather than failing.
        logger.warning("%s: diverged in %s (%s); starting again in fp32", printable(spec.input.name), precision, exc)
        precision = record.precision = "fp32"
        plan = _plan(spec, resident, prepared, precision)
        record.restart()
        result = _optimise(spec, resident, prepared, precision, None, record, plan)
    engine_s = time.perf_counter() - t_engine
    if result.stopped:
        return Stopped(Checkpoint(spec.identity(), result.state, record.rows, record.snapshots,
                                  pyramid=result.pyramid, preview=record.preview, precision=precision))
    early = list(result.pyramid.early_stops) if result.pyramid is not None else (
        [{"step": result.early_stop[0], "reason": result.early_stop[1]}] if result.early_stop else [])
    report = build_report(spec, prepared.loaded, record.rows, stopped=False, device=str(resident.device),
                          precision=precision, weights=resident.extractor.weights, started_at=started_at,
                          seconds_total=time.perf_counter() - t0, seconds_engine=engine_s,
                          early_stops=early, preview=record.preview, multi_scale=len(plan) > 1 or
                          len(plan[0].tiles) > 1)
    return Done(Rendered(
        image=to_pil(prepared.finish(result.image)), exif=prepared.loaded.exif,
        ext=imageio.output_extension(Path(spec.input.name).suffix, spec.preset.output.format),
        base=base,
        quality=spec.preset.output.quality, rows=record.rows, snapshots=record.snapshots, report=report,
        title=printable(f"{spec.input.name} · {', '.join(s.name for s in spec.styles)}"),
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
    preview_base: str = ""
    exif: bytes | None = None
    t0: float = 0.0
    preview: str | None = None  # where the preview was written
    precision: str | None = None  # the precision the run is in, for its checkpoints

    def resume_from(self, checkpoint: Checkpoint) -> None:
        self.rows, self.snapshots = list(checkpoint.rows), list(checkpoint.snapshots)
        self.preview = checkpoint.preview
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
            self.callbacks.on_checkpoint(Checkpoint(self.spec_identity, state, list(self.rows), list(self.snapshots),
                                                    preview=self.preview, precision=self.precision))

    def pyramid_checkpoint(self, where: PyramidState) -> None:
        if self.callbacks.on_checkpoint is not None:
            self.callbacks.on_checkpoint(Checkpoint(self.spec_identity, _tile_state(where), list(self.rows),
                                                    list(self.snapshots), pyramid=where, preview=self.preview,
                                                    precision=self.precision))

    def give_preview(self, image: torch.Tensor, steps: int, *, coarse_scale: bool) -> None:
        """Hand the preview out once (``on_preview``); a resumed job that wrote one already does not again."""
        if self.callbacks.on_preview is None or self.preview is not None:
            return
        picture = PreviewImage(to_pil(self.finish(image)), self.preview_base, self.exif, steps,
                               time.perf_counter() - self.t0, coarse_scale)
        try:
            self.preview = self.callbacks.on_preview(picture)
        except OSError as exc:  # a preview is a courtesy: a full disk costs it, not the job
            logger.warning("%s: preview not written (%s)", self.preview_base, exc)


def _tile_state(where: PyramidState) -> EngineState:
    """The engine state a coarse-to-fine checkpoint carries: the tile's, or (between
    tiles) the latest picture, which the status page shows."""
    if where.tile_state is not None:
        return where.tile_state
    if where.canvas is not None and where.weight is not None and bool((where.weight > 0).any()):
        image = where.canvas / where.weight.clamp_min(1e-8)
    else:
        image = where.previous if where.previous is not None else torch.zeros(1, 3, 1, 1)
    return EngineState(step=0, image=image, optimizer_state={})


def _plan(spec: JobSpec, resident: Resident, prepared: Prepared, precision: str) -> list[Scale]:
    """Coarse to fine where the preset asks (``coarse_to_fine``) or the result exceeds
    the memory budget, else one scale."""
    preset = spec.preset
    layers = [n for n, _ in preset.style_layer_weights() + preset.content_layer_weights()]
    content = prepared.content
    budget = memory_budget_bytes(resident.device, spec.caps.memory_budget_mb)
    speed = preset.coarse_to_fine
    plan = plan_pyramid(content.shape[-2], content.shape[-1], preset.steps,
                        max(1, int(budget / bytes_per_pixel(layers, precision))), layers=layers,
                        coarse=(speed.size, speed.steps) if speed else None)
    scales = ", ".join(f"{s.width}x{s.height}/{s.steps} steps/{len(s.tiles)} tiles" for s in plan)
    if speed and len(plan) > 1:
        logger.info("%s: coarse to fine: %s", printable(spec.input.name), scales)
    elif len(plan) > 1 or len(plan[0].tiles) > 1:
        logger.info("%s: %dx%d exceeds one optimisation's memory budget (%.1f GB): %s",
                    printable(spec.input.name), content.shape[-1], content.shape[-2], budget / 2**30, scales)
    return plan


def _optimise(spec: JobSpec, resident: Resident, prepared: Prepared, precision: str,
              resume: Checkpoint | None, record: _Recorder, plan: list[Scale]) -> StyleResult:
    preset, callbacks = spec.preset, record.callbacks
    params = engine_params(preset, precision)
    single = len(plan) == 1 and len(plan[0].tiles) == 1
    coarse_preview = bool(preset.preview and not single and coarse_scale_is_preview(plan, preset.preview))
    try:
        if preset.preview and not coarse_preview and record.preview is None and (resume is None or resume.step == 0):
            preview = render_preview(resident.extractor, prepared, params, preset.preview,
                                     style_scale=preset.style_scale, style_cache=resident.style_cache,
                                     should_stop=callbacks.should_stop)
            if not preview.stopped:
                record.give_preview(preview.image, len(preview.history), coarse_scale=False)
        if single:
            return stylize(
                resident.extractor, prepared.target_content, prepared.target_styles, params,
                on_step=record.step, on_snapshot=record.snapshot if preset.snapshot_every else None,
                should_stop=callbacks.should_stop, style_cache=resident.style_cache,
                resume=resume.state if resume else None, on_state=record.checkpoint,
                state_every=callbacks.checkpoint_every,
            )

        def on_scale(index: int, image: torch.Tensor) -> None:
            if index == 0 and coarse_preview:
                record.give_preview(image, len(record.rows), coarse_scale=True)

        return stylize_pyramid(
            resident.extractor, prepared.target_content, prepared.target_styles, params, plan,
            style_scale=preset.style_scale, on_step=record.step, should_stop=callbacks.should_stop,
            style_cache=resident.style_cache, on_snapshot=record.snapshot,
            resume=resume.pyramid if resume else None, on_state=record.pyramid_checkpoint,
            state_every=callbacks.checkpoint_every, on_scale=on_scale,
        )
    except EngineError as exc:
        if isinstance(exc, Diverged) and preset.precision == "auto" and precision != "fp32":
            raise _LowPrecisionDiverged(exc.what) from exc
        raise JobFailure(str(exc), kind=FailureKind.INTERNAL) from exc


class _LowPrecisionDiverged(Exception):
    """A run in the precision `auto` chose diverged (its cause; the message is the
    divergence's ``what``): worth one more in fp32."""


def _usable(resume: Checkpoint | None, spec: JobSpec, prepared: Prepared, plan: list[Scale]) -> Checkpoint | None:
    if resume is None:
        return None
    if resume.spec_identity != spec.identity():
        logger.warning("%s: checkpoint is of another job description; starting over", spec.input.name)
        return None
    multi = len(plan) > 1 or len(plan[0].tiles) > 1
    if multi != (resume.pyramid is not None) or (resume.pyramid is not None and resume.pyramid.plan_key !=
                                                 plan_key(plan)):
        logger.warning("%s: checkpoint is of another coarse-to-fine plan; starting over", spec.input.name)
        return None
    if not multi and tuple(resume.state.image.shape[-2:]) != tuple(prepared.content.shape[-2:]):
        logger.warning("%s: checkpoint is for another size; starting over", spec.input.name)
        return None
    return resume


def engine_params(preset: Preset, precision: str) -> StyleParams:
    """The engine's parameters: the preset's fields of the same names (the preset model
    is the one source of their defaults), with ``precision`` resolved."""
    values = {f.name: getattr(preset, f.name) for f in dataclasses.fields(StyleParams)
              if f.name not in ("style_layers", "content_layers", "precision", "early_stop")}
    rule = preset.early_stop
    early_stop = EarlyStop(rule.tolerance, rule.patience) if rule else False
    return StyleParams(style_layers=preset.style_layer_weights(), content_layers=preset.content_layer_weights(),
                       precision=precision, early_stop=early_stop, **values)  # type: ignore[arg-type]
