"""`serve --broker` with real workers: a job travels by content and comes back as the
local path's outputs; status and doctor see the workers; a worker with other weights is
refused; a file above the transfer cap fails clearly. Plus the worker's handling of
hostile messages, without processes."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from .test_cluster_rig import Cluster, needs_redis

JOB_S = 120.0


def stylefold(*argv: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    import os

    environ = {k: v for k, v in os.environ.items() if not k.startswith("STYLEFOLD_")}
    environ.update(env or {})
    return subprocess.run([sys.executable, "-m", "stylefold", *argv], capture_output=True, text=True, env=environ,
                          timeout=120, check=False)


@needs_redis
def test_jobs_run_on_workers_and_come_back_as_the_local_outputs(tmp_path: Path, weights_file: Path) -> None:
    with Cluster(tmp_path, steps=12, cluster_toml="max_transfer_mb = 1\n") as cluster:
        cluster.workers("w1")
        cluster.worker("odd", weights=str(weights_file))  # other weights: refused
        serve = cluster.serve()
        originals = {name: cluster.drop(name, seed=i) for i, name in enumerate(["a.jpg", "b.png"])}
        big = tmp_path / "staging" / "big.png"
        Image.frombytes("RGB", (1000, 800), os.urandom(1000 * 800 * 3)).save(big)  # 2.4 MB
        big.rename(cluster.root / "inbox" / "big.png")
        reports = [cluster.root / "outbox" / "logs" / f"{n}-brushstrokes.json" for n in "ab"]
        cluster.wait(lambda: cluster.failed() and all(p.exists() and "source" in json.loads(p.read_text())["input"]
                                                      for p in reports), JOB_S, "two done, one failed")
        assert cluster.outbox() == ["a-brushstrokes.jpg", "b-brushstrokes.png"]
        for name, data in originals.items():
            assert (cluster.root / "done" / name).read_bytes() == data
            report = json.loads((cluster.root / "outbox" / "logs" / f"{name[0]}-brushstrokes.json").read_text())
            assert report["status"] == "done" and report["weights"]["source"] == "random"
            assert report["input"]["source"] == f"inbox/{name}" and report["steps_run"] == 12
            assert report["styles"][0]["path"].endswith("brushstrokes.png")  # this box's file, not the cache
        # Content travelled by sha256 into the worker's own cache; the odd worker got nothing.
        cached = {p.name for p in (tmp_path / "cache-w1").rglob("*") if p.is_file()}
        assert {report["input"]["sha256"], report["styles"][0]["sha256"]} <= cached
        assert "odd" not in "".join(re.findall(r"runs on worker (\S+)", serve.text()))
        assert not (tmp_path / "cache-odd").exists() or not any((tmp_path / "cache-odd").rglob("*"))
        error = json.loads((cluster.root / "failed" / "big.error.json").read_text())
        assert error["kind"] == "too_large" and "max_transfer_mb" in error["error"]
        serve.wait_log(r"worker odd is refused: its weights sha256:[0-9a-f]{64} are not this daemon's")
        # Finished jobs leave nothing on the broker but the shared style image.
        client = cluster.redis.client()
        left = lambda: sorted(k.decode() for k in client.keys("stylefold:*") if b":worker" not in k)  # noqa: E731
        cluster.wait(lambda: left() == [f"stylefold:blob:{report['styles'][0]['sha256']}"], JOB_S,
                     f"the broker to be clean: {left()}")

        env = {"STYLEFOLD_CONFIG": str(cluster.config), "STYLEFOLD_BROKER": cluster.redis.url,
               "STYLEFOLD_WEIGHTS": "random"}  # what `refused` compares with
        status = stylefold("status", "--root", str(cluster.root), "--json", env=env)
        workers = {w["name"]: w for w in json.loads(status.stdout)["workers"]}
        assert set(workers) == {"w1", "odd"} and workers["w1"]["device"] == "cpu"
        assert workers["odd"]["refused"] is True and workers["w1"]["refused"] is False
        assert workers["w1"]["job"] is None and workers["w1"]["heartbeat_age_s"] < 30
        text = stylefold("status", "--root", str(cluster.root), env=env).stdout
        assert re.search(r"worker +w1 on cpu: idle, heartbeat [\d.]+ s ago\n", text), text
        # The status page's API lists them too, asked off the request path (SPEC §7, §8).
        from fastapi.testclient import TestClient

        from stylefold.config import load_config
        from stylefold.web.app import create_app

        from .web.helpers import BASE, settings

        page_config = load_config(cluster.config, {"root": cluster.root}, environ=env)
        with TestClient(create_app(page_config, settings(page_config)), base_url=BASE) as page:
            listed = cluster.wait(lambda: page.get("/api/status").json()["workers"], 30, "workers on the page")
        assert {w["name"]: w["refused"] for w in listed} == {"w1": False, "odd": True}
        doctor = stylefold("doctor", "--root", str(cluster.root), "--weights", "random", "--broker",
                           cluster.redis.url.replace("redis://", "redis://:s3cret@"), env=env)
        assert "s3cret" not in doctor.stdout + doctor.stderr  # the password never in an output line
        ok = stylefold("doctor", "--root", str(cluster.root), "--weights", "random", "--broker", cluster.redis.url)
        assert re.search(r"OK +broker +redis://127\.0\.0\.1:\d+/0: redis [\d.]+, 1 worker\(s\) with these weights "
                         r"\(w1\); refused for other weights: odd", ok.stdout), ok.stdout


@needs_redis
def test_serve_with_a_local_worker_runs_jobs_itself_when_no_worker_is_there(tmp_path: Path) -> None:
    with Cluster(tmp_path, steps=6, slots=1) as cluster:
        serve = cluster.serve("serve", "--local-worker")
        names = ["a.jpg", "b.jpg", "c.jpg"]
        for i, name in enumerate(names):
            cluster.drop(name, seed=i)
        # One remote slot waits for a worker that never comes; the local lane takes the rest.
        cluster.wait(lambda: len(cluster.done()) == 2, JOB_S, "two originals in done/")
        assert "runs on worker" not in serve.text()
        cluster.worker("w1")
        cluster.wait(lambda: cluster.finished(*names), JOB_S, "all originals in done/")
        assert len(cluster.outbox()) == 3 and len(re.findall(r"runs on worker w1", serve.text())) == 1


def test_doctor_fails_on_a_broker_nobody_answers() -> None:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    result = stylefold("doctor", "--weights", "random", "--broker", f"redis://:pw@127.0.0.1:{port}/0")
    assert re.search(r"FAIL +broker +cannot reach the broker redis://\*\*\*@127\.0\.0\.1", result.stdout)
    assert "pw@" not in result.stdout and result.returncode == 2


# ---------------------------------------------------------------- hostile messages (no processes)


class _FakeRedis:
    def __init__(self) -> None:
        self.data: dict[str, Any] = {}

    def get(self, key: str) -> Any:
        return self.data.get(key)

    def pipeline(self) -> _FakeRedis:
        return self

    def rpush(self, key: str, value: str) -> None:
        self.data.setdefault(key, []).append(value)

    def ltrim(self, *_: Any) -> None:
        pass

    def expire(self, *_: Any) -> None:
        pass

    def execute(self) -> None:
        pass


def _executor(tmp_path: Path) -> Any:
    from stylefold.cluster.executor import Executor
    from stylefold.cluster.store import ContentCache
    from stylefold.job.spec import Caps

    class Beat:
        def acquire(self, running: Any) -> bool:
            raise AssertionError("a refused message must never take a lease")

    return Executor(_FakeRedis(), Beat(), None, ContentCache(tmp_path / "cache"),  # type: ignore[arg-type]
                    "random(seed=0)", Caps(), 1 << 20, "w1")


def _message(tmp_path: Path, **changes: Any) -> dict[str, Any]:
    from stylefold.cluster.protocol import RenderMessage
    from stylefold.job.spec import Caps, JobSpec
    from stylefold.presets import Preset

    from .conftest import write_photo, write_texture

    spec = JobSpec.for_files("18c0ffee-0123abcd", write_photo(tmp_path / "p.jpg"), Preset(steps=3, size=32), "test",
                             [(write_texture(tmp_path / "s.png"), 1.0)], Caps())
    body = RenderMessage(job_id=spec.job_id, delivery="0" * 32, spec=spec, weights="random(seed=0)",
                         checkpoint_every=5).body()
    body.update(changes)
    return body


@pytest.mark.parametrize("change", [
    {"weights": "sha256:" + "1" * 64},  # made for other weights
    {"job_id": "../../etc"},  # not a job id
    {"extra": "code"},  # unknown keys
    {"checkpoint_every": 0},
    {"v": 2},
])
def test_a_hostile_or_foreign_message_is_refused_before_anything_runs(
        tmp_path: Path, change: dict[str, Any], caplog: pytest.LogCaptureFixture) -> None:
    executor = _executor(tmp_path)
    executor.handle(_message(tmp_path, **change))
    assert "refused" in caplog.text
    assert not any((tmp_path / "cache").iterdir())  # nothing fetched, nothing written


def test_a_message_cannot_name_a_file_for_the_worker_to_read(tmp_path: Path) -> None:
    """The spec's paths are the coordinator's: the worker reads only its cache by sha256."""
    from stylefold.cluster.store import ContentCache

    cache = ContentCache(tmp_path / "cache")
    with pytest.raises(ValueError):
        cache.path("../../../etc/passwd")
    body = _message(tmp_path)
    assert body["spec"]["input"]["path"].startswith(str(tmp_path))  # what a worker must never open


def test_the_celery_app_takes_json_only_with_late_acks_and_prefetch_1() -> None:
    from stylefold.cluster.app import make_app

    conf = make_app("redis://127.0.0.1:1/0", visibility_timeout_s=3600).conf
    assert conf.accept_content == ["json"] and conf.task_serializer == "json" and conf.result_serializer == "json"
    assert conf.task_acks_late is True and conf.worker_prefetch_multiplier == 1 and conf.worker_pool == "solo"
    assert conf.task_reject_on_worker_lost is False


def test_the_weights_identity_of_a_setting_is_what_a_worker_reports(weights_file: Path) -> None:
    from torchvision.models import VGG19_Weights

    from stylefold.cluster.identity import IMAGENET_FILE, identity_of_info, identity_of_setting
    from stylefold.engine.features import load_vgg19_features

    assert VGG19_Weights.IMAGENET1K_V1.url.rsplit("/", 1)[-1] == IMAGENET_FILE
    for setting in ("random", str(weights_file)):
        assert identity_of_info(load_vgg19_features(setting)[1]) == identity_of_setting(setting)


def test_broker_urls_are_redacted_for_logs() -> None:
    from stylefold.cluster.protocol import redact

    assert redact("redis://:hunter2@gpu-box:6379/0") == "redis://***@gpu-box:6379/0"
    assert redact("redis://user:pw@h/0") == "redis://***@h/0" and redact("redis://h:1/0") == "redis://h:1/0"


def test_the_broker_comes_from_cluster_broker_or_stylefold_broker_and_a_bad_one_never_shows_its_password(
        tmp_path: Path) -> None:
    from stylefold.config import ConfigError, load_config

    config_file = tmp_path / "stylefold.toml"
    config_file.write_text('[cluster]\nbroker = "redis://file:6379/0"\nslots = 2\n')
    assert load_config(config_file, environ={}).cluster.broker == "redis://file:6379/0"
    from_env = load_config(config_file, environ={"STYLEFOLD_BROKER": "redis://:pw@env:6379/1"}).cluster
    assert from_env.broker == "redis://:pw@env:6379/1" and from_env.slots == 2  # env over file, per key
    assert load_config(None, environ={}).cluster.broker is None  # no broker: one process, as before
    with pytest.raises(ConfigError) as bad:
        load_config(None, environ={"STYLEFOLD_BROKER": "http://:hunter2@h/0"})
    assert "STYLEFOLD_BROKER" in str(bad.value) and "hunter2" not in str(bad.value)
