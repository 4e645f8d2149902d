"""Winograd F(4x4, 3x3) for VGG19's frozen 3x3 convolutions, on the CPU in fp32.

A 3x3 convolution computes each 4x4 block of its output from a 6x6 window of its input
with 36 multiplications per channel pair instead of 144 (Lavin & Gray 2015, "Fast
Algorithms for Convolutional Neural Networks"): the window is transformed (``B^T d B``),
multiplied elementwise by the transformed kernel (``G g G^T``, made once per layer) and
transformed back (``A^T m A``). Summed over input channels, the elementwise products are
36 matrix products, one batched GEMM. Each 2-D transform is one matrix product too, with
the Kronecker product of the 1-D matrices, on the windows gathered into rows.

The image goes through in bands of a few block rows (``BAND_FLOATS``): a band's windows,
products and outputs stay in cache from one matrix product to the next, and the peak
memory is a few band buffers rather than the 2.25x-sized transformed image. The
transforms still cost passes over memory, so the method can pay only where channels are
many: from 128 channels in or out (``conv2_1`` on), never at ``conv1_2``'s 64. PyTorch
runs CPU convolutions with oneDNN's direct kernels, while cuDNN picks Winograd itself; so
this path is taken only on the CPU, in fp32, outside autocast, and there only where it
was measured faster (``conv_methods.py``).

The backward is the exact adjoint of the forward's arithmetic, reusing its transformed
kernel (``U`` transposed per product), so the gradient is that of the function computed.
Results differ from a direct convolution by fp32 rounding, about 1e-5 relative.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import nn

from . import conv_methods
from .conv_methods import Method, linear_onednn, onednn_products

__all__ = ["MIN_CHANNELS", "Winograd3x3"]

M, T = 4, 6  # output block and input window sides
MIN_CHANNELS = 128  # below it Winograd lost everywhere measured (0.5-0.8x at conv1_2's 64)

_BT = torch.tensor([[4, 0, -5, 0, 1, 0], [0, -4, -4, 1, 1, 0], [0, 4, -4, -1, 1, 0],
                    [0, -2, -1, 2, 1, 0], [0, 2, -1, -2, 1, 0], [0, 4, 0, -5, 0, 1]], dtype=torch.float64)
_G = torch.tensor([[1 / 4, 0, 0], [-1 / 6, -1 / 6, -1 / 6], [-1 / 6, 1 / 6, -1 / 6],
                   [1 / 24, 1 / 12, 1 / 6], [1 / 24, -1 / 12, 1 / 6], [0, 0, 1]], dtype=torch.float64)
_AT = torch.tensor([[1, 1, 1, 1, 1, 0], [0, 1, -1, 2, -2, 0], [0, 1, 1, 4, 4, 0],
                    [0, 1, -1, 8, -8, 1]], dtype=torch.float64)
# The 2-D transforms as single matrices on a flattened window (Kronecker products, made
# once in fp32: this path runs in fp32 only): B^T d B is KB @ vec(d), A^T m A is KA @ vec(m).
_KB = torch.kron(_BT, _BT).float()  # (36, 36)
_KA = torch.kron(_AT, _AT).float()  # (16, 36)
_KB_T, _KA_T = _KB.t().contiguous(), _KA.t().contiguous()
# Floats per band buffer: the image is transformed a few rows of 4x4 blocks at a time, so
# that a band's windows, products and outputs stay in cache between the three matrix
# products. About 6 MB: measured fastest at 512 px (bench_winograd); the whole image at
# once was 2-4x slower.
BAND_FLOATS = 1_500_000


class Winograd3x3(nn.Module):
    """A frozen ``nn.Conv2d(c, k, 3, padding=1)`` that runs as Winograd F(4x4, 3x3) where
    it can (CPU, fp32, no autocast, at least ``MIN_CHANNELS`` in or out) and that was
    measured faster there, and as itself everywhere else.

    ``method`` is ``"auto"`` (measure, the default) or one of ``METHODS`` to force it
    where it can run (A/B benchmarks); ``last_method`` is what the last call ran.
    """

    def __init__(self, conv: nn.Conv2d, *, min_channels: int = MIN_CHANNELS) -> None:
        super().__init__()
        if (conv.kernel_size, conv.stride, conv.padding, conv.dilation, conv.groups) != ((3, 3), (1, 1), (1, 1),
                                                                                         (1, 1), 1):
            raise ValueError(f"Winograd3x3 needs a plain 3x3 convolution with padding 1, got {conv}")
        self.conv = conv
        self.method: Method | Literal["auto"] = "auto"
        self.last_method: Method | None = None
        self.min_channels = min_channels
        self._kernels: dict[bool, torch.Tensor] = {}
        self._kernels_of: tuple[int, int] | None = None

    @property
    def weight(self) -> torch.Tensor:
        return self.conv.weight

    @property
    def bias(self) -> torch.Tensor | None:
        return self.conv.bias

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        method = self.method_for(x)
        self.last_method = method
        if method == "direct":
            direct: torch.Tensor = self.conv(x)
            return direct
        onednn = method == "winograd-onednn"
        out: torch.Tensor = _WinogradFn.apply(x, self._kernel(onednn), self._kernel(onednn, backward=True),
                                              self.conv.bias, onednn)
        return out

    def can_run(self, x: torch.Tensor) -> bool:
        """Whether Winograd can compute this call: CPU, fp32, outside autocast, a frozen
        conv (its backward gives the input a gradient, the weight and bias none) and
        enough channels."""
        return (x.device.type == "cpu" and x.dtype == torch.float32 and x.dim() == 4
                and not torch.is_autocast_enabled("cpu") and not self._trainable()
                and max(self.conv.in_channels, self.conv.out_channels) >= self.min_channels)

    def method_for(self, x: torch.Tensor) -> Method:
        """What this call runs: direct where Winograd cannot run; else the forced method,
        or the one measured fastest for this shape in this process (measured now if new)."""
        if self.method == "direct" or not self.can_run(x):
            return "direct"
        if self.method != "auto":
            return "winograd" if self.method == "winograd-onednn" and not onednn_products() else self.method
        key = conv_methods.shape_key(x, self.conv.out_channels)
        method = conv_methods.chosen(key)
        if method is None:
            label = f"conv {self.conv.in_channels}->{self.conv.out_channels} at {'x'.join(map(str, x.shape[-2:]))}"
            method = conv_methods.choose(key, self._runners(x), label)
            # Keep only the transformed kernels the chosen method takes (it made all to measure).
            if method == "direct":
                self._kernels.clear()
            elif method == "winograd":
                self._kernels.pop(True, None)
        return method

    def pays(self, x: torch.Tensor) -> bool:
        return self.method_for(x) != "direct"

    def _trainable(self) -> bool:
        return any(p.requires_grad for p in self.conv.parameters())

    def _runners(self, x: torch.Tensor) -> dict[Method, Callable[[], object]]:
        """A forward and input gradient of ``x`` by each method that can run here; the
        output itself stands in for the gradient (no random numbers drawn)."""
        w, b = self.conv.weight.detach(), None if self.conv.bias is None else self.conv.bias.detach()
        h, wd = x.shape[-2:]
        x = x.detach()

        def direct() -> object:
            y = F.conv2d(x, w, b, padding=1)
            return torch.ops.aten.convolution_backward(y, x, w, None, [1, 1], [1, 1], [1, 1], False, [0, 0], 1,
                                                       [True, False, False])

        def winograd(onednn: bool) -> Callable[[], object]:
            fwd, bwd = self._kernel(onednn), self._kernel(onednn, backward=True)
            return lambda: _backward(_nhwc(_forward(_nhwc(x), fwd, b, onednn)), bwd, h, wd, onednn)

        runners: dict[Method, Callable[[], object]] = {"direct": direct, "winograd": winograd(False)}
        if onednn_products():
            runners["winograd-onednn"] = winograd(True)
        return runners

    def _kernel(self, onednn: bool, *, backward: bool = False) -> torch.Tensor:
        """The transformed kernel as the products take it. ``U`` (36, C, K), made once in
        float64 (and again only if the weights change), is the forward's right-hand side;
        the backward multiplies by its transpose. oneDNN's matmul takes its right-hand
        side transposed: ``U`` transposed, contiguous, forward, and ``U`` backward."""
        w = self.conv.weight
        key = (w.data_ptr(), w._version)
        if self._kernels_of != key:
            self._kernels.clear()
            self._kernels_of = key
        if False not in self._kernels:
            u = torch.einsum("ai,kcij,bj->abck", _G, w.detach().double(), _G)
            self._kernels[False] = u.reshape(T * T, w.shape[1], w.shape[0]).float().contiguous()
        u = self._kernels[False]
        if onednn == backward:
            return u  # MKL's forward, oneDNN's backward
        if not onednn:
            return u.transpose(1, 2)  # MKL's backward: a view
        if True not in self._kernels:
            self._kernels[True] = u.transpose(1, 2).contiguous()
        return self._kernels[True]


def _products(a: torch.Tensor, b: torch.Tensor, out: torch.Tensor, onednn: bool) -> torch.Tensor:
    """``out[i] = a[i] @ b[i]`` for the 36 window positions: ``b`` is (36, c, k) for one
    MKL ``bmm``, or transposed, (36, k, c) contiguous, for oneDNN's matmul one by one."""
    if not onednn:
        return torch.bmm(a, b, out=out)
    for i in range(a.shape[0]):
        out[i].copy_(linear_onednn(a[i], b[i]))
    return out


class _WinogradFn(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, fwd: torch.Tensor, bwd: torch.Tensor, bias: torch.Tensor | None,
                onednn: bool) -> torch.Tensor:
        ctx.save_for_backward(bwd)
        ctx.size = x.shape[-2:]
        ctx.onednn = onednn
        return _forward(_nhwc(x), fwd, bias, onednn)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, None, None, None, None]:
        (bwd,) = ctx.saved_tensors
        h, w = ctx.size
        return _backward(_nhwc(grad), bwd, h, w, ctx.onednn), None, None, None, None


def _nhwc(x: torch.Tensor) -> torch.Tensor:
    return x.contiguous(memory_format=torch.channels_last).permute(0, 2, 3, 1)


def _to_nchw(y: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """A channels-last NCHW tensor of the NHWC ``y``, plus ``bias``: one pass for both."""
    n, h, w, k = y.shape
    out = torch.empty(n, k, h, w, dtype=y.dtype, device=y.device, memory_format=torch.channels_last)
    _put(out.permute(0, 2, 3, 1), y, bias)
    return out


def _put(dst: torch.Tensor, src: torch.Tensor, bias: torch.Tensor | None) -> None:
    if bias is None:
        dst.copy_(src)
    else:
        torch.add(src, bias, out=dst)


def _band(n: int, tw: int, channels: int) -> int:
    """Rows of 4x4 blocks per band: about ``BAND_FLOATS`` in each band buffer."""
    return max(1, round(BAND_FLOATS / (T * T * n * tw * channels)))


def _split(t: torch.Tensor, dim: int, blocks: int) -> torch.Tensor:
    """View dim ``dim`` of ``t`` as (``blocks``, 4)."""
    return t.view(*t.shape[:dim], blocks, M, *t.shape[dim + 1:])


def _block_pieces(img: torch.Tensor, i0: int, nb: int) -> list[tuple[torch.Tensor, tuple[Any, ...]]]:
    """The rows of NHWC ``img`` covered by block rows ``i0 .. i0 + nb``, as views paired
    with the index of the same pixels in a (4, 4, n, nb, tw, k) block tensor: the whole
    blocks, then the ragged right column, bottom row and corner where the image is not
    whole blocks (the ragged blocks' other pixels are not in the image)."""
    h, w = img.shape[1:3]
    r0 = i0 * M
    rows = min(nb * M, h - r0)
    fr, rr, fc, rc = rows // M, rows % M, w // M, w % M
    pieces: list[tuple[torch.Tensor, tuple[Any, ...]]] = []
    if fr and fc:
        full = _split(_split(img[:, r0:r0 + fr * M, :fc * M], 1, fr), 3, fc)
        pieces.append((full.permute(2, 4, 0, 1, 3, 5), (slice(None), slice(None), slice(None), slice(fr), slice(fc))))
    if fr and rc:
        right = _split(img[:, r0:r0 + fr * M, fc * M:], 1, fr).permute(2, 3, 0, 1, 4)
        pieces.append((right, (slice(None), slice(rc), slice(None), slice(fr), fc)))
    if rr and fc:
        bottom = _split(img[:, r0 + fr * M:r0 + rows, :fc * M], 2, fc).permute(1, 3, 0, 2, 4)
        pieces.append((bottom, (slice(rr), slice(None), slice(None), fr, slice(fc))))
    if rr and rc:
        corner = img[:, r0 + fr * M:r0 + rows, fc * M:].permute(1, 2, 0, 3)
        pieces.append((corner, (slice(rr), slice(rc), slice(None), fr, fc)))
    return pieces


def _width(b: torch.Tensor, onednn: bool) -> int:
    """Columns of each product ``a[i] @ b[i]`` (``_products``)."""
    return b.shape[1] if onednn else b.shape[2]


def _forward(x: torch.Tensor, u: torch.Tensor, bias: torch.Tensor | None, onednn: bool) -> torch.Tensor:
    """NHWC (n, h, w, c) -> channels-last NCHW (n, k, h, w), padding 1, plus ``bias``;
    ``u`` is the kernel as ``_products`` takes it."""
    n, h, w, c = x.shape
    th, tw, k = -(-h // M), -(-w // M), _width(u, onednn)
    # Padded to whole blocks plus 2: window i is rows 4i .. 4i+5, block i and 2 of i+1.
    xp = F.pad(x, (0, 0, 1, tw * M + 1 - w, 1, th * M + 1 - h))
    out = torch.empty(n, k, h, w, dtype=x.dtype, device=x.device, memory_format=torch.channels_last)
    y = out.permute(0, 2, 3, 1)
    band = min(th, _band(n, tw, max(c, k)))
    d, v = (x.new_empty(T * T * n * band * tw * c) for _ in range(2))
    p, m = x.new_empty(T * T * n * band * tw * k), x.new_empty(M * M * n * band * tw * k)
    for i0 in range(0, th, band):
        nb = min(band, th - i0)
        tiles = n * nb * tw
        windows = xp[:, i0 * M:(i0 + nb - 1) * M + T].unfold(1, T, M).unfold(2, T, M)  # (n, nb, tw, c, T, T)
        db = d[:T * T * tiles * c].view(T, T, n, nb, tw, c)
        db.copy_(windows.permute(4, 5, 0, 1, 2, 3))
        vb = torch.mm(_KB, db.view(T * T, -1), out=v[:T * T * tiles * c].view(T * T, -1))
        pb = _products(vb.view(T * T, tiles, c), u, p[:T * T * tiles * k].view(T * T, tiles, k), onednn)
        mb = torch.mm(_KA, pb.view(T * T, -1), out=m[:M * M * tiles * k].view(M * M, -1))
        blocks = mb.view(M, M, n, nb, tw, k)
        for view, index in _block_pieces(y, i0, nb):
            _put(view, blocks[index], bias)
    return out


def _backward(grad: torch.Tensor, ut: torch.Tensor, h: int, w: int, onednn: bool) -> torch.Tensor:
    """The adjoint of ``_forward``: NHWC (n, h, w, k) -> channels-last NCHW (n, c, h, w);
    ``ut`` is the transposed kernel as ``_products`` takes it."""
    n, k, c = grad.shape[0], grad.shape[-1], _width(ut, onednn)
    th, tw = -(-h // M), -(-w // M)
    # The padded input's gradient, one block larger than whole blocks so that the last
    # windows' overlap fits; only that margin needs zeros (see the order below).
    gxp = grad.new_empty(n, (th + 1) * M, (tw + 1) * M, c)
    gxp[:, th * M:].zero_()
    gxp[:, :th * M, tw * M:].zero_()
    band = min(th, _band(n, tw, max(c, k)))
    gm, gp = grad.new_empty(M * M * n * band * tw * k), grad.new_empty(T * T * n * band * tw * k)
    gv, gd = (grad.new_empty(T * T * n * band * tw * c) for _ in range(2))
    # Bottom band first: each band copies its windows' whole 4x4 blocks in, which covers
    # the rows that the band below already added its overlap to; then it adds its own
    # overlaps (the windows' last 2 rows and columns) on top.
    for i0 in reversed(range(0, th, band)):
        nb = min(band, th - i0)
        tiles = n * nb * tw
        gb = gm[:M * M * tiles * k].view(M, M, n, nb, tw, k)
        if w % M:
            gb[:, w % M:, :, :, tw - 1].zero_()
        if (i0 + nb) * M > h:
            gb[h - (i0 + nb - 1) * M:, :, :, nb - 1].zero_()
        for view, index in _block_pieces(grad, i0, nb):
            gb[index].copy_(view)
        gpb = torch.mm(_KA_T, gb.view(M * M, -1), out=gp[:T * T * tiles * k].view(T * T, -1))
        gvb = _products(gpb.view(T * T, tiles, k), ut, gv[:T * T * tiles * c].view(T * T, tiles, c), onednn)
        gdb = torch.mm(_KB_T, gvb.view(T * T, -1), out=gd[:T * T * tiles * c].view(T * T, -1)).view(T, T, n, nb, tw, c)
        rows = _split(_split(gxp[:, i0 * M:(i0 + nb + 1) * M, :(tw + 1) * M], 1, nb + 1), 3, tw + 1)
        base = rows.permute(2, 4, 0, 1, 3, 5)  # (4, 4, n, nb + 1, tw + 1, c)
        base[:, :, :, :nb, :tw].copy_(gdb[:M, :M])
        base[:, :T - M, :, :nb, 1:].add_(gdb[:M, M:])
        base[:T - M, :, :, 1:, :tw].add_(gdb[M:, :M])
        base[:T - M, :T - M, :, 1:, 1:].add_(gdb[M:, M:])
    return _to_nchw(gxp[:, 1:h + 1, 1:w + 1], None)
