"""Device and precision choice, and process-level tuning for the CPU path."""

from __future__ import annotations

import ctypes
import logging
import os
import sys
from typing import Literal

import torch

__all__ = ["memory_budget_bytes", "resolve_device", "resolve_precision", "tune_cpu_allocator"]

logger = logging.getLogger(__name__)

# glibc mallopt parameters (malloc.h).
_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
_tuned = False


def resolve_device(name: str = "auto") -> torch.device:
    """``auto`` picks cuda, then mps, then cpu; an unavailable device is a ValueError."""
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        device = torch.device(name)
    except RuntimeError as exc:
        raise ValueError(f"unknown device {name!r}: use auto, cpu, cuda, cuda:N or mps") from exc
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"device {name!r} asked for, but CUDA is not available here")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise ValueError(f"device {name!r} asked for, but only {torch.cuda.device_count()} CUDA devices exist")
    elif device.type == "mps" and not torch.backends.mps.is_available():
        raise ValueError("device 'mps' asked for, but MPS is not available here")
    elif device.type not in ("cpu", "cuda", "mps"):
        raise ValueError(f"unsupported device {name!r}: use auto, cpu, cuda, cuda:N or mps")
    return device


def resolve_precision(precision: str, device: torch.device) -> Literal["fp32", "bf16", "fp16"]:
    """Turn ``auto`` into the fastest precision that is safe on ``device``.

    bf16 keeps fp32's exponent range, so no loss scaling is needed and the Gram/loss
    maths stays in fp32 (see losses.py); ``auto`` therefore never picks fp16.
    - cuda: bf16 where the GPU has bf16 tensor cores (Ampere and newer), else fp32.
    - cpu: bf16 where oneDNN has native bf16 kernels (AVX512-BF16 or AMX), else fp32:
      emulated bf16 is slower than fp32.
    - mps: fp32.
    """
    if precision in ("fp32", "bf16", "fp16"):
        if precision == "fp16" and device.type == "cpu":
            raise ValueError("precision fp16 needs a GPU; use bf16 or fp32 on the CPU")
        return precision  # type: ignore[return-value]
    if precision != "auto":
        raise ValueError(f"unknown precision {precision!r}")
    if device.type == "cuda":
        # including_emulation=False: pre-Ampere GPUs "support" bf16 only slowly, emulated.
        return "bf16" if torch.cuda.is_bf16_supported(including_emulation=False) else "fp32"
    if device.type == "cpu":
        return "bf16" if torch.ops.mkldnn._is_mkldnn_bf16_supported() else "fp32"
    return "fp32"


def tune_cpu_allocator() -> bool:
    """Keep freed activation buffers in the heap instead of returning them to the OS.

    Each optimisation step allocates and frees the same few hundred MB of activations.
    glibc serves blocks above its mmap threshold with fresh mmap()s, so every step
    page-faults its whole working set in again: at 512 px that was over a third of the
    step time here (see README, "Performance"). Raising the mmap and trim thresholds
    makes the heap keep and reuse those pages. Linux/glibc only; a no-op elsewhere.
    """
    global _tuned
    if _tuned:
        return True
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
        ok = bool(libc.mallopt(_M_MMAP_THRESHOLD, 1 << 30)) and bool(libc.mallopt(_M_TRIM_THRESHOLD, (1 << 31) - 1))
    except (OSError, AttributeError):  # musl or another libc without mallopt
        return False
    if not ok:
        logger.debug("mallopt refused the allocator thresholds")
    _tuned = ok
    return ok


def memory_budget_bytes(device: torch.device, budget_mb: int = 0) -> int:
    """Bytes one optimisation may use for activations. ``budget_mb`` > 0 is taken as
    given; 0 means: 70% of a GPU's memory, or a quarter of the machine's RAM on a CPU
    (the rest is the model, the process and everything else on the box)."""
    if budget_mb > 0:
        return budget_mb * 2**20
    if device.type == "cuda":
        return int(torch.cuda.get_device_properties(device).total_memory * 0.7)
    try:
        total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        total = 8 * 2**30
    return total // 4
