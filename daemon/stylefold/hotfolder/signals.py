"""Signals for the long-running commands (``serve``, ``web``, ``worker``).

SIGTERM, SIGINT and SIGQUIT set the stop flag and nothing else: the running job stops at
its next step, checkpoints, and the loop returns (exit 0). A second one is the cold
stop: the process exits at once (130), and the claim, whose lock the kernel drops,
resumes from its last checkpoint at the next start. SIGHUP (a closed terminal, a
``systemctl reload``) is logged and ignored: presets and style images are read afresh
for every job, and a change to ``stylefold.toml`` takes a restart. No torch here.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
from collections.abc import Callable
from typing import Any

__all__ = ["install_signal_handlers"]

logger = logging.getLogger(__name__)


def install_signal_handlers(stop: threading.Event, on_stop: Callable[[], None] = lambda: None) -> None:
    """SIGTERM/SIGINT/SIGQUIT: the first sets ``stop`` (warm stop), a second exits at
    once. SIGHUP: a log line, nothing else."""

    def on_signal(signum: int, _frame: Any) -> None:
        if stop.is_set():
            os._exit(130)
        stop.set()
        on_stop()

    def on_hangup(_signum: int, _frame: Any) -> None:
        logger.info("SIGHUP ignored: presets and styles are read for every job; "
                    "a change to stylefold.toml needs a restart")

    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGQUIT):
        signal.signal(sig, on_signal)
    signal.signal(signal.SIGHUP, on_hangup)
