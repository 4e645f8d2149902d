"""Device and precision choice, and process-level tuning for the CPU path."""

from __future__ import annotations

import ctypes
import logging
import os
import sys
from typing import Literal

import torch

__all__ = ["cpu_bf16", "memory_budget_bytes", "resolve_device", "resolve_precision", "tune_cpu_allocator"]

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
    - cpu: bf16 where the CPU computes bf16 natively (``cpu_bf16``), else fp32:
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
        return "bf16" if cpu_bf16()[0] else "fp32"
    return "fp32"


# x86: AVX512-BF16 (Cooper Lake, Sapphire Rapids, Zen 4 on) or AMX-BF16; arm64: the
# BF16 extension (Neoverse V1/N2, Graviton 3 on), which Linux lists as "bf16".
_NATIVE_BF16_FLAGS = ("avx512_bf16", "amx_bf16", "bf16")


def cpu_bf16(cpuinfo: str | None = None) -> tuple[bool, str]:
    """Whether this CPU has bf16 arithmetic in hardware, and why we think so.

    Not ``torch.ops.mkldnn._is_mkldnn_bf16_supported()``: oneDNN says yes on any
    AVX-512 CPU, where it emulates bf16 with fp32 instructions. On a Xeon with AVX-512
    (VNNI) but neither AVX512-BF16 nor AMX that made ``auto`` pick bf16 at 6.7 s a step
    against 4.1 s in fp32. The CPU's own flags (``/proc/cpuinfo``) say what the hardware
    does; where they cannot be read, fp32 (never slower than emulation)."""
    if cpuinfo is None:
        try:
            with open("/proc/cpuinfo", encoding="ascii", errors="replace") as f:
                cpuinfo = f.read(1 << 20)
        except OSError:
            return False, "no /proc/cpuinfo to read the CPU's flags from; fp32 is the safe choice"
    flags: set[str] = set()
    for line in cpuinfo.splitlines():
        key, _, value = line.partition(":")
        if key.strip() in ("flags", "Features"):
            flags.update(value.split())
    found = [flag for flag in _NATIVE_BF16_FLAGS if flag in flags]
    if found:
        return True, f"native bf16 ({', '.join(found)} in /proc/cpuinfo)"
    if not flags:
        return False, "no CPU flags in /proc/cpuinfo; fp32 is the safe choice"
    return False, "no avx512_bf16, amx_bf16 or bf16 CPU flag: bf16 would be emulated, slower than fp32"


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
