"""The real processes of the cluster tests: a ``redis-server`` on a free loopback port
with its own directory, ``stylefold worker`` processes (CPU, random weights,
``threads = 1``) and ``stylefold serve --broker`` on a ``tmp_path`` hot folder.

No tests here: ``Cluster`` is used by the ``test_cluster_*`` modules. Run as
``python -m tests.test_cluster_rig HOOK -- ARGV`` it is a worker with a fault injected
(``die:WORD``: SIGKILL itself when a job's photo name contains WORD;
``device:WORD``: a device error on such a job), the way a real crash or GPU fault
would look from outside.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from .test_serve_process import Daemon, drop, wait_until

REDIS = shutil.which("redis-server")
needs_redis = pytest.mark.skipif(REDIS is None, reason="redis-server is not installed (apt-get install redis-server; "
                                                       "CI installs it)")
START_S = 120.0
LEASE_S = 2.0
_ENV_DROP = ("STYLEFOLD_ROOT", "STYLEFOLD_CONFIG", "STYLEFOLD_DEVICE", "STYLEFOLD_WEIGHTS", "STYLEFOLD_BROKER",
             "NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID", "JOURNAL_STREAM")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Redis:
    folder: Path
    appendonly: bool = True
    port: int = field(default_factory=free_port)
    proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        assert REDIS is not None
        self.folder.mkdir(parents=True, exist_ok=True)
        log = (self.folder / "redis.log").open("ab")
        self.proc = subprocess.Popen(
            [REDIS, "--port", str(self.port), "--bind", "127.0.0.1", "--dir", str(self.folder), "--save", "",
             "--appendonly", "yes" if self.appendonly else "no", "--appendfsync", "always"],
            stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        wait_until(self.ping, 30, "redis-server to answer")

    def ping(self) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=1) as s:
                s.sendall(b"PING\r\n")
                return s.recv(16).startswith(b"+PONG")
        except OSError:
            return False

    def client(self) -> Any:
        import redis

        return redis.Redis.from_url(self.url)

    def stop(self, *, kill: bool = False) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL if kill else signal.SIGTERM)
            self.proc.wait(30)
        self.proc = None

    def restart(self, *, keep_data: bool) -> None:
        self.stop(kill=True)
        if not keep_data:
            for path in self.folder.iterdir():
                if path.name != "redis.log":
                    shutil.rmtree(path) if path.is_dir() else path.unlink()
        self.start()


@dataclass
class Cluster:
    """One broker, its workers and one hot folder with a `serve --broker` on it."""

    tmp_path: Path
    steps: int = 40
    size: int = 32
    checkpoint_every: int = 5
    slots: int = 3
    appendonly: bool = True
    cluster_toml: str = ""
    processes: list[Daemon] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.redis = Redis(self.tmp_path / "redis", self.appendonly)
        self.root = self.tmp_path / "hot"
        (self.root / "presets").mkdir(parents=True)
        (self.root / "inbox").mkdir()
        self.config = self.tmp_path / "stylefold.toml"
        self.config.write_text(
            f'settle_s = 0.1\npair_timeout_s = 1\ncheckpoint_every = {self.checkpoint_every}\nthreads = 1\n'
            f'presets_dir = "{self.root / "presets"}"\ndefault_preset = "tiny"\nlog_every_s = 1\n'
            f'[cluster]\nlease_s = {LEASE_S}\nslots = {self.slots}\n{self.cluster_toml}')
        self.preset("tiny", {"steps": self.steps, "size": self.size, "init": "content"})

    def __enter__(self) -> Cluster:
        self.redis.start()
        return self

    def __exit__(self, *exc: object) -> None:
        for proc in self.processes:
            if proc.proc.poll() is None:
                proc.proc.kill()
                proc.proc.wait(30)
        self.redis.stop(kill=True)

    def preset(self, name: str, values: dict[str, Any]) -> None:
        (self.root / "presets" / f"{name}.json").write_text(json.dumps(values))

    def _spawn(self, name: str, argv: list[str]) -> Daemon:
        env = {k: v for k, v in os.environ.items() if k not in _ENV_DROP}
        env.update(PYTHONUNBUFFERED="1", STYLEFOLD_CONFIG=str(self.config))
        log = self.tmp_path / f"{name}.log"
        with log.open("ab") as out:
            proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT, env=env,
                                    cwd=Path(__file__).resolve().parent.parent)
        daemon = Daemon(name, proc, log)
        self.processes.append(daemon)
        return daemon

    def worker(self, name: str, *, weights: str = "random", hook: str | None = None, wait: bool = True) -> Daemon:
        args = ["worker", "--broker", self.redis.url, "--weights", weights, "--device", "cpu", "--name", name,
                "--cache", str(self.tmp_path / f"cache-{name}")]
        prefix = [sys.executable, "-m", "tests.test_cluster_rig", hook, "--"] if hook else \
            [sys.executable, "-m", "stylefold"]
        daemon = self._spawn(name, prefix + args)
        if wait:
            daemon.wait_log(r"celery\.apps\.worker: .* ready", START_S)
        return daemon

    def workers(self, *names: str) -> list[Daemon]:
        started = [self.worker(n, wait=False) for n in names]
        for daemon in started:
            daemon.wait_log(r"celery\.apps\.worker: .* ready", START_S)
        return started

    def serve(self, name: str = "serve", *extra: str) -> Daemon:
        daemon = self._spawn(name, [sys.executable, "-m", "stylefold", "serve", "--root", str(self.root), "--broker",
                                    self.redis.url, "--weights", "random", "--device", "cpu", "--web", "off", *extra])
        daemon.wait_log(r"serving ", START_S)
        return daemon

    def drop(self, name: str, seed: int = 0) -> bytes:
        return drop(self.root, name, seed)

    def outbox(self) -> list[str]:
        folder = self.root / "outbox"
        return sorted(p.name for p in folder.iterdir() if p.is_file() and not p.name.startswith("."))

    def done(self) -> list[str]:
        return sorted(p.name for p in (self.root / "done").rglob("*") if p.is_file())

    def failed(self) -> list[str]:
        return sorted(p.name for p in (self.root / "failed").rglob("*") if p.is_file())

    def finished(self, *names: str) -> bool:
        """Every one of ``names`` in done/ and no claim left (a claim goes just after its move)."""
        work = self.root / ".stylefold" / "work"
        return self.done() == sorted(names) and not (work.is_dir() and any(work.iterdir()))

    def progress_worker(self) -> tuple[str, int] | None:
        """(worker, step) of the running job as the journal has it, once past a checkpoint."""
        import sqlite3

        db = self.root / ".stylefold" / "journal.db"
        if not db.exists():
            return None
        conn = sqlite3.connect(db)
        try:
            rows = conn.execute("SELECT progress FROM jobs WHERE state = 'running'").fetchall()
        except sqlite3.Error:
            return None
        finally:
            conn.close()
        for (progress,) in rows:
            info = json.loads(progress or "{}")
            if info.get("worker") and info.get("step", 0) > self.checkpoint_every:
                return str(info["worker"]), int(info["step"])
        return None

    def by_name(self, name: str) -> Daemon:
        return next(d for d in reversed(self.processes) if d.name == name)

    def wait(self, check: Any, timeout: float, what: str) -> Any:
        return wait_until(check, timeout, what)


def _hooked_worker(hook: str, argv: list[str]) -> int:
    """A real worker whose ``run_job`` misbehaves on a chosen photo (see the docstring)."""
    from stylefold.cli import main
    from stylefold.cluster import executor
    from stylefold.failures import FailureKind
    from stylefold.job.run import Failed

    what, _, word = hook.partition(":")
    real = executor.run_job

    def run_job(spec: Any, *args: Any, **kwargs: Any) -> Any:
        if word in spec.input.name:
            if what == "die":
                os.kill(os.getpid(), signal.SIGKILL)
                time.sleep(60)
            if what == "device":
                return Failed(FailureKind.DEVICE_ERROR, "CUDA error: an illegal memory access was encountered")
        return real(spec, *args, **kwargs)

    executor.run_job = run_job  # type: ignore[assignment]
    return main(argv)


if __name__ == "__main__":
    sys.exit(_hooked_worker(sys.argv[1], sys.argv[3:]))
