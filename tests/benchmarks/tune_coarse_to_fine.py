"""Tune ``coarse_to_fine`` on the finished picture's loss (issue 11: a 1024-px ``gatys``
result at least 3x sooner than the flat run, at an equal or lower final loss).

One process: the preset run flat once (full size, one piece, all its steps, no early
stop), then each variant of ``coarse_to_fine`` as a job would run it (the default
memory budget, so a large scale is tiled). Each finished picture is scored the way
``bench --time-to-result`` scores it: the preset's objective in fp32 at full size.

    python tests/benchmarks/tune_coarse_to_fine.py --size 1024 --variants 256/30,256/60,256/60/no-stop
    python tests/benchmarks/tune_coarse_to_fine.py --size 512 --variants 256/25 --json c2f.json

A variant is ``SIZE/STEPS`` (the ``coarse_to_fine`` object), with ``/no-stop`` for
``early_stop: false``. A line is printed, and the JSON written, after each run.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "daemon"))


def parse_variant(text: str) -> dict[str, Any]:
    """``256/60`` -> {"coarse_to_fine": {"size": 256, "steps": 60}}; ``/no-stop`` turns early stop off."""
    parts = text.split("/")
    if len(parts) not in (2, 3) or (len(parts) == 3 and parts[2] != "no-stop"):
        raise argparse.ArgumentTypeError(f"{text!r}: a variant is SIZE/STEPS or SIZE/STEPS/no-stop")
    update: dict[str, Any] = {"coarse_to_fine": {"size": int(parts[0]), "steps": int(parts[1])}}
    if len(parts) == 3:
        update["early_stop"] = False
    return update


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", default="gatys")
    ap.add_argument("--size", type=int, default=1024)
    ap.add_argument("--variants", default="256/30,256/60")
    ap.add_argument("--weights", default="random")
    ap.add_argument("--photo-short-side", type=int, default=2000)
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()
    variants = [(v, parse_variant(v)) for v in args.variants.split(",") if v]

    from stylefold.engine.features import build_extractor
    from stylefold.engine.runtime import resolve_device, tune_cpu_allocator
    from stylefold.job.run import Resident
    from stylefold.job.spec import Caps
    from stylefold.job.time_to_result import FLAT_BUDGET_MB, _render, make_photo, picture_loss
    from stylefold.presets import PresetLibrary

    device = resolve_device("auto")
    if device.type == "cpu":
        tune_cpu_allocator()
    resident = Resident(build_extractor(args.weights, device))
    photo = make_photo(Path(tempfile.mkdtemp(prefix="tune-c2f-")) / "photo.jpg", args.photo_short_side)
    library = PresetLibrary.default()
    base = {**library.load(args.preset).effective(), "size": args.size, "preview": False}

    def preset(update: dict[str, Any]) -> Any:
        return library.validate({**base, **update}, args.preset)

    # Warm-up at each scale's size, so no run pays for kernel selection alone.
    side = args.size
    while side >= 128:
        _render(resident, photo, preset({"size": side, "steps": 2, "early_stop": False, "coarse_to_fine": False}),
                args.preset, Caps(max_size=16384, memory_budget_mb=FLAT_BUDGET_MB))
        side //= 2
    out: dict[str, Any] = {"preset": args.preset, "size": args.size, "weights": args.weights, "device": str(device),
                           "runs": []}

    def record(name: str, update: dict[str, Any], caps: Caps) -> dict[str, Any]:
        done, seconds, _, spec = _render(resident, photo, preset(update), args.preset, caps)
        row = {"variant": name, "seconds": seconds, "steps_run": len(done.rendered.rows),
               "stopped_early_at": done.rendered.report.get("stopped_early_at"),
               "picture_total": picture_loss(resident, spec, done)}
        out["runs"].append(row)
        if args.json:
            args.json.write_text(json.dumps(out, indent=2))
        return row

    flat = record("flat", {"early_stop": False, "coarse_to_fine": False, "snapshot_every": 0},
                  Caps(max_size=16384, memory_budget_mb=FLAT_BUDGET_MB))
    print(f"flat: {flat['seconds']:.1f} s, {flat['steps_run']} steps, picture loss {flat['picture_total']:.5g}",
          flush=True)
    for name, update in variants:
        row = record(name, update, Caps())
        sooner, loss = flat["seconds"] / row["seconds"], row["picture_total"] / flat["picture_total"]
        print(f"{name}: {row['seconds']:.1f} s, {row['steps_run']} steps (stopped early at "
              f"{row['stopped_early_at']}), picture loss {row['picture_total']:.5g}: {sooner:.2f}x sooner, "
              f"loss x{loss:.3f}", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
