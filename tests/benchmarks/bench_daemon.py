"""The daemon's own costs around the optimisation: pickup latency and per-job overhead.

    python -m tests.benchmarks.bench_daemon [--jobs 5] [--steps 3] [--size 32] [--settle 0.1]

Starts one ``stylefold serve`` (random weights, CPU) on a temporary hot folder and
drops small photos into its inbox one at a time, each after the previous one is done,
so no job waits behind another. Per job:

- pickup: from the photo's final rename into the inbox (or, for the ``written`` jobs,
  from the close of a file written in place) to the daemon's "job start" log line
  (log timestamps have millisecond resolution, the same wall clock);
- job wall: the "done NAME -> RESULT in X s" line (0.1 s resolution) and, to the
  millisecond, "job start" to that line (this misses the hashing and journal write
  before "job start");
- engine: the report's ``seconds.engine`` (the optimisation loop alone); render total:
  its ``seconds.total`` (loading, resizing, optimising, the report);
- overhead = job wall - engine: everything the daemon does per job that is not the
  optimisation (hashing, journal, claim, loading, writing the result, logs, plot,
  moving the original);
- drop to done: from the rename to the original appearing in done/ (polled every 5 ms).

Not a pytest test: speed is reported, never asserted.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from tests.conftest import write_photo

STYLE = "brushstrokes"


def _log_time(line: str) -> float:
    stamp = line[:23]  # "2026-11-28 16:31:30,284"
    return dt.datetime.strptime(stamp, "%Y-%m-%d %H:%M:%S,%f").timestamp()


def _wait(check, timeout: float, what: str, proc: subprocess.Popen[bytes]):  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if proc.poll() is not None:
            raise SystemExit(f"the daemon exited ({proc.returncode}) before {what}")
        if time.monotonic() > deadline:
            raise SystemExit(f"timed out waiting for {what}")
        time.sleep(0.005)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=5, help="photos renamed into the inbox (default 5)")
    parser.add_argument("--written", type=int, default=3,
                        help="photos written in place in the inbox, closed, then left (default 3)")
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--size", type=int, default=32)
    parser.add_argument("--settle", type=float, default=0.1, help="settle_s (default 0.1)")
    parser.add_argument("--gap", type=float, default=0.0,
                        help="seconds to let pass after a job before the next drop (default 0: at once)")
    args = parser.parse_args(argv)

    with tempfile.TemporaryDirectory(prefix="bench-daemon-") as tmp:
        base = Path(tmp)
        root = base / "hot"
        (root / "presets").mkdir(parents=True)
        (root / "inbox").mkdir()
        (root / "stylefold.toml").write_text(
            f'settle_s = {args.settle}\npair_timeout_s = 1\ncheckpoint_every = 50\n'
            'presets_dir = "presets"\ndefault_preset = "tiny"\n'
        )
        (root / "presets" / "tiny.json").write_text(
            json.dumps({"steps": args.steps, "size": args.size, "init": "content"}))
        staging = base / "staging"
        staging.mkdir()
        log = base / "serve.log"
        env = {k: v for k, v in os.environ.items() if not k.startswith(("STYLEFOLD_", "NOTIFY_", "WATCHDOG_"))}
        env["PYTHONUNBUFFERED"] = "1"
        argv_serve = [sys.executable, "-m", "stylefold", "serve", "--root", str(root), "--weights", "random",
                      "--device", "cpu"]
        started = time.time()
        with log.open("wb") as out:
            proc = subprocess.Popen(argv_serve, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                                    env=env)
        rows: list[dict[str, float | str]] = []
        try:
            _wait(lambda: "serving " in log.read_text(), 120, "the daemon to serve", proc)
            print(f"daemon ready in {time.time() - started:.1f} s (torch import, VGG19 build, first scan)")
            plan = [("renamed", i) for i in range(args.jobs)] + [("written", i) for i in range(args.written)]
            for mode, i in plan:
                name = f"{mode}{i}.jpg"
                if rows and args.gap:
                    time.sleep(args.gap)  # a pause between arrivals, not synchronisation
                photo = write_photo(staging / name, seed=100 + len(rows))
                if mode == "renamed":
                    dropped = time.time()
                    os.rename(photo, root / "inbox" / name)
                else:
                    data = photo.read_bytes()
                    with (root / "inbox" / name).open("wb") as f:
                        f.write(data)
                    dropped = time.time()  # closed now
                _wait(lambda: (root / "done" / name).exists(), 120, f"{name} in done/", proc)
                in_done = time.time()
                _wait(lambda: f"done {name} -> " in log.read_text(), 30, f"the job end line of {name}", proc)
                text = log.read_text()
                start_line = next(line for line in text.splitlines() if f"job start {name} " in line)
                end_line = next(line for line in text.splitlines() if f"done {name} -> " in line)
                end_s = float(re.search(r"in ([0-9.]+) s$", end_line).group(1))  # type: ignore[union-attr]
                report = json.loads((root / "outbox" / "logs" / f"{Path(name).stem}-{STYLE}.json").read_text())
                engine, total = report["seconds"]["engine"], report["seconds"]["total"]
                start_ts, end_ts = _log_time(start_line), _log_time(end_line)
                rows.append({
                    "job": name, "pickup": start_ts - dropped, "wall": end_s, "wall_ms": end_ts - start_ts,
                    "engine": engine, "render": total, "overhead": end_s - engine,
                    "overhead_ms": (end_ts - start_ts) - engine, "to_done": in_done - dropped,
                })
        finally:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(30)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()

    print(f"settle_s {args.settle}, {args.steps} steps at {args.size} px, random weights, CPU, "
          f"{os.cpu_count()} cores, {args.gap} s between a job's end and the next drop")
    header = ("job", "pickup", "wall", "wall_ms", "engine", "render", "overhead", "overhead_ms", "to_done")
    print(" ".join(f"{h:>12}" for h in header))
    for row in rows:
        print(" ".join(f"{row[h]:>12}" if isinstance(row[h], str) else f"{row[h]:>12.3f}" for h in header))
    for mode in ("renamed", "written"):
        picked = [r for r in rows if str(r["job"]).startswith(mode)]
        if not picked:
            continue
        med = {h: statistics.median(float(r[h]) for r in picked) for h in header[1:]}
        print(f"median {mode:<8} " + ", ".join(f"{h} {v * 1000:.0f} ms" for h, v in med.items()))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
