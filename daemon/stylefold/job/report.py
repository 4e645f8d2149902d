"""The report of SPEC §5 (``outbox/logs/NAME-STYLE.json``): what was run, on what, how."""

from __future__ import annotations

import datetime as dt
import platform
from dataclasses import asdict
from typing import Any

from .. import __version__
from ..engine.features import WeightsInfo
from ..media.imageio import LoadedImage
from .spec import JobSpec

__all__ = ["build_report", "utc_now", "versions"]


def build_report(spec: JobSpec, loaded: LoadedImage, rows: list[dict[str, float]], *, stopped: bool,
                 device: str, precision: str, weights: WeightsInfo, started_at: str,
                 seconds_total: float, seconds_engine: float, early_stops: list[dict[str, Any]] | None = None,
                 preview: str | None = None, multi_scale: bool = False) -> dict[str, Any]:
    """``early_stops``: where the optimisation converged before its steps (one entry for a
    single-scale job, one per scale and tile that did for a coarse-to-fine one)."""
    early_stops = early_stops or []
    last = early_stops[-1] if early_stops else None
    total_weight = sum(s.weight for s in spec.styles)
    return {
        "status": "stopped" if stopped else "done",
        "job_id": spec.job_id,
        "input": {
            "name": spec.input.name, "path": spec.input.path, "sha256": spec.input.sha256,
            "mode": loaded.source_mode, "size": list(loaded.source_size),
            "icc_profile": loaded.icc_description, "alpha_dropped": loaded.alpha_dropped,
        },
        "styles": [{"path": s.path, "weight": s.weight, "normalised_weight": s.weight / total_weight,
                    "sha256": s.sha256} for s in spec.styles],
        "preset": {"source": spec.preset_source, "effective": spec.preset.effective()},
        "device": device, "precision": precision,
        "steps_run": len(rows),
        "stopped_early": bool(early_stops),
        "stopped_early_at": last["step"] if last else None,
        "stop_reason": last["reason"] if last else None,
        **({"early_stops": early_stops} if multi_scale else {}),
        "preview": preview,
        "final_losses": {k: v for k, v in rows[-1].items() if k.endswith("loss")} if rows else None,
        "seconds": {"total": round(seconds_total, 3), "engine": round(seconds_engine, 3)},
        "started_at": started_at,
        "weights": asdict(weights),
        "versions": versions(),
    }


def utc_now() -> str:
    return dt.datetime.now(dt.UTC).isoformat(timespec="seconds")


def versions() -> dict[str, str]:
    import PIL
    import torch
    import torchvision

    return {
        "stylefold": __version__, "torch": torch.__version__, "torchvision": torchvision.__version__,
        "pillow": PIL.__version__, "python": platform.python_version(),
    }
