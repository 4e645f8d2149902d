"""Faults of several machines, with real processes on loopback (SPEC §8, issue 10):
a worker or the daemon killed with -9, a job that kills three workers, a job longer
than the broker's visibility timeout, a broker restarted with and without its data,
a worker whose device fails. Every test ends with each file once in done/ or failed/
and each result once in outbox/."""

from __future__ import annotations

import csv
import json
import os
import re
import signal
from pathlib import Path

from .test_cluster_rig import Cluster, needs_redis

pytestmark = needs_redis

JOB_S = 120.0


def loss_steps(cluster: Cluster, base: str) -> list[int]:
    with (cluster.root / "outbox" / "logs" / f"{base}.losses.csv").open(newline="") as f:
        return [int(row["step"]) for row in csv.DictReader(f)]


def kill_9(cluster: Cluster, name: str) -> None:
    daemon = cluster.by_name(name)
    os.kill(daemon.proc.pid, signal.SIGKILL)
    daemon.proc.wait(30)


def test_kill_9_or_sigterm_of_a_worker_mid_job_finishes_it_on_another_from_its_checkpoint(tmp_path: Path) -> None:
    with Cluster(tmp_path, steps=250, checkpoint_every=10) as cluster:
        cluster.workers("w1", "w2", "w3")
        serve = cluster.serve()
        original = cluster.drop("a.jpg")
        worker, _ = cluster.wait(cluster.progress_worker, JOB_S, "the job's progress past a checkpoint")
        kill_9(cluster, worker)
        cluster.wait(lambda: cluster.finished("a.jpg"), JOB_S, "a.jpg in done/")
        assert cluster.outbox() == ["a-brushstrokes.jpg"]
        assert loss_steps(cluster, "a-brushstrokes") == list(range(1, 251))  # 1..N, each once
        assert (cluster.root / "done" / "a.jpg").read_bytes() == original
        assert re.search(rf"worker {worker} lost a\.jpg: it stopped renewing its lease \(1 of 3\)", serve.text())
        resumed = re.findall(r"a\.jpg: resuming at step (\d+)", "".join(p.text() for p in cluster.processes[:3]))
        assert len(resumed) == 1 and int(resumed[0]) >= 10
        report = json.loads((cluster.root / "outbox" / "logs" / "a-brushstrokes.json").read_text())
        assert report["status"] == "done" and report["steps_run"] == 250

        # SIGTERM (systemctl stop): the job checkpoints at its next step and goes elsewhere.
        cluster.drop("b.jpg", seed=1)
        worker, _ = cluster.wait(cluster.progress_worker, JOB_S, "b.jpg's progress past a checkpoint")
        leaving = cluster.by_name(worker)
        leaving.proc.send_signal(signal.SIGTERM)
        assert leaving.wait_exit(60) == 0
        stopped = re.search(r"stopped b\.jpg at step (\d+) \(shutdown\)", leaving.text())
        assert stopped, leaving.text()
        cluster.wait(lambda: cluster.finished("a.jpg", "b.jpg"), JOB_S, "b.jpg in done/")
        assert f"b.jpg: resuming at step {stopped.group(1)}" in "".join(p.text() for p in cluster.processes[:3])
        assert loss_steps(cluster, "b-brushstrokes") == list(range(1, 251))
        assert cluster.outbox() == ["a-brushstrokes.jpg", "b-brushstrokes.jpg"] and cluster.failed() == []


def test_sigterm_then_kill_9_of_the_daemon_resume_and_publish_each_result_once(tmp_path: Path) -> None:
    with Cluster(tmp_path, steps=200, checkpoint_every=10) as cluster:
        cluster.workers("w1", "w2")
        serve = cluster.serve()
        originals = {name: cluster.drop(name, seed=i) for i, name in enumerate(["a.jpg", "b.jpg"])}
        cluster.wait(cluster.progress_worker, JOB_S, "a job's progress past a checkpoint")
        serve.proc.send_signal(signal.SIGTERM)  # checkpoints the remote jobs, exits 0
        assert serve.wait_exit(60) == 0
        assert re.search(r"stopped [ab]\.jpg at step \d+; it resumes from there", serve.text()), serve.text()
        assert list((cluster.root / ".stylefold" / "work").glob("*/checkpoint.pt"))

        second = cluster.serve("serve-2")
        second.wait_log(r"[ab]\.jpg runs on worker", JOB_S)
        kill_9(cluster, "serve-2")  # the workers go on; their ends wait on the broker
        third = cluster.serve("serve-3")
        cluster.wait(lambda: cluster.finished("a.jpg", "b.jpg"), JOB_S, "both originals in done/")
        assert cluster.outbox() == ["a-brushstrokes.jpg", "b-brushstrokes.jpg"]
        for name, data in originals.items():
            assert (cluster.root / "done" / name).read_bytes() == data
            assert loss_steps(cluster, name[0] + "-brushstrokes") == list(range(1, 201))
        assert "following its delivery on the broker (the daemon restarted)" in third.text()
        workers = cluster.by_name("w1").text() + cluster.by_name("w2").text()
        assert re.search(r"resuming at step \d+", workers)  # after the SIGTERM, from its checkpoint
        assert not re.search(r"worker \S+ lost", second.text() + third.text())


def test_a_job_that_kills_three_workers_is_set_aside_as_poison(tmp_path: Path) -> None:
    with Cluster(tmp_path, steps=20) as cluster:
        for name in ("w1", "w2", "w3"):
            cluster.worker(name, hook="die:poison", wait=False)
        for name in ("w1", "w2", "w3"):
            cluster.by_name(name).wait_log(r"celery\.apps\.worker: .* ready", 120)
        serve = cluster.serve()
        cluster.drop("poison.jpg")
        cluster.wait(lambda: "poison.jpg" in cluster.failed(), 3 * JOB_S, "poison.jpg in failed/")
        error = json.loads((cluster.root / "failed" / "poison.error.json").read_text())
        assert error["kind"] == "internal"
        assert re.fullmatch(r"this file stopped 3 workers \(w\d, w\d, w\d\) and was set aside", error["error"])
        assert sorted(p.proc.poll() for p in cluster.processes[:3]) == [-9, -9, -9]  # each died once
        assert cluster.outbox() == [] and "(2 of 3)" in serve.text()


def test_a_job_longer_than_the_visibility_timeout_runs_once_while_its_worker_lives(tmp_path: Path) -> None:
    with Cluster(tmp_path, steps=300, cluster_toml="visibility_timeout_s = 1\n") as cluster:
        cluster.workers("w1", "w2")
        serve = cluster.serve()
        cluster.drop("long.jpg")
        cluster.wait(lambda: cluster.finished("long.jpg"), JOB_S, "the original in done/")
        logs = cluster.by_name("w1").text() + cluster.by_name("w2").text()
        assert len(re.findall(r"done long\.jpg", logs)) == 1
        # Celery did redeliver the unacknowledged message; the lease kept it from running twice.
        assert "dropped a redelivery of long.jpg: another worker holds its lease" in logs
        assert cluster.outbox() == ["long-brushstrokes.jpg"] and loss_steps(cluster, "long-brushstrokes") == \
            list(range(1, 301))
        assert "lost long.jpg" not in serve.text()


def test_a_broker_restarted_with_and_then_without_its_data_loses_nothing_and_publishes_nothing_twice(
        tmp_path: Path) -> None:
    # Three slots, two workers: two jobs run and one waits in the broker's queue; the
    # fourth is sent when a slot frees. The jobs are long enough (400 steps) that both
    # workers are still busy at the second restart, whatever order the files are claimed in.
    names = ["a.jpg", "b.jpg", "c.jpg", "d.jpg"]
    with Cluster(tmp_path, steps=400, checkpoint_every=10, slots=3) as cluster:
        cluster.workers("w1", "w2")
        serve = cluster.serve()
        originals = {name: cluster.drop(name, seed=i) for i, name in enumerate(names)}
        cluster.wait(cluster.progress_worker, JOB_S, "a job's progress past a checkpoint")
        cluster.redis.restart(keep_data=True)  # appendonly, fsync always
        cluster.wait(lambda: len(re.findall(r"\S+ runs on worker", serve.text())) == 2, JOB_S, "both workers busy")
        log = serve.text()
        sent = set(re.findall(r"sent (\S+) to the workers", log))
        queued = sent - set(re.findall(r"(\S+) runs on worker", log))
        assert len(sent) == 3 and len(queued) == 1, log
        cluster.redis.restart(keep_data=False)  # its queue, leases, checkpoints and blobs are gone
        cluster.wait(lambda: cluster.finished(*names), 3 * JOB_S, "all originals in done/")
        assert cluster.outbox() == [n[0] + "-brushstrokes.jpg" for n in names]
        for name, data in originals.items():
            assert (cluster.root / "done" / name).read_bytes() == data
            assert loss_steps(cluster, name[0] + "-brushstrokes") == list(range(1, 401))
        assert cluster.failed() == [] and all(p.proc.poll() is None for p in cluster.processes)
        assert not re.search(r"worker \S+ lost", serve.text())  # no worker was taken for dead
        # Without its data the queued message is gone: the daemon sends it again, once.
        assert re.findall(r"the broker lost it; sent (\S+)", serve.text()) == sorted(queued), serve.text()


def test_a_worker_whose_device_fails_exits_1_and_its_job_goes_elsewhere(tmp_path: Path) -> None:
    with Cluster(tmp_path, steps=30) as cluster:
        sick = cluster.worker("w1", hook="device:gpu")
        serve = cluster.serve()
        cluster.drop("gpu.jpg")
        assert sick.wait_exit(JOB_S) == 1
        assert "device error, exiting for a restart" in sick.text()
        cluster.worker("w2")
        cluster.wait(lambda: cluster.finished("gpu.jpg"), JOB_S, "the original in done/")
        assert cluster.outbox() == ["gpu-brushstrokes.jpg"] and loss_steps(cluster, "gpu-brushstrokes") == \
            list(range(1, 31))
        assert "worker w1 lost gpu.jpg: its device failed" in serve.text()
        assert "done gpu.jpg" in cluster.by_name("w2").text()
