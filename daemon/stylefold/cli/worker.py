"""``stylefold worker``: one Celery worker per device on the Redis broker (SPEC §8).

The model is loaded once, before anything is consumed, and stays resident; the pool is
Celery's solo pool (no fork after CUDA is touched), prefetch 1, late acks, JSON only.
Exit codes: 0 after a warm shutdown (SIGTERM), 1 after a device error (for systemd to
restart it with a fresh GPU context), 2 for bad usage or an unreachable broker.
"""

from __future__ import annotations

import argparse
import logging
import os
import re
import socket
from pathlib import Path
from typing import Any

from ..config import load_config
from .common import EXIT_USAGE, CommandError, add_engine_options, load_resident, with_broker

__all__ = ["add_parser"]

logger = logging.getLogger(__name__)


def add_parser(sub: Any) -> None:
    p = sub.add_parser("worker", help="run a GPU worker for `serve --broker` daemons on other machines")
    p.add_argument("--broker", default=None,
                   help="redis://[:PASSWORD@]HOST:PORT/DB (default: [cluster] broker, or $STYLEFOLD_BROKER)")
    p.add_argument("--name", default=None, help="this worker's name in status (default: HOST-DEVICE)")
    p.add_argument("--cache", type=Path, default=None,
                   help="the content cache for photos and styles (default: $CACHE_DIRECTORY, "
                        "else ~/.cache/stylefold/content)")
    add_engine_options(p)
    p.set_defaults(func=cmd_worker)


def cmd_worker(args: argparse.Namespace) -> int:
    from ..cluster.protocol import WORKER_NAME, redact

    config = load_config(args.config, {"device": args.device, "weights": args.weights})
    broker = args.broker or config.cluster.broker
    if not broker:
        raise CommandError("no broker: give --broker redis://HOST:PORT/0, set STYLEFOLD_BROKER or [cluster] broker")
    name = args.name or f"{socket.gethostname()}-{config.device.replace(':', '')}"
    if not re.match(WORKER_NAME, name):
        raise CommandError(f"--name {name!r}: use 1-64 letters, digits and ._@-")
    import redis

    from ..cluster.store import connect, wait_for

    try:
        client = connect(broker)
        wait_for(client, 30.0)
    except (ValueError, redis.RedisError) as exc:
        raise CommandError(f"cannot reach the broker {redact(broker)}: {exc}") from exc
    logger.info("loading VGG19 (%s)", config.weights)
    resident = load_resident(config)  # before anything is consumed, once
    return _serve(args, config, broker, name, client, resident)


def _serve(args: argparse.Namespace, config: Any, broker: str, name: str, client: Any, resident: Any) -> int:
    from celery import signals

    from .. import __version__
    from ..cluster.app import make_app
    from ..cluster.executor import DeviceFailed, Executor, exit_for_device
    from ..cluster.identity import identity_of_info
    from ..cluster.lease import Heartbeat
    from ..cluster.protocol import TASK_NAME, queue_for, redact
    from ..cluster.store import ContentCache
    from ..hotfolder.service import caps_of

    identity = identity_of_info(resident.extractor.weights)
    queue = queue_for(identity)
    cache = ContentCache(args.cache or _default_cache())
    heartbeat = Heartbeat(client, name, {"device": str(resident.device), "weights": identity, "queue": queue,
                                         "version": __version__}, config.cluster.lease_s)
    executor = Executor(client, heartbeat, resident, cache, identity, caps_of(config),
                        config.cluster.max_transfer_mb << 20, name)
    app = make_app(broker, visibility_timeout_s=config.cluster.visibility_timeout_s)

    @app.task(name=TASK_NAME)  # type: ignore[untyped-decorator]
    def render(body: Any) -> None:
        try:
            executor.handle(body)
        except DeviceFailed as exc:
            exit_for_device(str(exc), _flush_logs)

    def on_shutdown(**_: Any) -> None:  # a warm shutdown: the running job checkpoints and goes elsewhere
        running = heartbeat.running
        if running is not None:
            running.stop.set()

    signals.worker_shutting_down.connect(on_shutdown, weak=False)
    heartbeat.start()
    logger.info("worker %s on %s, weights %s, taking jobs from %s on %s", name, resident.device, identity, queue,
                redact(broker))
    worker = app.Worker(pool_cls="solo", concurrency=1, queues=[queue], hostname=f"{name}@{socket.gethostname()}",
                        without_gossip=True, without_mingle=True, without_heartbeat=True, quiet=True,
                        loglevel="INFO", optimization="fair")
    try:
        worker.start()
    finally:
        heartbeat.stop()
    code = int(getattr(worker, "exitcode", 0) or 0)
    logger.info("worker %s stopped (exit %d)", name, code)
    return code if code in (0, 1) else EXIT_USAGE


def _flush_logs() -> None:
    for handler in logging.getLogger().handlers:
        handler.flush()


def _default_cache() -> Path:
    if os.environ.get("CACHE_DIRECTORY"):  # systemd's CacheDirectory=
        return Path(os.environ["CACHE_DIRECTORY"].split(":")[0]) / "content"
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return base / "stylefold" / "content"




# ---------------------------------------------------------------- serve --broker


def add_broker_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--broker", default=None,
                   help="run the jobs on `stylefold worker`s of this Redis broker, redis://[:PASSWORD@]HOST:PORT/DB "
                        "(default: [cluster] broker, or $STYLEFOLD_BROKER)")
    p.add_argument("--local-worker", action="store_true", help="with --broker: also run jobs in this process")


def serve_with_broker(config: Any, args: argparse.Namespace, stop: Any) -> int:
    """``serve`` with its jobs on the broker's workers (and, with ``--local-worker``,
    in this process too)."""
    from ..cluster.identity import identity_of_info, identity_of_setting
    from ..cluster.serve import ClusterDaemon
    from ..hotfolder.console import ServeConsole
    from ..hotfolder.layout import HotFolder
    from ..hotfolder.runner import FatalDeviceError
    from ..hotfolder.sdnotify import Notifier
    from .web import announce_daemon, start_web, stop_web

    config = with_broker(config, args.broker)
    resident = None
    if args.local_worker:
        logger.info("loading VGG19 (%s) for the local worker", config.weights)
        resident = load_resident(config)
        weights = identity_of_info(resident.extractor.weights)
    else:
        try:
            weights = identity_of_setting(config.weights)
        except ValueError as exc:
            raise CommandError(str(exc)) from exc
    hot = HotFolder(config.root)
    hot.ensure()
    page = None if args.once else start_web(config, args.web)
    announced = announce_daemon(hot, resident) if resident is not None else None
    consoles: list[ServeConsole] = []

    def view(lane: int) -> ServeConsole:
        console = ServeConsole(config.log_every_s)
        if lane:
            console.interactive = False  # one live view on a terminal: the first lane's
        consoles.append(console)
        return console

    daemon = ClusterDaemon(config, hot, stop, weights, resident)
    try:
        with ServeConsole(config.log_every_s) as first:
            return daemon.run(args.once, lambda lane: first if lane == 0 else view(lane), Notifier.from_env())
    except FatalDeviceError as exc:
        logger.critical("device error, exiting for a restart: %s", exc)
        return 1
    except OSError as exc:
        raise CommandError(str(exc), code=1) from exc
    finally:
        stop_web(page, announced)
