"""Loss functions of the chapter, as pure functions on tensors.

The chapter (and Gatys et al. 2015) compares conv activations directly for content and
their Gram matrices for style. Every function here computes in fp32 even when the
activations come from a bf16/fp16 forward pass: Gram sums over H*W products and would
lose most of its precision in a 8-bit mantissa.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

__all__ = ["content_loss", "gram_matrix", "style_loss", "tv_loss"]


def gram_matrix(features: torch.Tensor) -> torch.Tensor:
    """The chapter's ``gram_matrix``: (B*C, H*W) @ its transpose, divided by B*C*H*W."""
    b, c, h, w = features.shape
    flat = features.reshape(b * c, h * w).float()
    gram: torch.Tensor = _Gram.apply(flat, float(b * c * h * w))
    return gram


class _Gram(torch.autograd.Function):
    """G = F F^T / n with a one-matmul backward.

    Autograd's backward for ``flat @ flat.t()`` runs two (C x C) @ (C x N) products,
    one per operand; since both operands are F, dF = (dG + dG^T) F / n needs only one.
    The Gram products are a fifth of a `book` step's work, so this saves ~10%.
    """

    @staticmethod
    def forward(ctx: Any, flat: torch.Tensor, norm: float) -> torch.Tensor:
        ctx.save_for_backward(flat)
        ctx.norm = norm
        return (flat @ flat.t()).div_(norm)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, None]:
        (flat,) = ctx.saved_tensors
        sym = grad + grad.t()
        if flat.stride(0) == 1:
            # Channels-last features: F is an (N, C) matrix seen transposed. Produce the
            # gradient in that same layout, or adding it to the conv's channels-last
            # gradient becomes a slow strided add.
            return (flat.t() @ sym).t().div_(ctx.norm), None
        return (sym @ flat).div_(ctx.norm), None


def content_loss(features: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean squared error between activations (the chapter's ``mse_loss(ip, target)``)."""
    return F.mse_loss(features.float(), target)


def style_loss(features: torch.Tensor, target_gram: torch.Tensor) -> torch.Tensor:
    """Mean squared error between Gram matrices."""
    return F.mse_loss(gram_matrix(features), target_gram)


def tv_loss(image: torch.Tensor) -> torch.Tensor:
    """Total variation: mean squared difference of vertical and horizontal neighbours.

    Not in the chapter (its ``tv_weight`` is 0); the squared form of Mahendran & Vedaldi
    2015 keeps the gradient smooth, which is what suppresses high-frequency noise.
    """
    x = image.float()
    dy = x[..., 1:, :] - x[..., :-1, :]
    dx = x[..., :, 1:] - x[..., :, :-1]
    return dy.pow(2).mean() + dx.pow(2).mean()
