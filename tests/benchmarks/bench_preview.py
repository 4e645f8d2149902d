"""Seconds from a job's start to its preview (issue 11: a 24-megapixel photo through
``gatys``, goal <= 15 s on a 2-core CPU), without waiting for the full result.

    python -m tests.benchmarks.bench_preview [--short-side 4000] [--preset gatys] [--weights random]

The photo is ``make_photo``'s landscape (4000 x 6000 px = 24 MP by default), saved as a
JPEG. One warm-up job at the preview's size first (kernel selection at a new shape is a
one-off); then the measured job, stopped once its preview is out. Also printed: how
long decoding and preparing the photo take, the part a bigger photo makes longer.
Not a pytest test: speed is reported, never asserted.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "daemon"))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--short-side", type=int, default=4000)
    ap.add_argument("--preset", default="gatys")
    ap.add_argument("--weights", default="random")
    args = ap.parse_args()

    from stylefold.engine.features import build_extractor
    from stylefold.engine.runtime import tune_cpu_allocator
    from stylefold.job.prepare import prepare
    from stylefold.job.run import JobCallbacks, PreviewImage, Resident, run_job
    from stylefold.job.spec import Caps, JobSpec
    from stylefold.job.time_to_result import make_photo
    from stylefold.presets import Preset, PresetLibrary

    tune_cpu_allocator()
    library = PresetLibrary.default()
    preset = library.load(args.preset)
    if not preset.preview:
        print(f"{args.preset} has no preview")
        return 2
    styles = [(library.resolve_style(ref.path), ref.weight) for ref in preset.style_refs()]
    photo = make_photo(Path(tempfile.mkdtemp(prefix="stylefold-preview-")) / "photo.jpg", args.short_side)
    resident = Resident(build_extractor(args.weights, "cpu"))

    def spec(p: Preset) -> JobSpec:
        return JobSpec.for_files(uuid.uuid4().hex, photo, p, args.preset, styles, Caps())

    t = time.perf_counter()
    prepared = prepare(spec(preset))
    w, h = prepared.loaded.source_size
    print(f"photo {w}x{h} ({w * h / 1e6:.1f} MP): decoded and prepared in {time.perf_counter() - t:.2f} s")
    warm = preset.model_copy(update={"size": preset.preview.size, "steps": 2, "preview": False, "early_stop": False})
    run_job(spec(warm), resident)

    seen: list[PreviewImage] = []

    t0 = time.perf_counter()
    stamps: list[float] = []

    def on_preview(image: PreviewImage) -> None:
        stamps.append(time.perf_counter() - t0)
        seen.append(image)

    # Stopped at the full render's first step once the preview is out.
    run_job(spec(preset), resident, JobCallbacks(on_preview=on_preview, should_stop=lambda: bool(seen)))
    seconds = stamps[0] if stamps else 0.0
    if not seen:
        print("no preview was made")
        return 1
    p = seen[0]
    print(f"{args.preset} at {preset.size}: preview {p.image.size[0]}x{p.image.size[1]} after {p.steps} steps, "
          f"{seconds:.2f} s from the job's start (its optimisation {p.seconds:.2f} s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
