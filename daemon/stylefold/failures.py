"""Why a job failed: the kinds of SPEC §5, the one exception that carries a kind, and
the one function that turns any exception into a kind and one human sentence.

No torch here: torch's errors are recognised by their class names, so the hot folder,
the CLI and a remote worker's coordinator classify a failure without importing it.
"""

from __future__ import annotations

import errno
from enum import StrEnum

__all__ = ["FailureKind", "JobFailure", "classify", "is_disk_full", "one_line"]


class FailureKind(StrEnum):
    """The ``kind`` of ``failed/NAME.error.json`` (SPEC §5)."""

    INVALID_PRESET = "invalid_preset"
    NO_PRESET = "no_preset"
    STYLE_NOT_FOUND = "style_not_found"
    UNREADABLE_IMAGE = "unreadable_image"
    TOO_LARGE = "too_large"
    TOO_SMALL = "too_small"
    OUT_OF_MEMORY = "out_of_memory"
    UNSUPPORTED_FILE = "unsupported_file"
    NO_IMAGE = "no_image"
    DISK_FULL = "disk_full"
    # A GPU error other than out-of-memory: the device may be unusable. The hot folder
    # does not fail the job for it: the process exits for systemd to restart it with a
    # fresh context, and the job resumes (a file that keeps doing it ends as poison).
    DEVICE_ERROR = "device_error"
    INTERNAL = "internal"


class JobFailure(Exception):
    """A job that cannot produce a result: a kind and one human sentence.

    Subclasses fix their kind (``PresetError`` is ``invalid_preset``, ``ImageError``
    ``unreadable_image``...); ``kind=`` overrides it for one instance.
    """

    kind: FailureKind = FailureKind.INTERNAL

    def __init__(self, message: str, *, kind: FailureKind | None = None) -> None:
        super().__init__(message)
        if kind is not None:
            self.kind = kind

    @property
    def message(self) -> str:
        return str(self)


def classify(exc: BaseException, *, device: str = "the device", size: int | None = None) -> JobFailure:
    """The failure an exception means for its job. ``device`` and ``size`` complete the
    out-of-memory sentence."""
    if isinstance(exc, JobFailure):
        return exc
    names = {cls.__name__ for cls in type(exc).__mro__}
    if "OutOfMemoryError" in names or isinstance(exc, MemoryError):
        at = f" at size {size}" if size is not None else ""
        return JobFailure(f"out of memory on {device}{at}; lower the preset's size",
                          kind=FailureKind.OUT_OF_MEMORY)
    if "AcceleratorError" in names or (isinstance(exc, RuntimeError) and _is_device_runtime_error(exc)):
        return JobFailure(f"device error on {device}: {_first_line(exc)}", kind=FailureKind.DEVICE_ERROR)
    if isinstance(exc, OSError):
        if exc.errno in (errno.ENOSPC, errno.EDQUOT):
            where = f" ({exc.filename})" if exc.filename else ""
            return JobFailure(f"the disk is full{where}; free space and drop the photo in again",
                              kind=FailureKind.DISK_FULL)
        return JobFailure(f"file error: {exc.strerror or exc}", kind=FailureKind.INTERNAL)
    return JobFailure(f"internal error: {_first_line(exc) or type(exc).__name__}", kind=FailureKind.INTERNAL)


_SQLITE_FULL = 13


def is_disk_full(exc: BaseException) -> bool:
    """No space (or quota) left: an OSError's ENOSPC/EDQUOT, or SQLite's SQLITE_FULL
    ("database or disk is full"), which comes as a plain ``sqlite3.OperationalError``
    (its ``sqlite_errorcode`` says so; the text, where an older build has no code)."""
    if isinstance(exc, OSError):
        return exc.errno in (errno.ENOSPC, errno.EDQUOT)
    code = getattr(exc, "sqlite_errorcode", None)
    if code is not None:
        return bool(code & 0xFF == _SQLITE_FULL)
    return type(exc).__name__ == "OperationalError" and "disk is full" in str(exc)


def one_line(text: str) -> str:
    """Several problems, one per line (as the command line shows them), as the one
    sentence an error file and the journal hold."""
    return "; ".join(part.strip() for part in text.splitlines() if part.strip())


def _is_device_runtime_error(exc: RuntimeError) -> bool:
    """cuDNN and cuBLAS status errors come as plain RuntimeErrors from torch; their
    class says nothing, their fixed prefix does (torch/csrc/cuda, ATen/cudnn)."""
    text = str(exc)
    return text.startswith(("CUDA error", "cuDNN error", "CUDNN_STATUS", "CUBLAS_STATUS", "CUDA driver error"))


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0][:300] if text else ""
