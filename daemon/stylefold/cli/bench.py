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
    bench.add_argument("--sizes", default=None,
                       help="comma-separated short sides (default 128,512; with --time-to-result: default,1024, "
                            "where default is each preset's own size)")
    bench.add_argument("--precisions", default=None,
                       help="comma-separated: fp32,bf16,fp16 (default: what the device supports)")
    bench.add_argument("--presets", default=None,
                       help="comma-separated built-in presets (default book,gatys; with --time-to-result: all)")
    bench.add_argument("--steps", type=int, default=5, help="timed steps per case (default 5, after 2 warm-up)")
    bench.add_argument("--json", action="store_true", help="print the results as JSON on stdout")
    bench.add_argument("--time-to-result", action="store_true",
                       help="seconds to the preview and to the finished picture per preset, against the same "
                            "preset run flat (full size, all steps)")
    bench.add_argument("--photo-short-side", type=int, default=2000,
                       help="--time-to-result: short side of the 3:2 test photo it makes (default 2000; "
                            "4000 is a 24-megapixel photo)")
    bench.add_argument("--no-flat", action="store_true", help="--time-to-result: skip the flat comparison run")
    bench.set_defaults(func=cmd_bench)


def cmd_bench(args: argparse.Namespace) -> int:
    if args.time_to_result:
        from ..job.time_to_result import run_time_to_result

        return run_time_to_result(args)
    from ..job.bench import run_bench

    return run_bench(args)
