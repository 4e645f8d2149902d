"""Winograd F(4x4, 3x3) against oneDNN's direct convolution on this CPU, in fp32.

    python -m tests.benchmarks.bench_winograd [--presets book,gatys] [--size 512] [--rounds 3]

Two parts, both in one process with the arms interleaved (a shared machine's speed drifts
by more than the difference measured): each VGG19 conv shape at that size, forward plus
input gradient, by each of ``winograd.METHODS`` and by what ``auto`` picks for it; then
seconds per step of each preset with every conv direct and with ``auto``
(``stylefold.job.bench.time_steps``, the median of ``--steps`` steps), and which method
each conv ran. Each figure is the median over ``--rounds``. Not a pytest test: speed is
reported, never asserted.
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
import time

import torch
from torch import nn

from stylefold.engine.conv_methods import METHODS, onednn_products
from stylefold.engine.features import build_extractor
from stylefold.engine.runtime import tune_cpu_allocator
from stylefold.engine.winograd import Winograd3x3
from stylefold.job.bench import time_steps
from stylefold.job.run import engine_params
from stylefold.presets import PresetLibrary

# (name, in, out, stride of the input to the photo): VGG19's distinct conv shapes.
SHAPES = [("conv1_2", 64, 64, 1), ("conv2_1", 64, 128, 2), ("conv2_2", 128, 128, 2), ("conv3_1", 128, 256, 4),
          ("conv3_2", 256, 256, 4), ("conv4_1", 256, 512, 8), ("conv4_2", 512, 512, 8), ("conv5_1", 512, 512, 16)]


def _fwd_bwd_seconds(conv: nn.Module, x: torch.Tensor, grad: torch.Tensor) -> float:
    x = x.detach().requires_grad_()
    start = time.perf_counter()
    conv(x).backward(grad)
    return time.perf_counter() - start


def bench_layers(size: int, rounds: int) -> None:
    methods = [m for m in METHODS if m != "winograd-onednn" or onednn_products()]
    print(f"forward + input gradient at {size} px, seconds; speed-up against direct; auto: what it picks")
    print(f"{'layer':<8} {'shape':<18}" + "".join(f"{m:>22}" for m in methods) + "   auto")
    for name, c, k, stride in SHAPES:
        h, w = size // stride, size * 4 // 3 // stride
        conv = nn.Conv2d(c, k, 3, padding=1).requires_grad_(False)
        wino = Winograd3x3(conv, min_channels=0)  # timed even where it cannot pay
        x = torch.randn(1, c, h, w).contiguous(memory_format=torch.channels_last)
        grad = torch.randn(1, k, h, w).contiguous(memory_format=torch.channels_last)
        times: dict[str, list[float]] = {m: [] for m in methods}
        for _ in range(rounds + 1):  # the first round warms each up
            for m in methods:
                wino.method = m
                times[m].append(_fwd_bwd_seconds(wino, x, grad))
        median = {m: statistics.median(v[1:]) for m, v in times.items()}
        auto = Winograd3x3(conv).method_for(x)  # the real one: it never tries below MIN_CHANNELS
        cells = "".join(f"{median[m]:>13.3f} {median['direct'] / median[m]:>7.2f}x" for m in methods)
        print(f"{name:<8} {c:>3}->{k:<3} {h:>4}x{w:<5}  {cells}   {auto}")


def bench_presets(presets: list[str], size: int, steps: int, rounds: int) -> None:
    extractor = build_extractor("random")
    library = PresetLibrary.default()
    gen = torch.Generator().manual_seed(0)
    content = torch.rand(1, 3, size, size * 4 // 3, generator=gen)
    style = torch.rand(1, 3, size, size, generator=gen)
    print(f"preset   direct s/step  auto s/step  speed-up   ({size}x{size * 4 // 3}, fp32, {rounds} rounds)")
    for name in presets:
        params = dataclasses.replace(engine_params(library.load(name), "fp32"), steps=steps)
        times: dict[str, list[float]] = {"direct": [], "auto": []}
        chosen: dict[str, str] = {}
        for _ in range(rounds):
            for method in times:
                extractor.conv_method = method  # type: ignore[assignment]
                extractor.forget_conv_methods()
                times[method].append(time_steps(extractor, params, content, style, steps))
                if method == "auto":
                    chosen = extractor.conv_methods()
        d, a = statistics.median(times["direct"]), statistics.median(times["auto"])
        print(f"{name:<8} {d:>13.3f} {a:>12.3f} {d / a:>9.2f}x   all: direct {times['direct']}, auto {times['auto']}")
        print("         auto ran: " + ", ".join(f"{layer} {m}" for layer, m in chosen.items() if layer != "conv1_1"))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--presets", default="book,gatys")
    ap.add_argument("--size", type=int, default=512)
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--no-layers", action="store_true", help="skip the per-layer part")
    args = ap.parse_args()
    tune_cpu_allocator()
    torch.manual_seed(0)
    if not args.no_layers:
        bench_layers(args.size, args.rounds)
    bench_presets([p for p in args.presets.split(",") if p], args.size, args.steps, args.rounds)


if __name__ == "__main__":
    main()
