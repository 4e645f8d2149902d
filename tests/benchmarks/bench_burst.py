"""A burst of files at once: does the daemon keep order, memory and pace? (issue 13)

    python -m tests.benchmarks.bench_burst [--files 2000] [--steps 1] [--size 16]

Starts one ``stylefold serve`` (random weights, CPU, ``--web off``) on a temporary hot
folder, writes ``--files`` distinct small photos outside it with shuffled mtimes,
renames them all into the inbox in another shuffled order (so names, mtimes and arrival
disagree), and waits until every original is in done/. It reports:

- total: from the first rename to the last original in done/;
- per job: the gap between consecutive "job start" log lines, first 200 against last
  200 (a daemon whose scan cost grows with the queue slows down as it drains);
- RSS of the daemon (``/proc/PID/status`` VmRSS) after the model load, and at the end;
- order: whether jobs started in the order the files arrived (the ctime each rename
  gave them, read right after it, ties by name), as the README promises;
- idle CPU: the daemon's CPU seconds over 10 s once the inbox is empty.

Not a pytest test: figures are reported, never asserted.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import random
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from PIL import Image


def _rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def _cpu_s(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _log_time(line: str) -> float:
    stamp = line[:23]
    return dt.datetime.strptime(stamp, "%Y-%m-%d %H:%M:%S,%f").timestamp()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--files", type=int, default=2000)
    parser.add_argument("--steps", type=int, default=1)
    parser.add_argument("--size", type=int, default=16)
    args = parser.parse_args(argv)

    tmp = Path(tempfile.mkdtemp(prefix="stylefold-burst-"))
    root = tmp / "hot"
    (root / "presets").mkdir(parents=True)
    (root / "inbox").mkdir()
    (root / "stylefold.toml").write_text(
        'settle_s = 0.5\npair_timeout_s = 5\npresets_dir = "presets"\ndefault_preset = "tiny"\nthreads = 1\n')
    (root / "presets" / "tiny.json").write_text(json.dumps({"steps": args.steps, "size": args.size}))
    staging = tmp / "staging"
    staging.mkdir()
    names = [f"b{i:04d}.png" for i in range(args.files)]
    base = time.time() - 10 * args.files
    order = names[:]
    random.Random(1).shuffle(order)  # mtime order differs from name order
    for rank, name in enumerate(order):
        path = staging / name
        Image.new("RGB", (24, 20), (rank % 256, rank // 256, 90)).save(path)  # distinct: no duplicate skips
        os.utime(path, (base + rank, base + rank))

    log = tmp / "serve.log"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("STYLEFOLD_", "NOTIFY_", "WATCHDOG_"))}
    env["PYTHONUNBUFFERED"] = "1"
    with log.open("wb") as out:
        proc = subprocess.Popen([sys.executable, "-m", "stylefold", "serve", "--root", str(root), "--weights",
                                 "random", "--device", "cpu", "--web", "off"],
                                stdout=out, stderr=subprocess.STDOUT, env=env, stdin=subprocess.DEVNULL)
    try:
        while "serving " not in log.read_text():
            if proc.poll() is not None:
                print(log.read_text())
                return 1
            time.sleep(0.1)
        rss_start = _rss_mib(proc.pid)
        shuffled = names[:]
        random.Random(2).shuffle(shuffled)  # arrival (rename) order: neither names nor mtimes
        t0 = time.time()
        arrived = {}
        for name in shuffled:
            os.rename(staging / name, root / "inbox" / name)
            arrived[name] = os.stat(root / "inbox" / name).st_ctime_ns  # settle_s 0.5: not claimed yet
        expected = sorted(names, key=lambda n: (arrived[n], n))
        done = root / "done"
        while len(list(done.iterdir())) < args.files:
            if proc.poll() is not None:
                print(log.read_text()[-3000:])
                return 1
            time.sleep(0.2)
        total = time.time() - t0
        rss_end = _rss_mib(proc.pid)
        cpu0 = _cpu_s(proc.pid)
        time.sleep(10)
        idle_cpu = (_cpu_s(proc.pid) - cpu0) / 10
        proc.send_signal(signal.SIGTERM)
        proc.wait(60)
    finally:
        if proc.poll() is None:
            proc.kill()
    starts = [(_log_time(line), m.group(1)) for line in log.read_text().splitlines()
              if (m := re.search(r"job start (\S+) \(", line))]
    started = [name for _, name in starts]
    gaps = [b[0] - a[0] for a, b in zip(starts, starts[1:], strict=False)]
    first, last = gaps[:200], gaps[-200:]
    in_order = started == expected
    misplaced = sum(1 for a, b in zip(started, expected, strict=False) if a != b)
    print(f"files: {args.files} ({args.steps} step(s) at {args.size} px), all in done/: "
          f"{len(list((root / 'done').iterdir()))}")
    print(f"total: {total:.1f} s, {total / args.files * 1000:.0f} ms a file")
    print(f"per job (start to start): first 200 median {statistics.median(first) * 1000:.0f} ms, "
          f"last 200 median {statistics.median(last) * 1000:.0f} ms")
    print(f"RSS: {rss_start:.0f} MiB after the model load, {rss_end:.0f} MiB at the end")
    print(f"order: {'kept (arrival, then name)' if in_order else f'{misplaced} of {len(started)} out of place'}; "
          f"first five started: {', '.join(started[:5])}; first five to arrive: {', '.join(expected[:5])}")
    print(f"idle CPU after the burst: {idle_cpu * 100:.1f} % of a core")
    print(f"(folder kept: {tmp})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
