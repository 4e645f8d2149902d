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

__all__ = ["CONFIG_NAME", "ClusterConfig", "Config", "ConfigError", "WebConfig", "load_config"]

CONFIG_NAME = "stylefold.toml"
ENV_KEYS = {
    "STYLEFOLD_ROOT": "root",
    "STYLEFOLD_DEVICE": "device",
    "STYLEFOLD_WEIGHTS": "weights",
}
# The [web] table's keys that the environment can set (SPEC §7).
WEB_ENV_KEYS = {
    "STYLEFOLD_WEB": "listen",
    "STYLEFOLD_WEB_TOKEN": "token",
}
# The [cluster] table's keys that the environment can set (SPEC §8).
CLUSTER_ENV_KEYS = {
    "STYLEFOLD_BROKER": "broker",
}


class ConfigError(ValueError):
    """A configuration that cannot be used; ``str()`` names the source and key."""


class WebConfig(BaseModel):
    """``[web]``: the status page and HTTP API (SPEC §7)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    # HOST:PORT, or "off". Loopback unless a token is set: the API can submit jobs.
    listen: Annotated[str, Field(min_length=1, max_length=300)] = "127.0.0.1:8707"
    # Required for any listen address other than loopback; 16+ characters (a guessable
    # token on a network is no lock).
    token: Annotated[str, Field(min_length=16, max_length=512)] | None = None
    # Host names (or addresses) the page is reached by besides the listen address,
    # localhost, 127.0.0.1 and [::1]; any other Host header is refused (DNS rebinding).
    names: list[Annotated[str, Field(min_length=1, max_length=253)]] = []
    max_upload_mb: Annotated[int, Field(ge=1, le=100_000)] = 200


class ClusterConfig(BaseModel):
    """``[cluster]``: GPU workers on other machines through a Redis broker (SPEC §8)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    # redis://[:PASSWORD@]HOST:PORT/DB; None: jobs run in this process (the default).
    broker: Annotated[str, Field(min_length=1, max_length=2048, pattern=r"^rediss?://")] | None = None
    # Jobs the daemon keeps in flight at once (claimed and queued or running on a worker):
    # the number of workers plus one keeps every worker busy.
    slots: Annotated[int, Field(ge=1, le=256)] = 4
    # A worker renews its lease on a running job every lease_s / 4; a lease unrenewed for
    # lease_s means the worker is gone, and the job goes to another one.
    lease_s: Annotated[float, Field(ge=1, le=3600)] = 20.0
    # Celery's redelivery of an unacknowledged message (kombu's visibility timeout); the
    # lease, not this, keeps a long job from running twice.
    visibility_timeout_s: Annotated[float, Field(ge=1, le=30 * 86_400)] = 3600.0
    # Largest file (photo, style, result, checkpoint) that travels through the broker.
    max_transfer_mb: Annotated[int, Field(ge=1, le=500)] = 200


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
    web: WebConfig = WebConfig()
    cluster: ClusterConfig = ClusterConfig()


def load_config(
    config_file: Path | None = None,
    overrides: Mapping[str, Any] | None = None,
    environ: Mapping[str, str] | None = None,
) -> Config:
    """Build the effective config. ``config_file`` defaults to ``STYLEFOLD_CONFIG``, then
    ``<root>/stylefold.toml`` if it exists, then (no root given) ``./stylefold.toml``,
    whose folder is then the root unless it names one. ``overrides`` are command-line
    values (None = not given)."""
    env = os.environ if environ is None else environ
    cli = {k: v for k, v in (overrides or {}).items() if v is not None}
    from_env = {key: env[var] for var, key in ENV_KEYS.items() if env.get(var)}
    path = config_file or (Path(env["STYLEFOLD_CONFIG"]) if env.get("STYLEFOLD_CONFIG") else None)
    in_cwd = False
    if path is None:
        given = cli.get("root") or from_env.get("root")
        candidate = Path(given or Config().root) / CONFIG_NAME
        # No root given and no ./hotfolders/stylefold.toml: the current folder's, as in
        # `stylefold init DIR && cd DIR && stylefold serve`; that folder is then the root.
        in_cwd = given is None and not candidate.is_file() and Path(CONFIG_NAME).is_file()
        path = candidate if candidate.is_file() else Path(CONFIG_NAME) if in_cwd else None
    from_file = _read_toml(path) if path is not None else {}
    if in_cwd:
        from_file.setdefault("root", ".")
    merged = {**from_file, **from_env, **cli}
    web_env = {key: env[var] for var, key in WEB_ENV_KEYS.items() if env.get(var)}
    if web_env:
        web_file = from_file.get("web")
        merged["web"] = {**(web_file if isinstance(web_file, dict) else {}), **web_env}
        from_env = {**from_env, **{f"web.{k}": v for k, v in web_env.items()}}
    cluster_env = {key: env[var] for var, key in CLUSTER_ENV_KEYS.items() if env.get(var)}
    if cluster_env:
        cluster_file = from_file.get("cluster")
        merged["cluster"] = {**(cluster_file if isinstance(cluster_file, dict) else {}), **cluster_env}
        from_env = {**from_env, **{f"cluster.{k}": v for k, v in cluster_env.items()}}
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
        web_var = next((var for var, k in WEB_ENV_KEYS.items() if f"web.{k}" == key and key in env), None)
        web_var = web_var or next((var for var, k in CLUSTER_ENV_KEYS.items()
                                   if f"cluster.{k}" == key and key in env), None)
        if web_var is not None:
            source = web_var
        elif top in cli:
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
