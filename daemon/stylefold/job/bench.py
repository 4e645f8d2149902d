"""``stylefold bench``: seconds per optimisation step by preset, size and precision,
beside this machine's measured matrix-multiply peak.

A step's floating-point work is counted with ``torch.utils.flop_counter`` (convolutions
and matrix products, forward and backward), so "fraction of peak" compares like with
like: the step's achieved FLOP/s against a large square matmul's at the same precision.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import statistics
import time
from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch.utils.flop_counter import FlopCounterMode

from ..engine.conv_methods import flop_formulas, linear_onednn, onednn_products
from ..engine.features import FeatureExtractor, build_extractor
from ..engine.runtime import cpu_bf16, resolve_device, resolve_precision, tune_cpu_allocator
from ..engine.stylize import StyleParams, stylize
from ..engine.winograd import MIN_CHANNELS
from ..presets import PresetLibrary
from .run import engine_params

__all__ = ["BenchRow", "matmul_peak", "run_bench", "time_steps"]

logger = logging.getLogger(__name__)

WARMUP_STEPS = 2


@dataclass(frozen=True)
class BenchRow:
    preset: str
    height: int
    width: int
    precision: str
    s_per_step: float
    gflop_per_step: float
    gflops: float
    peak_gflops: float
    fraction_of_peak: float
    convolutions: dict[str, str]  # what each conv ran (conv_methods.METHODS) in the timed steps


def matmul_peak(device: torch.device, dtype: torch.dtype, n: int = 4096, reps: int = 3) -> float:
    """GFLOP/s of an n x n x n matmul, best of ``reps`` after one warm-up. On the CPU in
    fp32 the faster of ``torch.mm`` (MKL) and oneDNN's matmul: on AMD CPUs MKL's runs at
    about half of what the cores do (measured on a Zen 5), which would understate the peak."""
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    products: list[Any] = [lambda: a @ b]
    if device.type == "cpu" and dtype == torch.float32 and onednn_products():
        products.append(lambda: linear_onednn(a, b))
    best = float("inf")
    for product in products:
        for i in range(reps + 1):
            _sync(device)
            t = time.perf_counter()
            product()
            _sync(device)
            if i:
                best = min(best, time.perf_counter() - t)
    return 2 * n**3 / best / 1e9


def time_steps(extractor: FeatureExtractor, params: StyleParams, content: torch.Tensor,
               style: torch.Tensor, steps: int) -> float:
    """Median seconds per step over ``steps`` steps after ``WARMUP_STEPS``."""
    run = dataclasses.replace(params, steps=WARMUP_STEPS + steps, snapshot_every=0, early_stop=False)
    stamps: list[float] = []

    def on_step(_: Any) -> None:
        _sync(extractor.device)
        stamps.append(time.perf_counter())

    stylize(extractor, content, [(style, 1.0)], run, on_step=on_step)
    per_step = [b - a for a, b in zip(stamps[WARMUP_STEPS - 1:], stamps[WARMUP_STEPS:], strict=False)]
    return statistics.median(per_step)


def step_flops(extractor: FeatureExtractor, params: StyleParams, content: torch.Tensor, style: torch.Tensor) -> float:
    """FLOPs of one step: a 1-step run minus a 0-step run (which computes only targets),
    after a 0-step run uncounted (one-off work: Winograd's transformed kernels, the
    measurement of each conv's method)."""
    def run(steps: int) -> None:
        stylize(extractor, content, [(style, 1.0)],
                dataclasses.replace(params, steps=steps, snapshot_every=0, early_stop=False))

    def count(steps: int) -> int:
        with FlopCounterMode(display=False, custom_mapping=flop_formulas()) as counter:
            run(steps)
        return int(counter.get_total_flops())

    run(0)  # outside the counter: its per-op overhead would bias the measurement
    return float(count(1) - count(0))


def run_bench(args: argparse.Namespace) -> int:
    device = resolve_device(args.device or "auto")
    if device.type == "cpu":
        tune_cpu_allocator()
    precisions = _precisions(args.precisions, device)
    sizes = [int(s) for s in str(args.sizes or "128,512").split(",") if s]
    extractor = build_extractor(args.weights, device)
    library = PresetLibrary.default()
    peaks = {p: matmul_peak(device, _DTYPES[p]) for p in precisions}
    for p, g in peaks.items():
        logger.info("matmul peak %s on %s: %.0f GFLOP/s", p, device, g)
    rows: list[BenchRow] = []
    for name in [n for n in str(args.presets or "book,gatys").split(",") if n]:
        preset = library.load(name)
        for size in sizes:
            # A 4:3 landscape photo at this short side; the style image at the same size.
            gen = torch.Generator().manual_seed(0)
            content = torch.rand(1, 3, size, size * 4 // 3, generator=gen)
            style = torch.rand(1, 3, size, size, generator=gen)
            for precision in precisions:
                params = engine_params(preset, precision)
                extractor.forget_conv_methods()
                seconds = time_steps(extractor, params, content, style, args.steps)
                ran = extractor.conv_methods()
                flops = step_flops(extractor, params, content, style)
                gflops = flops / seconds / 1e9
                row = BenchRow(name, size, size * 4 // 3, precision, seconds, flops / 1e9, gflops,
                               peaks[precision], gflops / peaks[precision], ran)
                rows.append(row)
                logger.info("%s %dx%d %s: %.4f s/step, %.1f GFLOP/step, %.0f GFLOP/s = %.0f%% of peak",
                            name, row.height, row.width, precision, seconds, row.gflop_per_step, gflops,
                            100 * row.fraction_of_peak)
    _print(rows, device, peaks, as_json=args.json)
    return 0


_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def _precisions(arg: str | None, device: torch.device) -> list[str]:
    if arg:
        return [p for p in arg.split(",") if p]
    out = ["fp32"]
    if device.type == "cpu" and torch.ops.mkldnn._is_mkldnn_bf16_supported():
        out.append("bf16")  # measured even where it is emulated: the figure shows why auto skips it
    if device.type == "cuda":
        out += ["bf16", "fp16"] if torch.cuda.is_bf16_supported(including_emulation=False) else ["fp16"]
    return out


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _print(rows: list[BenchRow], device: torch.device, peaks: dict[str, float], *, as_json: bool) -> None:
    auto = resolve_precision("auto", device)
    why = cpu_bf16()[1] if device.type == "cpu" else "bf16 tensor cores" if auto == "bf16" else "no bf16 tensor cores"
    if as_json:
        print(json.dumps({"device": str(device), "threads": torch.get_num_threads(),
                          "precision_auto": auto, "precision_auto_why": why,
                          "matmul_peak_gflops": peaks, "convolutions": _convolutions(device),
                          "rows": [asdict(r) for r in rows]}, indent=2))
        return
    peak_text = ", ".join(f"{p} {g:.0f}" for p, g in peaks.items())
    print(f"device {device}, {torch.get_num_threads()} threads; matmul peak GFLOP/s: {peak_text}")
    print(f"precision auto: {auto} ({why})")
    print(f"convolutions: {_convolutions(device)}")
    print(f"{'preset':<8} {'size':>9} {'prec':<5} {'s/step':>8} {'GFLOP/step':>10} {'GFLOP/s':>8} {'of peak':>8}")
    for r in rows:
        print(f"{r.preset:<8} {f'{r.height}x{r.width}':>9} {r.precision:<5} {r.s_per_step:>8.4f} "
              f"{r.gflop_per_step:>10.1f} {r.gflops:>8.0f} {100 * r.fraction_of_peak:>7.0f}%")
    for r in rows:
        if any(m != "direct" for m in r.convolutions.values()):
            print(f"{r.preset} {r.height}x{r.width} {r.precision} ran Winograd: "
                  + ", ".join(f"{layer} {m}" for layer, m in r.convolutions.items() if m != "direct"))


def _convolutions(device: torch.device) -> str:
    if device.type != "cpu":
        return "the device library's own (it picks Winograd or direct itself)"
    return (f"in fp32, each conv with {MIN_CHANNELS}+ channels in or out runs as whichever of oneDNN direct, "
            "Winograd F(4x4, 3x3) with MKL products or with oneDNN products was measured fastest at its shape "
            "in this process; oneDNN direct elsewhere and in bf16; GFLOP/step counts the multiplications done")
