"""What several commands share: engine options, loading the resident model, errors.

torch is imported inside the functions that need it, never at import time, so
``--help``, ``status`` and ``presets validate`` stay fast.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from ..config import Config

if TYPE_CHECKING:
    from ..job.run import Resident

__all__ = ["EXIT_JOB_FAILED", "EXIT_OK", "EXIT_USAGE", "CommandError", "add_engine_options", "error",
           "load_resident"]

logger = logging.getLogger(__name__)

EXIT_OK, EXIT_JOB_FAILED, EXIT_USAGE = 0, 1, 2


class CommandError(Exception):
    """A command that cannot go on: ``main`` prints the message and returns ``code``."""

    def __init__(self, message: str, code: int = EXIT_USAGE) -> None:
        super().__init__(message)
        self.code = code


def error(message: str) -> None:
    print(f"stylefold: error: {message}", file=sys.stderr)


def add_engine_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--device", default=None, help="auto (cuda, then mps, then cpu), cpu, cuda, cuda:N, mps")
    p.add_argument("--weights", default=None,
                   help="imagenet (default; downloaded once), a .pth state dict of torchvision's vgg19, or random")
    p.add_argument("--config", type=Path, default=None,
                   help="stylefold.toml (default: $STYLEFOLD_CONFIG)")


def load_resident(config: Config) -> Resident:
    """VGG19 on the configured device, once per process; bad settings are exit 2."""
    import torch

    from ..engine.features import WeightsError, build_extractor
    from ..engine.runtime import resolve_device, tune_cpu_allocator
    from ..job.run import Resident

    try:
        device = resolve_device(config.device)
        if config.threads:
            torch.set_num_threads(config.threads)
        if device.type == "cpu":
            tune_cpu_allocator()
        logger.debug("loading VGG19 (%s) on %s", config.weights, device)
        return Resident(build_extractor(config.weights, device))
    except (ValueError, WeightsError) as exc:
        raise CommandError(str(exc)) from exc


def with_broker(config: Config, broker: str | None) -> Config:
    """``config`` with ``--broker URL`` in its ``[cluster]`` table, when one is given."""
    if not broker:
        return config
    from ..config import ClusterConfig, ConfigError

    try:
        cluster = ClusterConfig.model_validate({**config.cluster.model_dump(), "broker": broker})
    except ValueError:
        raise ConfigError("--broker: expected redis://[:PASSWORD@]HOST:PORT/DB") from None
    return config.model_copy(update={"cluster": cluster})
