"""Daemon configuration: ``stylefold.toml``, environment, command line (SPEC §2).

Precedence: command line, then environment (``STYLEFOLD_*``), then the config file, then
these defaults. A bad value is a ``ConfigError`` naming the file (or variable) and key;
the CLI turns it into exit code 2. No torch import.
"""

from __future__ import annotations

import os
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

__all__ = ["CONFIG_NAME", "Config", "ConfigError", "load_config"]

CONFIG_NAME = "stylefold.toml"
ENV_KEYS = {
    "STYLEFOLD_ROOT": "root",
    "STYLEFOLD_DEVICE": "device",
    "STYLEFOLD_WEIGHTS": "weights",
}


class ConfigError(ValueError):
    """A configuration that cannot be used; ``str()`` names the source and key."""


class Config(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    root: Path = Path("hotfolders")
    device: str = "auto"
    weights: str = "imagenet"
    # CPU threads for torch (None: all cores). Two CPU daemons on one box: half each.
    threads: Annotated[int, Field(ge=1, le=1024)] | None = None
    default_preset: Annotated[str, Field(max_length=64)] | None = None
    presets_dir: Path | None = None
    style_dirs: list[Path] = []
    # Caps a preset from the hot folder can never exceed (kind too_large).
    max_steps: Annotated[int, Field(ge=1, le=100_000)] = 2000
    max_size: Annotated[int, Field(ge=16, le=16384)] = 4096
    max_input_pixels: Annotated[int, Field(ge=1, le=1_000_000_000)] = 100_000_000
    # Activation memory one optimisation may use; larger results are optimised coarse
    # to fine, in tiles where needed. 0: 70% of the GPU's memory, or a quarter of RAM.
    memory_budget_mb: Annotated[int, Field(ge=0, le=10_000_000)] = 0
    # Watching (used by `serve`).
    settle_s: Annotated[float, Field(ge=0, le=3600)] = 2.0
    pair_timeout_s: Annotated[float, Field(ge=0, le=86_400)] = 30.0
    scan_interval_s: Annotated[float, Field(gt=0, le=3600)] = 30.0
    poll: bool = False
    checkpoint_every: Annotated[int, Field(ge=1, le=100_000)] = 50
    log_every_s: Annotated[float, Field(gt=0, le=3600)] = 10.0


def load_config(
    config_file: Path | None = None,
    overrides: Mapping[str, Any] | None = None,
    environ: Mapping[str, str] | None = None,
) -> Config:
    """Build the effective config. ``config_file`` defaults to ``STYLEFOLD_CONFIG``, then
    ``<root>/stylefold.toml`` if it exists. ``overrides`` are command-line values (None =
    not given)."""
    env = os.environ if environ is None else environ
    cli = {k: v for k, v in (overrides or {}).items() if v is not None}
    from_env = {key: env[var] for var, key in ENV_KEYS.items() if env.get(var)}
    path = config_file or (Path(env["STYLEFOLD_CONFIG"]) if env.get("STYLEFOLD_CONFIG") else None)
    if path is None:
        root = Path(cli.get("root") or from_env.get("root") or Config().root)
        candidate = root / CONFIG_NAME
        path = candidate if candidate.is_file() else None
    from_file = _read_toml(path) if path is not None else {}
    merged = {**from_file, **from_env, **cli}
    try:
        config = Config.model_validate(merged)
    except ValidationError as exc:
        raise ConfigError(_message(exc, path, from_env, cli)) from None
    if path is not None:
        config = _relative_to(config, path.parent, set(from_file) - set(from_env) - set(cli))
    return config


def _read_toml(path: Path) -> dict[str, Any]:
    try:
        with path.open("rb") as f:
            return tomllib.load(f)
    except FileNotFoundError:
        raise ConfigError(f"{path}: config file not found") from None
    except (OSError, tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: {exc}") from None


def _relative_to(config: Config, base: Path, keys_from_file: set[str]) -> Config:
    """Relative paths in a config file mean relative to that file, not to the cwd."""
    changes: dict[str, Any] = {}
    for key in ("root", "presets_dir"):
        value = getattr(config, key)
        if key in keys_from_file and value is not None and not value.is_absolute():
            changes[key] = base / value
    if "style_dirs" in keys_from_file:
        changes["style_dirs"] = [d if d.is_absolute() else base / d for d in config.style_dirs]
    return config.model_copy(update=changes) if changes else config


def _message(exc: ValidationError, path: Path | None, env: Mapping[str, Any], cli: Mapping[str, Any]) -> str:
    parts = []
    for err in exc.errors():
        key = ".".join(str(p) for p in err["loc"])
        top = str(err["loc"][0]) if err["loc"] else ""
        if top in cli:
            source = f"--{top.replace('_', '-')}"
        elif top in env:
            source = next(var for var, k in ENV_KEYS.items() if k == top)
        else:
            source = str(path) if path else "config"
        if err["type"] == "extra_forbidden":
            parts.append(f"{source}: unknown key {key!r} (known: {', '.join(Config.model_fields)})")
        else:
            parts.append(f"{source}: {key}: {err['msg']}")
    return "; ".join(parts)
