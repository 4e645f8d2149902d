"""``stylefold web``: the status page and API alone, for roots served by one daemon per
GPU (``stylefold@N`` units run ``serve --web off``; one ``stylefold-web`` serves the
page for all of them). No torch: it reads the journal and files.
"""

from __future__ import annotations

import argparse
import logging
import os
import threading
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .. import __version__
from ..config import Config, load_config
from ..hotfolder.layout import HotFolder
from .common import EXIT_OK, CommandError

if TYPE_CHECKING:
    from ..job.run import Resident

__all__ = ["add_parser", "add_web_option", "announce_daemon", "check_web", "start_web", "stop_web"]

logger = logging.getLogger(__name__)


def add_parser(sub: Any) -> None:
    web = sub.add_parser("web", help="serve the status page and HTTP API alone (no daemon)")
    web.add_argument("--root", type=Path, default=None,
                     help="hot-folder root (default ./hotfolders, or $STYLEFOLD_ROOT)")
    web.add_argument("--listen", default=None, metavar="HOST:PORT",
                     help="address to serve (default [web] listen, $STYLEFOLD_WEB, or 127.0.0.1:8707)")
    web.add_argument("--config", type=Path, default=None, help="stylefold.toml (default: $STYLEFOLD_CONFIG)")
    web.set_defaults(func=cmd_web)


def add_web_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--web", default=None, metavar="HOST:PORT|off",
                        help="serve the status page there (default [web] listen, $STYLEFOLD_WEB, 127.0.0.1:8707); "
                             "off: no page")


def cmd_web(args: argparse.Namespace) -> int:
    from ..hotfolder.signals import install_signal_handlers
    from ..web.server import AddressInUse, WebServer
    from ..web.settings import ListenError, WebSettings

    config = load_config(args.config, {"root": args.root})
    if not HotFolder(config.root).inbox.is_dir():
        raise CommandError(f"there is no hot folder at {config.root.absolute()}; create one with "
                           f"`stylefold init {config.root}` (or give --root / set STYLEFOLD_ROOT)")
    listen = args.listen or config.web.listen
    if listen.strip().lower() == "off":
        raise CommandError("stylefold web --listen off: nothing to serve")
    try:
        server = WebServer(config, WebSettings.from_config(config, listen))
    except ListenError as exc:
        raise CommandError(str(exc)) from None
    except AddressInUse as exc:
        raise CommandError(f"cannot serve the status page: {exc.strerror} (another stylefold serves it?)") from None
    stop = threading.Event()
    install_signal_handlers(stop)
    server.start()
    logger.info("status page of %s at %s", HotFolder(config.root).root.absolute(), server.url)
    while not stop.wait(1.0):
        pass
    server.stop()
    logger.info("status page stopped")
    return EXIT_OK


def start_web(config: Config, listen: str | None) -> Any:
    """For ``serve``: the page in a thread, or None (off, or the address taken: warned).
    A non-loopback address without a token is a CommandError (exit 2) before the model
    loads."""
    from ..web.server import start_in_thread
    from ..web.settings import ListenError

    try:
        return start_in_thread(config, listen)
    except ListenError as exc:
        raise CommandError(str(exc)) from None


def check_web(config: Config, listen: str | None) -> None:
    """Refuse a bad listen setting (exit 2) before anything slow happens."""
    from ..web.settings import ListenError, WebSettings

    if (listen or config.web.listen).strip().lower() == "off":
        return
    try:
        WebSettings.from_config(config, listen)
    except ListenError as exc:
        raise CommandError(str(exc)) from None


def announce_daemon(hot: HotFolder, resident: Resident) -> Any:
    """Record this daemon (device, memory, weights, version) for every page on the root."""
    import torch

    from ..hotfolder.live import announce_daemon as announce

    device = resident.device
    memory = None
    if device.type == "cuda":
        memory = torch.cuda.get_device_properties(device).total_memory
    elif hasattr(os, "sysconf"):
        try:
            memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")  # the RAM a CPU daemon works in
        except (ValueError, OSError):
            memory = None
    info = {"device": str(device), "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else
            device.type, "memory_bytes": memory, "weights": asdict(resident.extractor.weights),
            "version": __version__, "torch": torch.__version__}
    return announce(hot, info)


def stop_web(page: Any, announced: Any) -> None:
    if page is not None:
        page.stop()
    if announced is not None:
        announced.withdraw()
