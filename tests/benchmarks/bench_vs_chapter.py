"""Seconds per step: the `book` preset against the chapter's own loop, same images and
weights, each case in a fresh process (allocator state and warm caches stay separate).

    python -m tests.benchmarks.bench_vs_chapter [--size 512] [--steps 6]

Cases: the chapter's loop as written; the chapter's loop with stylefold's allocator
tuning (to show how much of the gain is the allocator and how much the algorithm);
stylefold fp32; stylefold fp32 with every conv direct (no Winograd, to show its share);
stylefold bf16. ``--cases`` runs some of them (bf16 is slow where it is emulated).
Per-step time is the median over the steps after the first (the first pays one-off
page faults and kernel selection). Not a pytest test: speed is reported, never asserted.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

CASES = ("chapter", "chapter+allocator", "stylefold-fp32", "stylefold-fp32-direct", "stylefold-bf16")


def _median_step(elapsed: list[float]) -> float:
    return statistics.median(b - a for a, b in zip(elapsed, elapsed[1:]))


def run_case(case: str, content: Path, style: Path, weights: Path, size: int, steps: int) -> float:
    if case.startswith("chapter"):
        if case.endswith("allocator"):
            from stylefold.engine.runtime import tune_cpu_allocator

            tune_cpu_allocator()
        from tests.chapter_reference import chapter_losses

        rows = chapter_losses(content, style, weights, steps=steps, size=size, init="content")
        return _median_step([r[4] for r in rows])
    import torch

    from stylefold.engine.features import build_extractor
    from stylefold.engine.runtime import tune_cpu_allocator
    from stylefold.engine.stylize import stylize
    from tests.chapter_reference import image_to_tensor
    from tests.conftest import book_params

    tune_cpu_allocator()  # as `stylefold run` / `serve` do on the CPU
    extractor = build_extractor(weights)
    extractor.conv_method = "direct" if case.endswith("direct") else "auto"
    params = book_params(steps=steps, init="content", precision="bf16" if case.endswith("bf16") else "fp32")
    result = stylize(extractor, image_to_tensor(content, size), [(image_to_tensor(style, size), 1.0)], params)
    assert torch.isfinite(result.image).all()
    return _median_step([h.elapsed_s for h in result.history])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", type=int, default=512)
    ap.add_argument("--steps", type=int, default=6)
    ap.add_argument("--cases", nargs="+", choices=CASES, default=list(CASES))
    ap.add_argument("--case", choices=CASES, help=argparse.SUPPRESS)
    ap.add_argument("--files", nargs=3, type=Path, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.case:
        print(json.dumps({"case": args.case, "s_per_step": run_case(args.case, *args.files, args.size, args.steps)}))
        return
    import numpy as np
    import torch
    import torchvision
    from PIL import Image

    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        rng = np.random.default_rng(0)
        # A 4:3 "photo" and a square "painting", larger than the working size.
        Image.fromarray((rng.random((768, 1024, 3)) * 255).astype("uint8")).save(folder / "content.jpg")
        Image.fromarray((rng.random((800, 800, 3)) * 255).astype("uint8")).save(folder / "style.jpg")
        torch.manual_seed(0)
        features = torchvision.models.vgg19().features.state_dict()
        torch.save({f"features.{k}": v for k, v in features.items()}, folder / "vgg19.pth")
        files = [str(folder / n) for n in ("content.jpg", "style.jpg", "vgg19.pth")]
        results = {}
        cases = ["chapter", *[c for c in args.cases if c != "chapter"]]  # the yardstick always runs
        for case in cases:
            out = subprocess.run(
                [sys.executable, "-m", "tests.benchmarks.bench_vs_chapter", "--case", case, "--files", *files,
                 "--size", str(args.size), "--steps", str(args.steps)],
                check=True, capture_output=True, text=True,
            )
            results[case] = json.loads(out.stdout.strip().splitlines()[-1])["s_per_step"]
            print(f"{case:<20} {results[case]:8.4f} s/step", flush=True)
    base = results["chapter"]
    for case in cases[1:]:
        print(f"speed-up {case:<20} {base / results[case]:5.2f}x vs the chapter's loop")


if __name__ == "__main__":
    main()
