"""What one optimisation step reports. Torch-free, so the console, the journal and the
hot folder can name it without loading torch."""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["StepInfo"]


@dataclass(frozen=True)
class StepInfo:
    """One row of the loss log: the weighted losses before the step's update."""

    step: int
    steps: int
    style_loss: float
    content_loss: float
    tv_loss: float
    total_loss: float
    elapsed_s: float
