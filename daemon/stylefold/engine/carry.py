"""Carrying the optimiser's state from one scale of a coarse-to-fine run to the next
(issue 11, item 4), instead of starting each scale's optimiser afresh.

The state lives in image space: Adam's moments are image-shaped, L-BFGS's history
pairs (s = step, y = change of gradient) are flattened images. Each is resized like the
image and cropped to the tile. The losses are means over pixels, so at r times the
pixels a pixel's gradient is about 1/r as large: gradients (Adam's first moment, y,
the last gradient) are divided by r, Adam's second moment by r squared, and L-BFGS's
1/(y.s) and its initial Hessian scale are recomputed from the resized pairs.
Pure functions on state dicts; no I/O.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

__all__ = ["carry_optimizer_state"]

Crop = tuple[int, int, int, int]  # top, left, height, width in the new scale


def carry_optimizer_state(state: dict[str, Any], optimizer: str, old: tuple[int, int], new: tuple[int, int],
                          crop: Crop) -> dict[str, Any] | None:
    """``state`` (an optimiser's ``state_dict`` at scale ``old``, whole image) for the
    tile ``crop`` of scale ``new``; None where there is nothing to carry."""
    per_param = state.get("state", {}).get(0)
    if not per_param:
        return None
    ratio = (new[0] * new[1]) / (old[0] * old[1])

    def image(flat_or_image: torch.Tensor, scale: float) -> torch.Tensor:
        x = flat_or_image.reshape(1, 3, *old)
        x = F.interpolate(x, size=new, mode="bilinear", align_corners=False) * scale
        top, left, h, w = crop
        return x[:, :, top:top + h, left:left + w].contiguous()

    carried: dict[str, Any] = dict(per_param)
    if optimizer == "adam":
        carried["exp_avg"] = image(per_param["exp_avg"], 1 / ratio)
        carried["exp_avg_sq"] = image(per_param["exp_avg_sq"], 1 / ratio**2)
    else:
        dirs = [image(y, 1 / ratio).flatten() for y in per_param["old_dirs"]]
        stps = [image(s, 1.0).flatten() for s in per_param["old_stps"]]
        pairs = [(y, s) for y, s in zip(dirs, stps, strict=True) if float(y.dot(s)) > 1e-10]
        if not pairs:
            return None
        carried["old_dirs"], carried["old_stps"] = [y for y, _ in pairs], [s for _, s in pairs]
        carried["ro"] = [1.0 / y.dot(s) for y, s in pairs]
        y, s = pairs[-1]
        carried["H_diag"] = s.dot(y) / y.dot(y)
        carried["d"] = image(per_param["d"], 1.0).flatten()
        carried["prev_flat_grad"] = image(per_param["prev_flat_grad"], 1 / ratio).flatten()
        carried["al"] = [None] * len(per_param.get("al", []))
    return {"state": {0: carried}, "param_groups": state["param_groups"]}
