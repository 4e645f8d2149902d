"""How each wide 3x3 conv runs on the CPU in fp32: measured, not assumed.

Winograd F(4x4, 3x3) (``winograd.py``) does a quarter of the multiplications, but whether
that pays depends on the CPU and on the layer. So the first time a layer sees an input
of a new size (``shape_key``), its forward and input gradient are timed on that input as
oneDNN's direct convolution, as Winograd with the 36 products in one ``torch.bmm`` (MKL),
and as Winograd with each product in oneDNN's matmul; the fastest is used for that size
for the rest of the process (``METHODS``; a Winograd method must beat direct by
``MARGIN``). Measured with ``tests/benchmarks/bench_winograd.py``: on an Intel Xeon with
AMX, Winograd with MKL was 1.2-2.2x direct from ``conv2_1`` on; on an AMD EPYC (Zen 5)
MKL's fp32 GEMM runs at half the speed of oneDNN's and oneDNN's direct convolution at
nearly its matmul peak, so there ``conv2_x`` stay direct and the deepest layers gain
1.1-1.5x only with oneDNN's products.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from typing import Any, Literal, get_args

import torch

__all__ = ["DROP", "MARGIN", "METHODS", "Method", "adopt", "choose", "chosen", "flop_formulas", "linear_onednn",
           "onednn_products", "shape_key", "snapshot", "time_methods"]

logger = logging.getLogger(__name__)

# How a conv may run: oneDNN's direct convolution, or Winograd with its 36 products in
# one MKL ``torch.bmm`` or each in oneDNN's matmul (``linear_onednn``).
Method = Literal["direct", "winograd", "winograd-onednn"]
METHODS: tuple[Method, ...] = get_args(Method)
MARGIN = 1.05  # a Winograd method is chosen only if at least this much faster than direct
DROP = 1.5  # a method this much slower than direct in the warm-up is not timed further
# The fastest method measured per shape (``shape_key``): one process-wide table, so that
# every extractor, job and resumed job in a process computes a shape the same way.
_CHOSEN: dict[tuple[int, ...], Method] = {}
KEY_LENGTH = 5  # shape_key's
MAX_ADOPTED = 4096  # more entries than any job makes: a checkpoint's list is not trusted


def chosen(key: tuple[int, ...]) -> Method | None:
    """The method measured fastest for ``key`` in this process, if measured."""
    return _CHOSEN.get(key)


def choose(key: tuple[int, ...], runners: dict[Method, Callable[[], object]], label: str) -> Method:
    """Time ``runners`` (a forward and input gradient by each method) and record the
    fastest for ``key``: a Winograd method only if ``MARGIN`` faster than direct. A
    Winograd method that fails here (oneDNN refusing a shape, memory) is left out."""
    def guarded(method: Method, run: Callable[[], object]) -> Callable[[], object]:
        def attempt() -> object:
            if method in failed:
                return None
            try:
                return run()
            except RuntimeError as exc:  # torch's errors, out of memory included
                logger.warning("%s: %s failed, not used: %s", label, method, exc)
                failed.add(method)
                return None
        return attempt

    failed: set[Method] = set()
    seconds = time_methods({m: run if m == "direct" else guarded(m, run) for m, run in runners.items()})
    seconds = {m: t for m, t in seconds.items() if m not in failed}
    fastest = min(seconds, key=seconds.__getitem__)
    method: Method = fastest if seconds[fastest] * MARGIN <= seconds["direct"] else "direct"
    logger.debug("%s: %s (%s)", label, method, ", ".join(f"{m} {1000 * t:.1f} ms" for m, t in seconds.items()))
    _CHOSEN[key] = method
    return method


def snapshot() -> list[tuple[list[int], str]]:
    """This process's choices as plain data, for a checkpoint."""
    return [(list(key), method) for key, method in _CHOSEN.items()]


def adopt(entries: object) -> int:
    """Take a checkpoint's choices (``snapshot``) as this process's, so that a job resumed
    in another process computes each size as it did before: the methods differ by fp32
    rounding, which would otherwise change the rest of the run. Entries that are not
    well-formed, or whose method cannot run here, are skipped (a checkpoint can come from
    a worker box). Returns how many were taken."""
    taken = 0
    for entry in list(entries)[:MAX_ADOPTED] if isinstance(entries, list | tuple) else []:
        if not (isinstance(entry, list | tuple) and len(entry) == 2):
            continue
        key, method = entry
        if (isinstance(key, list | tuple) and len(key) == KEY_LENGTH and all(type(v) is int for v in key)
                and method in METHODS and (method != "winograd-onednn" or onednn_products())):
            _CHOSEN[tuple(key)] = method
            taken += 1
    return taken


def time_methods(runners: dict[Method, Callable[[], object]], rounds: int = 2) -> dict[Method, float]:
    """Best seconds of each runner over ``rounds`` after a warm-up round, interleaved. A
    runner whose warm-up took over ``DROP`` times direct's (which pays its own one-off
    setup in it) is clearly slower and not timed further: it keeps its warm-up time."""
    def seconds(run: Callable[[], object]) -> float:
        start = time.perf_counter()
        run()
        return time.perf_counter() - start

    with torch.no_grad():
        best = {method: seconds(run) for method, run in runners.items()}
        timed = [m for m in runners if m == "direct" or best[m] <= DROP * best["direct"]]
        for i in range(rounds):
            for method in timed:
                t = seconds(runners[method])
                best[method] = t if i == 0 else min(best[method], t)
    return best


def shape_key(x: torch.Tensor, out_channels: int) -> tuple[int, ...]:
    """What a measured choice holds for: batch, channels in and out, the threads, and the
    pixels to half an octave (photos of other aspect ratios at one size share a choice)."""
    n, c, h, w = x.shape
    return n, c, out_channels, round(2 * math.log2(h * w)), torch.get_num_threads()


_linear_pointwise: Any = getattr(torch.ops.mkldnn, "_linear_pointwise", None)
_onednn_ok: bool | None = None


def linear_onednn(a: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """``a @ w.T`` by oneDNN's matmul (the op PyTorch's inductor uses on the CPU)."""
    out: torch.Tensor = _linear_pointwise(a, w, None, "none", [], "")
    return out


def flop_formulas() -> dict[Any, Callable[..., int]]:
    """``FlopCounterMode(custom_mapping=...)``: oneDNN's matmul counted as the matmul it is."""
    def linear_flops(a_shape: torch.Size, w_shape: torch.Size, *_: Any, **__: Any) -> int:
        return 2 * a_shape[0] * a_shape[1] * w_shape[0]

    return {} if _linear_pointwise is None else {_linear_pointwise: linear_flops}


def onednn_products() -> bool:
    """Whether oneDNN's fp32 matmul is here and right (checked once per process)."""
    global _onednn_ok
    if _onednn_ok is None:
        _onednn_ok = False
        if _linear_pointwise is not None and torch.backends.mkldnn.is_available():  # type: ignore[no-untyped-call]
            try:
                g = torch.Generator().manual_seed(0)
                a, w = torch.rand(8, 16, generator=g), torch.rand(4, 16, generator=g)
                _onednn_ok = bool(torch.allclose(linear_onednn(a, w), a @ w.t(), rtol=1e-5, atol=1e-5))
            except (RuntimeError, NotImplementedError):
                pass
    return _onednn_ok


