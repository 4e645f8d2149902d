"""The style-transfer engine: pure torch, no I/O, no printing.

Nothing in this package imports pydantic, rich, watchdog or the daemon.
"""

from .features import LAYER_NAMES, TAPPABLE_LAYERS, FeatureExtractor, WeightsError, WeightsInfo, build_extractor
from .losses import content_loss, gram_matrix, style_loss, tv_loss
from .runtime import resolve_device, resolve_precision, tune_cpu_allocator
from .stylize import EngineError, EngineState, StepInfo, StyleParams, StyleResult, StyleTargetCache, stylize

__all__ = [
    "LAYER_NAMES",
    "TAPPABLE_LAYERS",
    "EngineError",
    "EngineState",
    "FeatureExtractor",
    "StepInfo",
    "StyleParams",
    "StyleResult",
    "StyleTargetCache",
    "WeightsError",
    "WeightsInfo",
    "build_extractor",
    "content_loss",
    "gram_matrix",
    "resolve_device",
    "resolve_precision",
    "stylize",
    "style_loss",
    "tune_cpu_allocator",
    "tv_loss",
]
