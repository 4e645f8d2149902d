"""Command line: argv -> config -> logging -> the command. Owns the exit codes.

0 success, 1 a job failed, 2 bad usage or config (SPEC §2). ``main(argv)`` returns the
code instead of exiting, so tests call it directly. One module per command group
(``run``, ``hotfolder``, ``presets``, ``doctor``, ``bench``); each imports torch only
inside the commands that need it, so ``--help``, ``status`` and ``presets validate``
never load it.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Sequence
from typing import Any

from .. import __version__
from ..config import ConfigError
from ..names import printable
from ..presets import PresetError
from . import bench, doctor, hotfolder, presets, run, web, worker
from .common import EXIT_JOB_FAILED, EXIT_OK, EXIT_USAGE, CommandError, error
from .run import parse_set

__all__ = ["SafeFormatter", "build_parser", "configure_logging", "main", "parse_set"]

logger = logging.getLogger(__name__)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="stylefold", description="Neural style transfer as a hot-folder service (Gatys et al., VGG19)."
    )
    parser.add_argument("--version", action="version", version=f"stylefold {__version__}")
    parser.add_argument("-v", "--verbose", action="count", default=0, help="more log output")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    run.add_parser(sub)
    hotfolder.add_parsers(sub)
    doctor.add_parser(sub)
    presets.add_parser(sub)
    bench.add_parser(sub)
    web.add_parser(sub)
    worker.add_parser(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # argparse: --help (0) or bad usage (2)
        return int(exc.code or 0)
    if not getattr(args, "func", None):
        parser.print_help()
        return EXIT_USAGE
    configure_logging(args.verbose)
    try:
        return int(args.func(args))
    except (ConfigError, PresetError) as exc:
        error(str(exc))
        return EXIT_USAGE
    except CommandError as exc:
        error(str(exc))
        return exc.code
    except KeyboardInterrupt:
        error("interrupted")
        return 130
    except BrokenPipeError:  # `stylefold status | head`: the reader has all it wanted
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_OK
    except OSError as exc:  # a full disk, a read-only folder: a sentence, not a traceback
        error(f"{exc.strerror or exc}{f': {exc.filename}' if exc.filename else ''}")
        return EXIT_JOB_FAILED


def configure_logging(verbose: int = 0) -> None:
    """Called once, by ``main``: the only place logging is configured."""
    from rich.logging import RichHandler

    from ..hotfolder.console import console, is_interactive

    level = logging.DEBUG if verbose > 0 else logging.INFO
    root = logging.getLogger()
    # Replace only our own handler (main() may run more than once in a process: tests).
    for old in [h for h in root.handlers if getattr(h, "_stylefold", False)]:
        root.removeHandler(old)
    if is_interactive():
        handler: logging.Handler = RichHandler(console=console(), show_path=False, rich_tracebacks=False)
        handler.setFormatter(logging.Formatter("%(message)s"))
    else:
        handler = _CurrentStderr()
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    handler._stylefold = True  # type: ignore[attr-defined]
    root.addHandler(handler)
    root.setLevel(level)
    for noisy in ("PIL", "watchdog"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


class SafeFormatter(logging.Formatter):
    """Log lines that a file name cannot forge: the values put into a message (file
    names, paths, errors quoting them) have every control character escaped, newlines
    included; the message as a whole keeps its own newlines (a multi-line preset error,
    a traceback) but loses any other control character (ESC, so no terminal codes)."""

    def format(self, record: logging.LogRecord) -> str:
        if record.args:
            record = logging.makeLogRecord(record.__dict__)
            args = record.args
            if isinstance(args, dict):
                record.args = {k: _escaped(v) for k, v in args.items()}
            elif isinstance(args, tuple):
                record.args = tuple(_escaped(v) for v in args)
        return printable(super().format(record), keep_newlines=True)


def _escaped(value: object) -> object:
    return value if isinstance(value, (int, float)) else printable(value)


class _CurrentStderr(logging.StreamHandler):  # type: ignore[type-arg]
    """A handler on whatever ``sys.stderr`` is when a record comes (tests swap it, and a
    handler holding the old one wrote to a closed stream)."""

    @property
    def stream(self) -> Any:
        return sys.stderr

    @stream.setter
    def stream(self, _value: Any) -> None:
        pass


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
