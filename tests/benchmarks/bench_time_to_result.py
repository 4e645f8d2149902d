"""Time to a result (issue 11): the commands behind the figures of the issue's note.

    # seconds to the preview and to the finished picture, every built-in preset at its
    # own size and at 1024, against the same preset run flat (full size, all steps):
    stylefold bench --time-to-result --weights random
    # the 24-megapixel preview through gatys (no flat run):
    stylefold bench --time-to-result --presets gatys --photo-short-side 4000 --no-flat
    # this script: the same, one preset and size at a time, e.g. on a quiet machine
    python tests/benchmarks/bench_time_to_result.py --presets gatys --sizes 256,default

Not part of the test run. ``make_photo`` is re-exported for the other benchmarks.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "daemon"))

from stylefold.job.time_to_result import make_photo

__all__ = ["make_photo"]


def main() -> int:
    from stylefold.cli import main as cli

    return int(cli(["bench", "--time-to-result", *sys.argv[1:]]))


if __name__ == "__main__":
    raise SystemExit(main())
