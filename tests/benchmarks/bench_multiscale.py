"""Peak memory and seconds of a large job: coarse-to-fine (with tiles) against one
single-scale optimisation at the same size, each in a fresh process (peak RSS is per
process). Random weights; speed and memory do not depend on them.

    python -m tests.benchmarks.bench_multiscale [--long-edge 2048] [--steps 20] [--budget-mb 3000]

Not a pytest test: figures are reported, never asserted.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time


def run_case(long_edge: int, steps: int, budget_mb: int, preset: str) -> dict[str, float]:
    import torch

    from stylefold.engine.features import build_extractor
    from stylefold.engine.pyramid import bytes_per_pixel, plan_pyramid, stylize_pyramid
    from stylefold.engine.runtime import tune_cpu_allocator
    from stylefold.job.run import engine_params as _engine_params
    from stylefold.presets import PresetLibrary

    tune_cpu_allocator()
    extractor = build_extractor("random")
    p = PresetLibrary.default().load(preset)
    params = _engine_params(p, "fp32")
    params = type(params)(**{**params.__dict__, "steps": steps, "init": "content"})
    short = long_edge * 3 // 4
    g = torch.Generator().manual_seed(0)
    content = torch.rand(1, 3, short, long_edge, generator=g)
    style = torch.rand(1, 3, short, short, generator=g)
    layers = [n for n, _ in params.style_layers + params.content_layers]
    max_pixels = budget_mb * 2**20 // int(bytes_per_pixel(layers, "fp32")) if budget_mb else short * long_edge
    plan = plan_pyramid(short, long_edge, steps, max_pixels, layers=layers)
    t0 = time.perf_counter()
    result = stylize_pyramid(extractor, content, [(style, 1.0)], params, plan)
    seconds = time.perf_counter() - t0
    assert result.image.shape[-2:] == (short, long_edge)
    return {"seconds": round(seconds, 1), "steps_run": len(result.history),
            "plan": [f"{s.width}x{s.height}:{s.steps}x{len(s.tiles)}" for s in plan]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--long-edge", type=int, default=2048)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--budget-mb", type=int, default=3000, help="multi-scale memory budget")
    ap.add_argument("--preset", default="book")
    ap.add_argument("--skip-single", action="store_true", help="when single-scale cannot fit in RAM")
    ap.add_argument("--case", choices=("single", "multi"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.case:
        budget = 0 if args.case == "single" else args.budget_mb
        out = run_case(args.long_edge, args.steps, budget, args.preset)
        out["peak_rss_mb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
        print(json.dumps(out))
        return
    for case in ("multi",) if args.skip_single else ("multi", "single"):
        proc = subprocess.run(
            [sys.executable, "-m", "tests.benchmarks.bench_multiscale", "--case", case, "--long-edge",
             str(args.long_edge), "--steps", str(args.steps), "--budget-mb", str(args.budget_mb),
             "--preset", args.preset],
            capture_output=True, text=True,
        )
        if proc.returncode != 0:
            print(f"{case}: failed (exit {proc.returncode}): {proc.stderr.strip().splitlines()[-1:]}")
            continue
        print(f"{case:<7} {proc.stdout.strip().splitlines()[-1]}", flush=True)


if __name__ == "__main__":
    main()
