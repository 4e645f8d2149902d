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

__all__ = ["content_loss", "gram_loss", "gram_matrix", "relu_and_gram", "style_loss", "tv_loss"]


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


def relu_and_gram(features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(F.relu(features), gram_matrix(features))`` of an fp32 conv output, with one
    backward for both: the ReLU's gradient first, then the Gram's added into it by the
    same matmul (``addmm_``). Autograd would write the Gram's gradient, a tensor the
    size of the activation, and then add the two: at the first convolutions of a large
    image those are the step's largest memory passes."""
    b, c, h, w = features.shape
    pair: tuple[torch.Tensor, torch.Tensor] = _ReluGram.apply(features, float(b * c * h * w))
    return pair


class _ReluGram(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, features: torch.Tensor, norm: float) -> tuple[torch.Tensor, torch.Tensor]:
        ctx.save_for_backward(features)
        ctx.norm = norm
        b, c, h, w = features.shape
        flat = features.reshape(b * c, h * w)
        return F.relu(features), (flat @ flat.t()).div_(norm)

    @staticmethod
    def backward(ctx: Any, grad_relu: torch.Tensor | None, grad_gram: torch.Tensor | None) -> tuple[Any, None]:
        (features,) = ctx.saved_tensors
        b, c, h, w = features.shape
        grad = (torch.ops.aten.threshold_backward(grad_relu, features, 0.0) if grad_relu is not None
                else torch.zeros_like(features))
        if grad_gram is not None:
            sym = (grad_gram + grad_gram.t()).div_(ctx.norm)
            flat = features.reshape(b * c, h * w)
            if b == 1 and flat.stride(0) == 1 and grad.is_contiguous(memory_format=torch.channels_last):
                # Channels last: both are (H*W, C) matrices in memory; accumulate in place.
                grad.permute(0, 2, 3, 1).reshape(h * w, b * c).addmm_(flat.t(), sym)
            else:
                grad = grad + (sym @ flat).reshape(features.shape)
        return grad, None


def content_loss(features: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean squared error between activations (the chapter's ``mse_loss(ip, target)``)."""
    if features.shape != target.shape:
        raise ValueError(f"content features {tuple(features.shape)} and target {tuple(target.shape)} differ")
    if target.requires_grad:  # the backward gives the target no gradient
        raise ValueError("a content target is a constant: detach it")
    loss: torch.Tensor = _MeanSquaredError.apply(features.float(), target)
    return loss


class _MeanSquaredError(torch.autograd.Function):
    """``F.mse_loss`` with a one-pass backward, ``2 (x - t) / n``. On the CPU, aten's
    backward of a channels-last activation took 107 ms at ``conv2_2`` of a 512-px image,
    against 6 ms for this one: a tenth of a ``book`` step. The forward sums like aten's."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(x, target)
        return torch.sub(x, target).square_().mean()

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, None]:
        x, target = ctx.saved_tensors
        return torch.sub(x, target).mul_(grad * (2.0 / x.numel())), None


def style_loss(features: torch.Tensor, target_gram: torch.Tensor) -> torch.Tensor:
    """Mean squared error between Gram matrices."""
    return gram_loss(gram_matrix(features), target_gram)


def gram_loss(gram: torch.Tensor, target_gram: torch.Tensor) -> torch.Tensor:
    """``style_loss`` of a Gram matrix already made (``relu_and_gram``)."""
    return F.mse_loss(gram, target_gram)


def tv_loss(image: torch.Tensor) -> torch.Tensor:
    """Total variation: mean squared difference of vertical and horizontal neighbours.

    Not in the chapter (its ``tv_weight`` is 0); the squared form of Mahendran & Vedaldi
    2015 keeps the gradient smooth, which is what suppresses high-frequency noise.
    """
    x = image.float()
    dy = x[..., 1:, :] - x[..., :-1, :]
    dx = x[..., :, 1:] - x[..., :, :-1]
    return dy.pow(2).mean() + dx.pow(2).mean()
