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
from ..presets import PresetLibrary
from .common import EXIT_JOB_FAILED, EXIT_OK, CommandError, add_engine_options, load_resident

__all__ = ["add_parsers"]

logger = logging.getLogger(__name__)


def add_parsers(sub: Any) -> None:
    serve = sub.add_parser("serve", help="run the hot-folder daemon")
    serve.add_argument("--root", type=Path, default=None,
                       help="hot-folder root (default ./hotfolders, or $STYLEFOLD_ROOT)")
    serve.add_argument("--once", action="store_true", help="process what is in the inbox, then exit")
    add_engine_options(serve)
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
    from ..hotfolder.journal import Journal
    from ..hotfolder.service import Service, install_signal_handlers

    config = load_config(args.config, {"root": args.root, "device": args.device, "weights": args.weights})
    # Handlers first, so a SIGTERM during the model load is a clean exit 0 too.
    stop = threading.Event()
    install_signal_handlers(stop, lambda: logger.info(
        "stopping: the running job saves a checkpoint at its next step and resumes from it at the next start "
        "(a second Ctrl-C or SIGTERM exits at once)"))

    from ..hotfolder.console import ServeConsole
    from ..hotfolder.sdnotify import Notifier
    from ..hotfolder.worker import FatalDeviceError, Worker

    logger.info("loading VGG19 (%s)", config.weights)
    resident = load_resident(config)
    hot = HotFolder(config.root)
    if not hot.inbox.is_dir():
        logger.info("creating the hot folder %s (inbox/, styles/, outbox/, done/, failed/)", hot.root.absolute())
    hot.ensure()
    journal = Journal(hot.journal)
    worker = Worker(hot, journal, resident, config.checkpoint_every)
    with ServeConsole(config.log_every_s) as view:
        service = Service(config, hot, journal, worker, view=view, notifier=Notifier.from_env(), stop=stop)
        try:
            return service.run(once=args.once)
        except FatalDeviceError as exc:
            logger.critical("device error, exiting for a restart: %s", exc)
            return EXIT_JOB_FAILED


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
    print(f"{report['root']}: {len(report['queue'])} waiting in the inbox")
    for entry in report["queue"]:
        print(f"  waiting     {entry['source']}: {entry['reason']}")
    for job in report["running"]:
        progress = job["progress"] or {}
        step = f" step {progress['step']}/{progress['steps']}" if progress else ""
        note = {"interrupted": " (no daemon holds it: resumes at the next start)",
                "stale": " (its files already moved on)"}.get(job["state"], "")
        print(f"  {job['state']:<11} {job['source']}{step}, since {clock(job['updated'])}{note}")
    for job in report["recent_done"]:
        print(f"  done        {job['source']} -> {job['output']} at {clock(job['at'])}")
    for job in report["recent_failed"]:
        print(f"  failed      {job['source']} ({job['kind']}) at {clock(job['at'])}: {job['error']}")
    return EXIT_OK
