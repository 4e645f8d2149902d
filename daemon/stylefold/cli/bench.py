"""``stylefold bench``: the parser; the measuring is ``job.bench`` (it loads torch)."""

from __future__ import annotations

import argparse
from typing import Any

__all__ = ["add_parser"]


def add_parser(sub: Any) -> None:
    bench = sub.add_parser("bench", help="seconds per optimisation step on this machine, by size and precision")
    bench.add_argument("--device", default=None, help="auto, cpu, cuda, cuda:N, mps (default auto)")
    bench.add_argument("--weights", default="random",
                       help="weights do not change the speed; default random (no download)")
    bench.add_argument("--sizes", default="128,512", help="comma-separated short sides (default 128,512)")
    bench.add_argument("--precisions", default=None,
                       help="comma-separated: fp32,bf16,fp16 (default: what the device supports)")
    bench.add_argument("--presets", default="book,gatys", help="comma-separated built-in presets")
    bench.add_argument("--steps", type=int, default=5, help="timed steps per case (default 5, after 2 warm-up)")
    bench.add_argument("--json", action="store_true", help="print the results as JSON on stdout")
    bench.set_defaults(func=cmd_bench)



def cmd_bench(args: argparse.Namespace) -> int:
    from ..job.bench import run_bench

    return run_bench(args)
