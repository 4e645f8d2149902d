"""The preset model's building blocks: the strict base, and the option objects of
``preview`` and ``early_stop`` (SPEC §4) and ``coarse_to_fine`` (README). Pydantic
only, no torch."""

from __future__ import annotations

from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field

__all__ = ["CoarseToFineOptions", "EarlyStopOptions", "PreviewOptions"]


class _Strict(BaseModel):
    # strict: JSON true is not the integer 1, "5" is not a number, "yes" not a boolean.
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)


class PreviewOptions(_Strict):
    """``preview``: a quick low-resolution result first (SPEC §4, §5)."""

    size: Annotated[int, Field(ge=16, le=4096)] = 256
    steps: Annotated[int, Field(ge=1, le=10_000)] = 40


class EarlyStopOptions(_Strict):
    """``early_stop``: stop once the total loss improved by less than ``tolerance``
    (relative) over the last ``patience`` steps (SPEC §4)."""

    tolerance: Annotated[float, Field(gt=0, le=1, allow_inf_nan=False)] = 1e-3
    patience: Annotated[int, Field(ge=1, le=100_000)] = 20


class CoarseToFineOptions(_Strict):
    """``coarse_to_fine``: reach a large result through smaller ones, for speed. The
    coarsest scale has a shorter side of at least ``size`` (below twice that) and runs
    the preset's ``steps``; each finer scale, twice the previous, starts from its result
    upsampled and runs ``steps`` of its own."""

    size: Annotated[int, Field(ge=16, le=4096)] = 256
    steps: Annotated[int, Field(ge=1, le=100_000)] = 60


_OPTION_FORMS = {
    "preview": 'an object such as {"size": 256, "steps": 40}, or false',
    "early_stop": 'an object such as {"tolerance": 0.001, "patience": 20}, or false',
    "coarse_to_fine": 'an object such as {"size": 256, "steps": 60}, or false',
}
