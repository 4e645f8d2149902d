"""Tune ``early_stop`` on measured loss trajectories (issue 11, item 6).

Runs each photographer preset once, flat, for all its steps, with early stopping off,
and records its total loss per step. Where a rule (tolerance, patience) would stop
depends on that trajectory alone (the steps before the stop are the same run), so
every rule of the grid is scored on the one recording: the step it stops at, the steps
saved, and its loss against the full run's final loss. Step counts and losses are
deterministic, so a loaded machine changes the seconds, not the choice.

    python tests/benchmarks/tune_early_stop.py --size 128 --json tune.json
    python tests/benchmarks/tune_early_stop.py --size 256 --presets gatys,impasto --weights imagenet

The L-BFGS "image no longer changes" stop is not simulated (it needs the image); it
can only stop a run sooner, at a loss no different from the plateau's.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

PHOTOGRAPHER = "gatys,impasto,ink-wash,pointillism,stained-glass"
TOLERANCES = (1e-4, 3e-4, 1e-3, 2e-3, 5e-3, 1e-2)
PATIENCES = (10, 20, 30, 50)
WITHIN = 0.02  # the bar: the final loss within 2 % of the full run's


def stop_step(totals: list[float], tolerance: float, patience: int) -> int:
    """The step (1-based) the engine's rule stops at on ``totals``, or len(totals)."""
    from stylefold.engine.stylize import EarlyStop, converged, push_total

    rule = EarlyStop(tolerance, patience)
    window: list[float] = []
    for step, total in enumerate(totals[:-1], 1):
        window = push_total(window, total, patience)
        if converged(window, rule) is not None:
            return step
    return len(totals)


def record(preset_name: str, size: int, weights: str, photo: Path) -> tuple[list[float], float]:
    from stylefold.engine.features import build_extractor
    from stylefold.job.run import Done, Resident, run_job
    from stylefold.job.spec import Caps, JobSpec
    from stylefold.presets import PresetLibrary

    library = PresetLibrary.default()
    base = library.load(preset_name).effective()
    preset = library.validate({**base, "size": size, "early_stop": False, "preview": False, "snapshot_every": 0},
                              preset_name)
    styles = [(library.resolve_style(ref.path), ref.weight) for ref in preset.style_refs()]
    spec = JobSpec.for_files(uuid.uuid4().hex, photo, preset, preset_name, styles, Caps())
    global _resident
    if _resident is None:
        _resident = Resident(build_extractor(weights, "cpu"))
    t = time.perf_counter()
    outcome = run_job(spec, _resident)
    seconds = time.perf_counter() - t
    if not isinstance(outcome, Done):
        raise RuntimeError(f"{preset_name} at {size}: {outcome}")
    return [float(r["total_loss"]) for r in outcome.rendered.rows], seconds


_resident: Any = None


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--presets", default=PHOTOGRAPHER)
    ap.add_argument("--size", type=int, default=128)
    ap.add_argument("--weights", default="random")
    ap.add_argument("--photo", type=Path, default=None, help="default: a photo-like image made here")
    ap.add_argument("--json", type=Path, default=None, help="write trajectories and scores here")
    args = ap.parse_args()

    from stylefold.engine.runtime import tune_cpu_allocator
    from tests.benchmarks.bench_time_to_result import make_photo

    tune_cpu_allocator()
    folder = Path(tempfile.mkdtemp(prefix="tune-"))
    photo = args.photo or make_photo(folder / "photo.jpg", 1024)
    out: dict[str, Any] = {"size": args.size, "weights": args.weights, "presets": {}}
    for name in [n for n in args.presets.split(",") if n]:
        try:
            totals, seconds = record(name, args.size, args.weights, photo)
        except RuntimeError as exc:  # a preset that fails here is reported, not scored
            print(f"{name}: not scored, {exc}")
            out.setdefault("failed", {})[name] = str(exc)
            continue
        final = totals[-1]
        scores = []
        for tol in TOLERANCES:
            for pat in PATIENCES:
                step = stop_step(totals, tol, pat)
                scores.append({"tolerance": tol, "patience": pat, "stop_step": step,
                               "saved_steps": len(totals) - step, "loss_ratio": totals[step - 1] / final})
        out["presets"][name] = {"steps": len(totals), "seconds": seconds, "final_total": final, "totals": totals,
                                "scores": scores}
        print(f"{name}: {len(totals)} steps in {seconds:.1f} s, final total {final:.6g}")
        if args.json:  # after every preset: a long run interrupted keeps what it measured
            args.json.write_text(json.dumps(out, indent=2))
        for s in scores:
            ok = "ok" if s["loss_ratio"] <= 1 + WITHIN else "--"
            print(f"  tol {s['tolerance']:<7g} patience {s['patience']:>3}: stops at {s['stop_step']:>4} "
                  f"(saves {s['saved_steps']:>4}) loss x{s['loss_ratio']:.4f} {ok}")
    # The rule saving the most steps, summed over presets, with every preset within 2 %.
    rules = {(s["tolerance"], s["patience"]) for p in out["presets"].values() for s in p["scores"]}
    best = None
    for rule in sorted(rules):
        picked = [next(s for s in p["scores"] if (s["tolerance"], s["patience"]) == rule)
                  for p in out["presets"].values()]
        if all(s["loss_ratio"] <= 1 + WITHIN for s in picked):
            saved = sum(s["saved_steps"] for s in picked)
            if best is None or saved > best[1]:
                best = (rule, saved)
    out["best"] = {"tolerance": best[0][0], "patience": best[0][1], "saved_steps": best[1]} if best else None
    print(f"best rule within {100 * WITHIN:.0f} % on every preset: {out['best']}")
    if args.json:
        args.json.write_text(json.dumps(out, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
