"""The hot-folder commands: ``serve``, ``init``, ``submit``, ``status``.

Only ``serve`` loads torch (when it builds the worker); the others run in an editor's
export hook or a shell and start fast.
"""

from __future__ import annotations

import argparse
import json
import logging
import threading
from pathlib import Path
from typing import Any

from ..config import load_config
from ..hotfolder.layout import HotFolder
from ..names import printable
from ..presets import PresetLibrary
from .common import EXIT_JOB_FAILED, EXIT_OK, CommandError, add_engine_options, load_resident
from .web import add_web_option, announce_daemon, check_web, start_web, stop_web
from .worker import add_broker_options, serve_with_broker

__all__ = ["add_parsers"]

logger = logging.getLogger(__name__)


def add_parsers(sub: Any) -> None:
    serve = sub.add_parser("serve", help="run the hot-folder daemon")
    serve.add_argument("--root", type=Path, default=None,
                       help="hot-folder root (default ./hotfolders, or $STYLEFOLD_ROOT)")
    serve.add_argument("--once", action="store_true", help="process what is in the inbox, then exit")
    add_engine_options(serve)
    add_web_option(serve)
    add_broker_options(serve)
    serve.set_defaults(func=cmd_serve)

    init = sub.add_parser("init", help="create the hot-folder tree and a commented stylefold.toml")
    init.add_argument("root", nargs="?", type=Path, default=None, metavar="DIR")
    init.set_defaults(func=cmd_init)

    submit = sub.add_parser("submit", help="place images into the inbox safely (temp name, then rename)")
    submit.add_argument("images", nargs="+", type=Path, metavar="IMAGE")
    submit.add_argument("--preset", "-p", default=None,
                        help="a preset name (inbox/NAME/) or a preset JSON file (sidecar)")
    submit.add_argument("--root", type=Path, default=None)
    submit.set_defaults(func=cmd_submit)

    status = sub.add_parser("status", help="queue, running job with progress, recent results and failures")
    status.add_argument("--root", type=Path, default=None)
    status.add_argument("--json", action="store_true", help="machine-readable output on stdout")
    status.set_defaults(func=cmd_status)


def cmd_serve(args: argparse.Namespace) -> int:
    from ..hotfolder.rebuild import open_journal
    from ..hotfolder.service import Service
    from ..hotfolder.signals import install_signal_handlers

    config = load_config(args.config, {"root": args.root, "device": args.device, "weights": args.weights})
    check_web(config, args.web)  # a public address without a token: exit 2 before the model loads
    # Handlers first, so a SIGTERM during the model load is a clean exit 0 too.
    stop, wake = threading.Event(), threading.Event()

    def on_stop() -> None:
        logger.info("stopping: the running job saves a checkpoint at its next step and resumes from it at the "
                    "next start (a second Ctrl-C or SIGTERM exits at once)")
        wake.set()  # an idle daemon sleeps until its next timer: end that sleep now

    install_signal_handlers(stop, on_stop)
    if args.broker or config.cluster.broker:  # SPEC §8: the jobs run on workers (cli/worker.py)
        return serve_with_broker(config, args, stop)

    from ..hotfolder.console import ServeConsole
    from ..hotfolder.sdnotify import Notifier
    from ..hotfolder.worker import FatalDeviceError, Worker

    logger.info("loading VGG19 (%s)", config.weights)
    resident = load_resident(config)
    hot = HotFolder(config.root)
    if not hot.inbox.is_dir():
        logger.info("creating the hot folder %s (inbox/, styles/, outbox/, done/, failed/)", hot.root.absolute())
    hot.ensure()
    page = None if args.once else start_web(config, args.web)  # a thread; the loop below is untouched
    announced = announce_daemon(hot, resident)
    journal = open_journal(hot)  # a corrupt, missing or deleted journal is rebuilt from the folders
    worker = Worker(hot, journal, resident, config.checkpoint_every)
    with ServeConsole(config.log_every_s) as view:
        service = Service(config, hot, journal, worker, view=view, notifier=Notifier.from_env(), stop=stop,
                          wake=wake)
        try:
            return service.run(once=args.once)
        except FatalDeviceError as exc:
            logger.critical("device error, exiting for a restart: %s", exc)
            return EXIT_JOB_FAILED
        finally:
            stop_web(page, announced)


def cmd_init(args: argparse.Namespace) -> int:
    from ..hotfolder.admin import init_root

    root = args.root or load_config(None).root
    for path in init_root(root):
        print(f"created {path}")
    print(f"hot folder ready at {root.absolute()}; start it with: stylefold serve --root {root}")
    return EXIT_OK


def cmd_submit(args: argparse.Namespace) -> int:
    from ..hotfolder.admin import submit_files

    config = load_config(None, {"root": args.root})
    preset = args.preset
    if preset and Path(preset).suffix.lower() != ".json":
        # A name the daemon does not know would wait in inbox/NAME/ and then fail.
        library = PresetLibrary.for_config(config)
        if library.find(preset) is None:
            raise CommandError(f"--preset {library.unknown(preset)}")
    try:
        placed = submit_files(args.images, config.root, preset)
    except (OSError, ValueError) as exc:
        raise CommandError(str(exc)) from exc
    for path in placed:
        print(path)
    return EXIT_OK


def cmd_status(args: argparse.Namespace) -> int:
    from ..hotfolder.admin import clock, status_report

    config = load_config(None, {"root": args.root})
    if not HotFolder(config.root).inbox.is_dir():
        raise CommandError(f"there is no hot folder at {config.root.absolute()}; create one with "
                           f"`stylefold init {config.root}` (or give --root / set STYLEFOLD_ROOT)")
    report = status_report(config)
    if args.json:
        print(json.dumps(report, indent=2))
        return EXIT_OK
    shown = printable  # names are anyone's: no control character reaches the terminal
    print(f"{shown(report['root'])}: {len(report['queue'])} waiting in the inbox")
    if report.get("journal_problem"):
        print(f"  journal     {shown(report['journal_problem'])}")
    for entry in report["queue"]:
        print(f"  waiting     {shown(entry['source'])}: {shown(entry['reason'])}")
    for job in report["running"]:
        progress = job["progress"] or {}
        step = f" step {progress['step']}/{progress['steps']}" if progress else ""
        note = {"interrupted": " (no daemon holds it: resumes at the next start)",
                "stale": " (its files already moved on)"}.get(job["state"], "")
        print(f"  {job['state']:<11} {shown(job['source'])}{step}, since {clock(job['updated'])}{note}")
    for job in report["recent_done"]:
        print(f"  done        {shown(job['source'])} -> {shown(job['output'])} at {clock(job['at'])}")
    for job in report["recent_failed"]:
        print(f"  failed      {shown(job['source'])} ({job['kind']}) at {clock(job['at'])}: {shown(job['error'])}")
    for worker in report.get("workers", []):  # SPEC §8: the broker's workers
        if "problem" in worker:
            print(f"  workers     {shown(worker['problem'])}")
            continue
        doing = f"running {shown(str(worker.get('source')))}" if worker.get("job") else "idle"
        refused = " (refused: other weights)" if worker.get("refused") else ""
        print(f"  worker      {shown(worker['name'])} on {shown(str(worker.get('device')))}: {doing}, heartbeat "
              f"{worker['heartbeat_age_s']} s ago{refused}")
    return EXIT_OK
