#!/usr/bin/env bash
# The one prepared GPU check (issue: systemd service, one worker per GPU). Run it on a
# lent GPU machine from the repository root; everything it prints is for the issue note.
#   bash tests/benchmarks/gpu_check.sh [OUTDIR]
# Needs torch with CUDA (pip install -e . on the GPU machine). Random weights: nothing
# is downloaded. Takes about 6 minutes on one H100/H200-class GPU.
set -euo pipefail
out=${1:-${OUT:-/tmp/stylefold-gpu}}
mkdir -p "$out"
export PYTHONUNBUFFERED=1
python -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda, torch.cuda.get_device_name(0))"

root=$(mktemp -d)/hf
stylefold init "$root" >/dev/null
printf 'weights = "random"\ndevice = "cuda"\nsettle_s = 0.2\ndefault_preset = "gatys"\n' > "$root/stylefold.toml"
echo "== doctor"
stylefold doctor --root "$root" | tee "$out/doctor.txt" || true

echo "== serve --once on cuda: 3 photos through gatys (512 px, 300 L-BFGS steps)"
python - "$root/inbox" <<'PY'
import sys, numpy as np
from PIL import Image
rng = np.random.default_rng(0)
for i in range(3):
    Image.fromarray((rng.random((768, 1024, 3)) * 255).astype("uint8")).save(f"{sys.argv[1]}/photo{i}.jpg")
PY
stylefold serve --root "$root" --once 2> "$out/serve.log" || true
grep -E "job (start|end)|failed|wrote" "$out/serve.log" | tee "$out/serve-summary.txt"
python - "$root" <<'PY' | tee "$out/reports.txt"
import json, pathlib, sys
for p in sorted(pathlib.Path(sys.argv[1], "outbox", "logs").glob("*.json")):
    r = json.loads(p.read_text())
    print(p.name, r["device"], r["precision"], r["seconds"], r["final_losses"]["total_loss"])
PY

echo "== bench on cuda: s/step, fp32 and bf16, 512 and 1024 (issue 11: gatys at 512 and 1024 in bf16)"
stylefold bench --device cuda --sizes 512,1024 --precisions fp32,bf16 --steps 10 | tee "$out/bench.txt"
echo "== time to result on cuda (issue 11): every built-in preset at its size and at 1024, against flat"
stylefold bench --time-to-result --device cuda --sizes default,1024 | tee "$out/time-to-result.txt"
echo "== time to a finished 1-megapixel gatys result on cuda (issue 11: goal <= 3 s on an H200), peak memory"
python -c "
import time, uuid, torch
from pathlib import Path
from stylefold.engine.features import build_extractor
from stylefold.job.run import Done, Resident, run_job
from stylefold.job.spec import Caps, JobSpec
from stylefold.job.time_to_result import make_photo
from stylefold.presets import PresetLibrary
lib = PresetLibrary.default()
resident = Resident(build_extractor('random', 'cuda'))
photo = make_photo(Path('/tmp/onemp.jpg'), 816)  # 816 x 1224 = 1.0 MP
styles = [(lib.resolve_style(r.path), r.weight) for r in lib.load('gatys').style_refs()]
for attempt in ('warm-up', 'measured'):
    p = lib.from_data({'extends': 'gatys', 'size': 816}, 'gpu-1mp')
    torch.cuda.synchronize(); torch.cuda.reset_peak_memory_stats(); t = time.perf_counter()
    r = run_job(JobSpec.for_files(uuid.uuid4().hex, photo, p, 'gpu-1mp', styles, Caps()), resident)
    torch.cuda.synchronize()
    assert isinstance(r, Done), r
    print(attempt, '1 MP gatys (816x1224):', round(time.perf_counter() - t, 2), 's,', len(r.rendered.rows), 'steps,',
          'stopped early at', r.rendered.report.get('stopped_early_at'), ', peak',
          round(torch.cuda.max_memory_allocated() / 2**30, 2), 'GiB')
" | tee "$out/one-megapixel.txt"
echo "== multi-scale 2048 long edge on cuda"
python -c "
import time, uuid, torch
from pathlib import Path
import numpy as np; from PIL import Image
from stylefold.engine.features import build_extractor
from stylefold.job.run import Done, Resident, run_job
from stylefold.job.spec import Caps, JobSpec
from stylefold.presets import PresetLibrary
lib = PresetLibrary.default()
resident = Resident(build_extractor('random', 'cuda'))
p = lib.from_data({'extends': 'gatys', 'size': 1536, 'steps': 100}, 'gpu-check')
Image.fromarray((np.random.default_rng(1).random((1536, 2048, 3)) * 255).astype('uint8')).save('/tmp/big.jpg')
spec = JobSpec.for_files(uuid.uuid4().hex, Path('/tmp/big.jpg'), p, 'gpu-check',
                         [(lib.resolve_style('mosaic.png'), 1.0)], Caps(memory_budget_mb=2000))
torch.cuda.reset_peak_memory_stats(); t = time.perf_counter()
r = run_job(spec, resident)
assert isinstance(r, Done), r
print('multi-scale 2048x1536 gatys:', round(time.perf_counter() - t, 1), 's,', len(r.rendered.rows), 'steps, peak',
      round(torch.cuda.max_memory_allocated() / 2**30, 2), 'GiB')
" | tee "$out/multiscale.txt"
echo "== out of memory is a job failure, not a crash (a 16384-px job with the budget check off)"
python -c "
import uuid
from pathlib import Path
import numpy as np; from PIL import Image
from stylefold.engine.features import build_extractor
from stylefold.job.run import Failed, Resident, run_job
from stylefold.job.spec import Caps, JobSpec
from stylefold.presets import PresetLibrary
lib = PresetLibrary.default()
resident = Resident(build_extractor('random', 'cuda:0'))
Image.fromarray((np.random.default_rng(2).random((12000, 16000, 3)) * 255).astype('uint8')).save('/tmp/huge.png')
p = lib.from_data({'extends': 'gatys', 'size': 12000, 'steps': 2, 'precision': 'bf16'}, 'gpu-oom')
caps = Caps(max_size=16384, max_input_pixels=200_000_000, memory_budget_mb=10_000_000)
r = run_job(JobSpec.for_files(uuid.uuid4().hex, Path('/tmp/huge.png'), p, 'gpu-oom',
                              [(lib.resolve_style('mosaic.png'), 1.0)], caps), resident)
print('huge job:', type(r).__name__, getattr(r, 'kind', ''), getattr(r, 'message', ''))
" | tee "$out/oom.txt"
