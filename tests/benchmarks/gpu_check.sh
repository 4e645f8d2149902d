#!/usr/bin/env bash
# The one prepared GPU check (issue: systemd service, one worker per GPU). Run it on a
# lent GPU machine from the repository root; everything it prints is for the issue note.
#   bash tests/benchmarks/gpu_check.sh [OUTDIR]
# Needs torch with CUDA (pip install -e . on the GPU machine). Random weights: nothing
# is downloaded. Takes about 3 minutes on one H100/H200-class GPU.
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

echo "== bench on cuda"
stylefold bench --device cuda --sizes 512,1024 --steps 10 | tee "$out/bench.txt"
echo "== multi-scale 2048 long edge on cuda"
python -c "
import time, torch
from pathlib import Path
from stylefold.engine import build_extractor
from stylefold.pipeline import Stylist, Limits
from stylefold.presets import PresetLibrary
lib = PresetLibrary.default()
st = Stylist(build_extractor('random', 'cuda'), Limits(memory_budget_mb=2000))
p = lib.from_data({'extends': 'gatys', 'size': 1536, 'steps': 100}, 'gpu-check')
import numpy as np; from PIL import Image
Image.fromarray((np.random.default_rng(1).random((1536, 2048, 3)) * 255).astype('uint8')).save('/tmp/big.jpg')
torch.cuda.reset_peak_memory_stats(); t = time.perf_counter()
r = st.render(Path('/tmp/big.jpg'), p, [(lib.resolve_style('mosaic.png'), 1.0)])
print('multi-scale 2048x1536 gatys:', round(time.perf_counter() - t, 1), 's,', len(r.rows), 'steps, peak',
      round(torch.cuda.max_memory_allocated() / 2**30, 2), 'GiB')
" | tee "$out/multiscale.txt"
