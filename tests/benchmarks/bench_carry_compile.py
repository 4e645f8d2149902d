"""Issue 11, item 4: less work per result.

(a) carrying the optimiser's state from scale to scale: the same coarse-to-fine plan
    run with and without it; deterministic final losses (seconds are the same work).
(b) ``torch.compile`` of the step's objective (forward through VGG19 and the losses,
    and its backward) against eager, A/B interleaved in one process so that a loaded
    machine slows both alike; compile time reported apart.

    python tests/benchmarks/bench_carry_compile.py carry --size 128 --steps 60
    python tests/benchmarks/bench_carry_compile.py compile --size 256 --reps 6
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "daemon"))

from stylefold.engine import pyramid
from stylefold.engine.features import build_extractor
from stylefold.engine.stylize import _objective
from stylefold.job.run import engine_params
from stylefold.presets import PresetLibrary


def _inputs(size: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    # A smooth photo-like content (low-frequency noise) and a busy style.
    low = torch.rand(1, 3, max(2, size // 16), max(2, size * 3 // 32), generator=g)
    content = torch.nn.functional.interpolate(low, size=(size, size * 3 // 2), mode="bicubic").clamp(0, 1)
    return content, torch.rand(1, 3, size, size, generator=g)


def carry(args: argparse.Namespace) -> None:
    extractor = build_extractor(args.weights, "cpu")
    pyramid.MIN_COARSE_SIDE = max(16, args.size // 4)
    pyramid.CARRIED_OPTIMIZERS = ("adam", "lbfgs")  # measure both
    content, style = _inputs(args.size)
    h, w = content.shape[-2:]
    for name in args.presets.split(","):
        preset = PresetLibrary.default().load(name)
        params = engine_params(preset.model_copy(update={"early_stop": False}), "fp32")
        budget = (h // 2) * (w // 2)  # the coarse scale fits whole, the full size does not
        plan = pyramid.plan_pyramid(h, w, args.steps, budget + 1, layers=[n for n, _ in params.style_layers +
                                                                           params.content_layers])
        finals = {}
        for on in (False, True):
            t = time.perf_counter()
            result = pyramid.stylize_pyramid(extractor, content, [(style, 1.0)], params, plan, carry_optimizer=on)
            seconds = time.perf_counter() - t
            with torch.no_grad():  # the whole result's loss at full size (the fine scale is tiled)
                whole = float(_objective(extractor, content, [(style, 1.0)], params, None)(result.image))
            finals[on] = (whole, seconds, len(result.history))
        print(f"{name} {h}x{w} plan {pyramid.plan_key(plan)}: fresh optimiser per scale: whole result's total loss "
              f"{finals[False][0]:.6g} ({finals[False][2]} steps, {finals[False][1]:.1f} s); carried "
              f"{finals[True][0]:.6g} ({finals[True][1]:.1f} s); "
              f"carried/fresh {finals[True][0] / finals[False][0]:.4f}",
              flush=True)


def compile_ab(args: argparse.Namespace) -> None:
    extractor = build_extractor(args.weights, "cpu")
    content, style = _inputs(args.size)
    for name in args.presets.split(","):
        params = engine_params(PresetLibrary.default().load(name), "fp32")
        objective = _objective(extractor, content, [(style, 1.0)], params, None)
        compiled = torch.compile(objective)
        image = content.clone().requires_grad_(True)

        def step(f: object) -> float:
            t = time.perf_counter()
            image.grad = None
            f(image).backward()  # type: ignore[operator]
            return time.perf_counter() - t

        t = time.perf_counter()
        step(compiled)
        compile_s = time.perf_counter() - t
        step(objective)
        eager, comp = [], []
        for _ in range(args.reps):  # interleaved: A B A B ...
            eager.append(step(objective))
            comp.append(step(compiled))
        e, c = statistics.median(eager), statistics.median(comp)
        print(f"{name} {content.shape[-2]}x{content.shape[-1]} fp32, {torch.get_num_threads()} threads: eager "
              f"{e:.4f} s/step, compiled {c:.4f} s/step (compiled/eager {c / e:.3f}); first compiled step "
              f"{compile_s:.1f} s", flush=True)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("what", choices=["carry", "compile"])
    ap.add_argument("--size", type=int, default=128)
    ap.add_argument("--steps", type=int, default=60)
    ap.add_argument("--reps", type=int, default=6)
    ap.add_argument("--presets", default="book,gatys")
    ap.add_argument("--weights", default="random")
    args = ap.parse_args()
    (carry if args.what == "carry" else compile_ab)(args)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
