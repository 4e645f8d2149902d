"""File names from anyone: how they are shown and how names derived from them are made.

A name in the inbox is whatever bytes the sender chose: a newline, an ESC sequence, a
right-to-left override, 255 bytes of Japanese, bytes that are not UTF-8. Two rules:

- ``printable(text)``: what a log line or the console shows. Control characters (C0,
  DEL, C1), line and paragraph separators and bidirectional overrides become ``\\xNN`` or
  ``\\uNNNN`` escapes, and undecodable bytes (surrogate escapes) become ``\\xNN``: a file
  name can neither forge a log line nor send codes to a terminal.
- ``fit(stem, suffix)``: a name for a *derived* file (an error file, a result, a ``-2``
  rename) that a filesystem accepts: at most ``NAME_MAX`` bytes, cut at a character
  boundary. The original itself keeps its name and bytes whenever it can.
  ``clean_stem`` also turns control characters into ``_`` (but keeps bytes that are not
  UTF-8) for names that editors and other programs will show (results and their logs).

Stdlib only.
"""

from __future__ import annotations

import os
import re

__all__ = ["NAME_MAX", "clean_stem", "fit", "printable"]

NAME_MAX = 255  # bytes in one path component on every filesystem we meet (ext4, xfs, btrfs, tmpfs, NFS, SMB)

# C0, DEL, C1; U+2028/2029 (line/paragraph separators); bidi embeddings, overrides, isolates.
_UNSAFE = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029\u202a-\u202e\u2066-\u2069\udc80-\udcff]")
_UNSAFE_IN_NAMES = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029\u202a-\u202e\u2066-\u2069]")
_UNSAFE_IN_TEXT = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f\u2028\u2029\u202a-\u202e\u2066-\u2069\udc80-\udcff]")


def _escape(match: re.Match[str]) -> str:
    char = match.group()
    code = ord(char)
    if 0xDC80 <= code <= 0xDCFF:  # a byte that was not UTF-8 (os.fsdecode's surrogateescape)
        return f"\\x{code - 0xDC00:02x}"
    return f"\\x{code:02x}" if code <= 0xFF else f"\\u{code:04x}"


def printable(text: object, *, keep_newlines: bool = False) -> str:
    """``str(text)`` safe to print on one line (``keep_newlines``: newlines and tabs kept,
    for a multi-line message whose parts are already escaped)."""
    pattern = _UNSAFE_IN_TEXT if keep_newlines else _UNSAFE
    return pattern.sub(_escape, str(text))


def clean_stem(stem: str) -> str:
    """A stem for files other programs show: control and invisible characters become
    ``_``. Bytes that are not UTF-8 stay: the client that sent them shows them as it
    showed the original."""
    return _UNSAFE_IN_NAMES.sub("_", stem)


def fit(stem: str, suffix: str = "", *, limit: int = NAME_MAX) -> str:
    """``stem + suffix`` cut to at most ``limit`` bytes, shortening the stem at a
    character boundary (never the suffix)."""
    budget = limit - len(os.fsencode(suffix))
    if budget < 1:
        raise ValueError(f"suffix {suffix!r} leaves no room for a name")
    raw = os.fsencode(stem)
    if len(raw) <= budget:
        return stem + suffix
    return os.fsdecode(_whole_characters(raw[:budget])) + suffix


def _whole_characters(cut: bytes) -> bytes:
    """``cut`` without a UTF-8 sequence that the cut left incomplete at its end."""
    start = len(cut) - 1
    while start > 0 and (cut[start] & 0xC0) == 0x80 and len(cut) - start < 4:
        start -= 1
    lead = cut[start] if cut else 0
    needed = 2 if 0xC0 <= lead < 0xE0 else 3 if 0xE0 <= lead < 0xF0 else 4 if lead >= 0xF0 else 1
    return cut[:start] if len(cut) - start < needed else cut
