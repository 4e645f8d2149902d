"""Several machines on one box: what the broker costs a job, and what a second worker
buys (issue 10).

    python -m tests.benchmarks.bench_cluster [--jobs 12] [--steps 50] [--size 64]

Uses the cluster tests' rig (a real ``redis-server`` on loopback, ``stylefold worker``
processes with random weights on the CPU, ``threads = 1`` each) and reports:

- overhead: the same tiny jobs (``--tiny-jobs`` of 1 step at 32 px, one at a time)
  through ``serve --once`` locally and through ``serve --broker --once`` with one worker
  and one slot; per-job time = (last "done" - first "job start") / jobs, from the log
  lines, so process start-up is left out. The difference is what the broker adds;
- throughput: ``--jobs`` jobs of ``--steps`` steps at ``--size`` px with 1 worker
  (2 slots) and with 2 workers (3 slots), in jobs per minute;
- broker traffic of one job: the commands and bytes Redis counted (INFO stats), which
  the paper estimate in the issue note scales to 10 boxes.

Not a pytest test: figures are printed, never asserted.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from tests.conftest import write_photo
from tests.test_cluster_rig import Cluster

STAMP = re.compile(r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}) ")


def _times(log: str, pattern: str) -> list[float]:
    found = []
    for line in log.splitlines():
        m = STAMP.match(line)
        if m and re.search(pattern, line):
            found.append(dt.datetime.strptime(m.group(1), "%Y-%m-%d %H:%M:%S,%f").timestamp())
    return found


def _fill(cluster: Cluster, jobs: int) -> None:
    staging = cluster.tmp_path / "staging"
    staging.mkdir(exist_ok=True)
    for i in range(jobs):
        path = write_photo(staging / f"j{i:03d}.jpg", width=80, height=64, seed=i)
        os.rename(path, cluster.root / "inbox" / path.name)


def _per_job(log: str, jobs: int) -> float:
    starts, dones = _times(log, r"job start "), _times(log, r"service: done ")
    assert len(dones) == jobs, log[-3000:]
    return (max(dones) - min(starts)) / jobs


def _serve_once(cluster: Cluster, *extra: str) -> str:
    argv = [sys.executable, "-m", "stylefold", "serve", "--root", str(cluster.root), "--weights", "random",
            "--device", "cpu", "--web", "off", "--once", *extra]
    env = {k: v for k, v in os.environ.items() if not k.startswith("STYLEFOLD_")}
    env.update(STYLEFOLD_CONFIG=str(cluster.config), PYTHONUNBUFFERED="1")
    done = subprocess.run(argv, capture_output=True, text=True, env=env, timeout=1800, check=False)
    return done.stdout + done.stderr


def overhead(tiny_jobs: int) -> tuple[float, float]:
    with tempfile.TemporaryDirectory() as tmp, Cluster(Path(tmp), steps=1, slots=1) as cluster:
        _fill(cluster, tiny_jobs)
        local = _per_job(_serve_once(cluster), tiny_jobs)
    with tempfile.TemporaryDirectory() as tmp, Cluster(Path(tmp), steps=1, slots=1) as cluster:
        cluster.workers("w1")
        _fill(cluster, tiny_jobs)
        remote = _per_job(_serve_once(cluster, "--broker", cluster.redis.url), tiny_jobs)
    return local, remote


def throughput(workers: int, jobs: int, steps: int, size: int) -> tuple[float, dict[str, Any]]:
    with tempfile.TemporaryDirectory() as tmp, \
            Cluster(Path(tmp), steps=steps, size=size, slots=workers + 1, checkpoint_every=50) as cluster:
        cluster.workers(*[f"w{i + 1}" for i in range(workers)])
        client = cluster.redis.client()
        client.config_resetstat()
        _fill(cluster, jobs)
        t0 = time.monotonic()
        log = _serve_once(cluster, "--broker", cluster.redis.url)
        wall = time.monotonic() - t0
        stats = client.info("stats")
        per_job = (max(_times(log, r"service: done ")) - min(_times(log, r"job start "))) / jobs
        traffic = {"commands_per_job": stats["total_commands_processed"] / jobs,
                   "in_kib_per_job": stats["total_net_input_bytes"] / jobs / 1024,
                   "out_kib_per_job": stats["total_net_output_bytes"] / jobs / 1024,
                   "wall_s": wall}
        return 60.0 / per_job, traffic


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tiny-jobs", type=int, default=20)
    parser.add_argument("--jobs", type=int, default=12)
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--size", type=int, default=64)
    args = parser.parse_args()
    local, remote = overhead(args.tiny_jobs)
    print(f"overhead: local {local * 1000:.0f} ms/job, broker {remote * 1000:.0f} ms/job "
          f"-> +{(remote - local) * 1000:.0f} ms per job ({args.tiny_jobs} jobs of 1 step at 32 px, one at a time)")
    for workers in (1, 2):
        rate, traffic = throughput(workers, args.jobs, args.steps, args.size)
        print(f"throughput: {workers} worker(s): {rate:.1f} jobs/min ({args.jobs} jobs, {args.steps} steps at "
              f"{args.size} px); broker per job: {traffic['commands_per_job']:.0f} commands, "
              f"{traffic['in_kib_per_job']:.0f} KiB in, {traffic['out_kib_per_job']:.0f} KiB out")


if __name__ == "__main__":
    main()
