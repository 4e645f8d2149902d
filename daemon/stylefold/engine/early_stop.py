"""Early stopping (preset ``early_stop``, issue 11): when a run has converged.

No Gatys implementation we know stops by itself (neural-style switches L-BFGS's
tolerances off and runs a fixed count); this one stops on a plateau of the total loss,
tuned on measured trajectories (tests/benchmarks/tune_early_stop.py). Pure functions.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

__all__ = ["EarlyStop", "converged", "push_total"]


@dataclass(frozen=True)
class EarlyStop:
    """Stop once the total loss has plateaued: improved by less than ``tolerance``
    (relative) over the last ``patience`` steps (``converged`` says exactly how), or once
    an L-BFGS step leaves the image as it was."""

    tolerance: float
    patience: int


# An L-BFGS step that moves no pixel by more than this has nothing left to do: it is
# far below what an 8- or 16-bit result can show.
_UNCHANGED = 1e-6


def push_total(totals: Sequence[float], total: float, patience: int) -> list[float]:
    """The early-stop window after a step's ``total``: the best total up to ``patience``
    steps ago, then the totals of the last ``patience`` steps (newest last)."""
    window = [*totals, total]
    if len(window) > patience + 1:
        window = [min(window[0], window[1]), *window[2:]]
    return window


def converged(totals: Sequence[float], rule: EarlyStop, before: torch.Tensor | None = None,
              after: torch.Tensor | None = None) -> str | None:
    """Why the optimisation can stop, or None. ``totals``: the window ``push_total``
    keeps. It stops when the best total loss of the last ``patience`` steps is less than
    ``tolerance`` (relative) below the best before them, and the latest step is within
    ``tolerance`` of the best: a plateau; or when the last ``patience`` losses all lie
    within ``tolerance`` of each other (stuck). The best, not one step's loss: L-BFGS without a
    line search zigzags and spikes; and never in a spike or a climb, since the result is
    the latest image (measured: tests/benchmarks/tune_early_stop.py). Nothing stops
    before ``patience`` steps have run (L-BFGS's first step is tiny by design).
    ``before``/``after``: the image around the step (L-BFGS)."""
    if len(totals) <= rule.patience:
        return None
    if before is not None and after is not None:
        moved = float((after.detach() - before).abs().max())
        if moved < _UNCHANGED:
            return f"the L-BFGS step no longer changes the image (largest change {moved:.1e})"
    best_before, recent = totals[0], totals[1:]
    if min(recent) <= 0:
        return None
    spread = (max(recent) - min(recent)) / min(recent)
    if spread < rule.tolerance:  # flat, wherever it sits (a run stuck above its best too)
        return (f"the total loss changed by less than {100 * rule.tolerance:.3g}% over the last "
                f"{rule.patience} steps")
    best = min(best_before, *recent)
    if (totals[-1] - best) / best >= rule.tolerance:
        return None  # not on the plateau: a spike, or climbing
    improved = (best_before - min(recent)) / best_before
    if improved < rule.tolerance:
        return (f"the best total loss improved by {100 * max(improved, 0.0):.3g}% over the last {rule.patience} "
                f"steps (tolerance {100 * rule.tolerance:.3g}%)")
    return None
