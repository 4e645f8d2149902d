"""Winograd F(4x4, 3x3) for VGG19's frozen 3x3 convolutions, on the CPU in fp32.

A 3x3 convolution computes each 4x4 block of its output from a 6x6 window of its input
with 36 multiplications per channel pair instead of 144 (Lavin & Gray 2015, "Fast
Algorithms for Convolutional Neural Networks"): the window is transformed (``B^T d B``),
multiplied elementwise by the transformed kernel (``G g G^T``, made once per layer) and
transformed back (``A^T m A``). Summed over input channels, the elementwise products are
36 matrix products, one batched GEMM. The transforms are passes over memory, so the
method pays where channels are many: from 128 channels in or out (``conv2_1`` on), and
not at ``conv1_2``'s 64 (``tests/benchmarks/bench_winograd.py`` measures each layer).
PyTorch runs CPU convolutions with oneDNN's direct kernels, while cuDNN picks Winograd
itself; so this path is taken only on the CPU, in fp32, outside autocast.

The backward is the exact adjoint of the forward's arithmetic, reusing its transformed
kernel (``U`` transposed per product), so the gradient is that of the function computed.
Results differ from a direct convolution by fp32 rounding, about 1e-5 relative.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["MIN_CHANNELS", "Winograd3x3"]

M, T = 4, 6  # output block and input window sides
MIN_CHANNELS = 128  # measured, forward and input gradient: 1.1-1.3x at 128 channels, 0.8x at 64

_BT = torch.tensor([[4, 0, -5, 0, 1, 0], [0, -4, -4, 1, 1, 0], [0, 4, -4, -1, 1, 0],
                    [0, -2, -1, 2, 1, 0], [0, 2, -1, -2, 1, 0], [0, 4, 0, -5, 0, 1]], dtype=torch.float64)
_G = torch.tensor([[1 / 4, 0, 0], [-1 / 6, -1 / 6, -1 / 6], [-1 / 6, 1 / 6, -1 / 6],
                   [1 / 24, 1 / 12, 1 / 6], [1 / 24, -1 / 12, 1 / 6], [0, 0, 1]], dtype=torch.float64)
_AT = torch.tensor([[1, 1, 1, 1, 1, 0], [0, 1, -1, 2, -2, 0], [0, 1, 1, 4, 4, 0],
                    [0, 1, -1, 8, -8, 1]], dtype=torch.float64)
# fp32 copies for the transforms (this path runs in fp32 only), made once.
_BT32, _AT32 = _BT.float(), _AT.float()
_A32 = _AT32.t().contiguous()
# B^T's nonzero terms per row, for the pass along the width done by strided slices.
_BT_TERMS = [[(j, float(v)) for j, v in enumerate(row) if v] for row in _BT.tolist()]


class Winograd3x3(nn.Module):
    """A frozen ``nn.Conv2d(c, k, 3, padding=1)`` that runs as Winograd F(4x4, 3x3) where
    that pays (CPU, fp32, no autocast, at least ``MIN_CHANNELS`` in or out) and as
    itself everywhere else."""

    def __init__(self, conv: nn.Conv2d, *, min_channels: int = MIN_CHANNELS) -> None:
        super().__init__()
        if (conv.kernel_size, conv.stride, conv.padding, conv.dilation, conv.groups) != ((3, 3), (1, 1), (1, 1),
                                                                                         (1, 1), 1):
            raise ValueError(f"Winograd3x3 needs a plain 3x3 convolution with padding 1, got {conv}")
        self.conv = conv
        self.enabled = True
        self.min_channels = min_channels
        self._u: torch.Tensor | None = None
        self._u_of: tuple[int, int] | None = None

    @property
    def weight(self) -> torch.Tensor:
        return self.conv.weight

    @property
    def bias(self) -> torch.Tensor | None:
        return self.conv.bias

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.pays(x):
            direct: torch.Tensor = self.conv(x)
            return direct
        out: torch.Tensor = _WinogradFn.apply(x, self._transformed_kernel(), self.conv.bias)
        return out

    def pays(self, x: torch.Tensor) -> bool:
        return (self.enabled and x.device.type == "cpu" and x.dtype == torch.float32 and x.dim() == 4
                and not torch.is_autocast_enabled("cpu") and not self.conv.weight.requires_grad
                and max(self.conv.in_channels, self.conv.out_channels) >= self.min_channels)

    def _transformed_kernel(self) -> torch.Tensor:
        """``U``, (36, C, K): made once, in float64, and again only if the weights change."""
        w = self.conv.weight
        key = (w.data_ptr(), w._version)
        if self._u is None or self._u_of != key:
            u = torch.einsum("ai,kcij,bj->abck", _G, w.detach().double(), _G)
            self._u = u.reshape(T * T, w.shape[1], w.shape[0]).float().contiguous()
            self._u_of = key
        return self._u


class _WinogradFn(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, u: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        ctx.save_for_backward(u)
        ctx.size = x.shape[-2:]
        return _to_nchw(_forward(_nhwc(x), u), bias)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, None, None]:
        (u,) = ctx.saved_tensors
        return _to_nchw(_backward(_nhwc(grad), u, *ctx.size), None), None, None


def _nhwc(x: torch.Tensor) -> torch.Tensor:
    return x.contiguous(memory_format=torch.channels_last).permute(0, 2, 3, 1)


def _to_nchw(y: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """A channels-last NCHW tensor of the NHWC ``y``, plus ``bias``: one pass for both."""
    n, h, w, k = y.shape
    out = torch.empty(n, k, h, w, dtype=y.dtype, device=y.device, memory_format=torch.channels_last)
    if bias is None:
        out.permute(0, 2, 3, 1).copy_(y)
    else:
        torch.add(y, bias, out=out.permute(0, 2, 3, 1))
    return out


def _width_windows(src: torch.Tensor, j: int, tiles: int) -> torch.Tensor:
    """Column ``j`` of each of ``tiles`` windows (stride M) along dim 3 of ``src``."""
    return src.narrow(3, j, (tiles - 1) * M + 1)[:, :, :, ::M]


def _forward(x: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    """NHWC (n, h, w, c) -> (n, h, w, k), padding 1."""
    n, h, w, c = x.shape
    th, tw, k = -(-h // M), -(-w // M), u.shape[-1]
    bt, at = _BT32, _AT32
    # Pad to whole blocks of M plus one, so window i is block i and 2 rows of block i+1.
    xp = F.pad(x, (0, 0, 1, (tw + 1) * M - w - 1, 1, (th + 1) * M - h - 1))
    wp = xp.shape[2]
    blocks = xp.view(n, th + 1, M, wp * c)
    rows = torch.matmul(bt[:, :M], blocks[:, :th]).add_(torch.matmul(bt[:, M:], blocks[:, 1:, :2]))
    rows_a = rows.view(n, th, T, wp, c).permute(2, 0, 1, 3, 4)  # (a, n, th, wp, c)
    v = x.new_empty(T, T, n, th, tw, c)
    for b, terms in enumerate(_BT_TERMS):
        (j0, c0), *rest = terms
        torch.mul(_width_windows(rows_a, j0, tw), c0, out=v[:, b])
        for j, coef in rest:
            v[:, b].add_(_width_windows(rows_a, j, tw), alpha=coef)
    del xp, blocks, rows, rows_a  # each transient is dropped once used: they are the peak
    prods = torch.bmm(v.view(T * T, n * th * tw, c), u)  # (ab, tiles, k)
    del v
    s = torch.matmul(at, prods.view(T, -1)).view(M, T, -1)  # (u, b, tiles * k)
    del prods
    y = torch.matmul(at, s).view(M, M, n, th, tw, k)  # (u, v, n, th, tw, k)
    return y.permute(2, 3, 0, 4, 1, 5).reshape(n, th * M, tw * M, k)[:, :h, :w]


def _backward(grad: torch.Tensor, u: torch.Tensor, h: int, w: int) -> torch.Tensor:
    """The adjoint of ``_forward``: NHWC (n, h, w, k) -> (n, h, w, c)."""
    n, k, c = grad.shape[0], grad.shape[-1], u.shape[1]
    th, tw = -(-h // M), -(-w // M)
    wp = (tw + 1) * M
    bt, a = _BT32, _A32
    gy = grad.new_zeros(n, th, M, tw, M, k)
    gy.view(n, th * M, tw * M, k)[:, :h, :w] = grad
    gy = gy.permute(2, 4, 0, 1, 3, 5).reshape(M, M, -1)  # (u, v, n * th * tw * k)
    gs = torch.matmul(a, gy)  # (u, b, ...)
    del gy
    gprods = torch.matmul(a, gs.view(M, -1)).view(T * T, n * th * tw, k)  # (ab, tiles, k)
    del gs
    gv = torch.bmm(gprods, u.transpose(1, 2)).view(T, T, n, th, tw, c)
    del gprods
    grows = grad.new_zeros(n, th, T, wp * c)
    grows_a = grows.view(n, th, T, wp, c).permute(2, 0, 1, 3, 4)
    for b, terms in enumerate(_BT_TERMS):
        for j, coef in terms:
            _width_windows(grows_a, j, tw).add_(gv[:, b], alpha=coef)
    del gv, grows_a
    gblocks = grad.new_zeros(n, th + 1, M, wp * c)
    gblocks[:, :th] = torch.matmul(bt[:, :M].t(), grows)
    gblocks[:, 1:, :2] += torch.matmul(bt[:, M:].t(), grows)
    return gblocks.view(n, (th + 1) * M, wp, c)[:, 1:h + 1, 1:w + 1]
