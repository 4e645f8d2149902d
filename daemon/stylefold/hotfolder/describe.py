"""The job description of a claimed file, made once, at claim time. Torch-free.

Whatever the preset's origin (sidecar, folder ``preset.json``, folder name, default),
its effective values are snapshotted into the claim's ``JobSpec`` together with the
photo's and the styles' sha256: a preset edited, or a ``preset.json`` replaced, while
the job waits or after a SIGTERM never changes the job. A file that cannot become a
job gets a ``FailureNote`` instead, and the worker fails it.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

from ..failures import FailureKind, JobFailure, classify
from ..job.spec import Caps, JobSpec
from ..presets import Preset, PresetError, PresetLibrary, read_preset_json
from ..safeopen import lstat_kind, sha256_regular
from .claims import Claim, FailureNote
from .layout import PRESET_FILE, HotFolder, is_image, unsupported_reason
from .origins import DefaultPreset, FolderPreset, NamedPreset, Rejected, SidecarPreset, describe_origin

__all__ = ["describe"]

logger = logging.getLogger(__name__)


def describe(claim: Claim, hot: HotFolder, library: PresetLibrary, caps: Caps) -> None:
    """Record the claim's ``spec`` (or its ``failure``) in its ``job.json``."""
    try:
        claim.meta.spec = _spec(claim, hot, library, caps)
        claim.meta.failure = None
    except Exception as exc:  # whatever the file or its preset holds fails its job, never the daemon
        failure = classify(exc)
        if failure.kind == FailureKind.INTERNAL and not isinstance(exc, JobFailure):
            logger.exception("%s: describing the job failed", claim.meta.source)
        claim.meta.failure = FailureNote(kind=failure.kind, message=failure.message)
    claim.save_meta()


def _spec(claim: Claim, hot: HotFolder, library: PresetLibrary, caps: Caps) -> JobSpec:
    meta = claim.meta
    _only_regular_files(claim, hot)
    try:
        # Hashed first, a file that fails too: a successful retry clears its error file.
        image_sha = meta.sha256 = sha256_regular(claim.image)
    except OSError as exc:  # unreadable (permissions): fail it, never crash-loop on it
        raise JobFailure(f"{meta.name} cannot be read ({exc.strerror})", kind=FailureKind.UNREADABLE_IMAGE) from exc
    if isinstance(meta.origin, Rejected):
        raise JobFailure(_rejection(meta.origin, meta.source, library), kind=meta.origin.failure)
    preset = _preset(claim, hot, library)
    try:
        # The OS refusing a style path (a 300-character name is ENAMETOOLONG, an
        # unreadable style file EACCES) is the style's failure, not the daemon's.
        styles = [(library.resolve_style(ref.path), ref.weight) for ref in preset.style_refs()]
        # Followed (resolve_style confined it to a style folder), but never a FIFO.
        style_shas = [sha256_regular(path, follow_symlinks=True) for path, _ in styles]
    except OSError as exc:
        style = Path(exc.filename).name[:80] if isinstance(exc.filename, str) else "the style"
        raise JobFailure(f"{style}: cannot be opened ({exc.strerror or exc})",
                         kind=FailureKind.STYLE_NOT_FOUND) from exc
    return JobSpec.make(claim.job_id, claim.image, image_sha, preset, describe_origin(meta.origin),
                        styles, caps, style_shas)


def _only_regular_files(claim: Claim, hot: HotFolder) -> None:
    """A FIFO, socket, device or symbolic link, as the photo or as its sidecar, fails
    ``unsupported_file`` before anything opens it: a link could lead to any file the
    daemon can read, and opening a FIFO nobody writes to blocks forever."""
    name = claim.meta.name
    what = _not_regular(claim.image)
    if what is not None:
        raise JobFailure(f"{name} is {what}; {_REGULAR_ONLY}", kind=FailureKind.UNSUPPORTED_FILE)
    sidecar = claim.sidecar
    what = _not_regular(sidecar) if sidecar is not None else None
    if sidecar is not None and what is not None:
        raise JobFailure(f"the sidecar {sidecar.name} of {name} is {what}; {_REGULAR_ONLY}",
                         kind=FailureKind.UNSUPPORTED_FILE)
    origin = claim.meta.origin
    if isinstance(origin, Rejected) and origin.failure == FailureKind.UNSUPPORTED_FILE and is_image(name):
        # An image the watcher refused although it is one: its preset in the inbox (a
        # sidecar it shares with a.png, its folder's preset.json) is no regular file.
        stem = Path(name).stem
        for entry in _entries(hot.inbox / Path(claim.meta.source).parent):
            lower = entry.name.lower()
            if (lower == PRESET_FILE or lower == f"{stem.lower()}.json") and \
                    (what := _not_regular(Path(entry.path))) is not None:
                raise JobFailure(f"{_inbox_label(claim.meta.source, entry.name)}, the preset of {name}, is {what}; "
                                 f"{_REGULAR_ONLY}", kind=FailureKind.UNSUPPORTED_FILE)


_REGULAR_ONLY = "stylefold reads only regular files and never follows links: drop the file itself"


def _not_regular(path: Path) -> str | None:
    try:
        return lstat_kind(path)
    except FileNotFoundError:
        return None  # gone: reading it says so


def _entries(folder: Path) -> list[os.DirEntry[str]]:
    try:
        with os.scandir(folder) as listing:
            return list(listing)
    except OSError:
        return []


def _preset(claim: Claim, hot: HotFolder, library: PresetLibrary) -> Preset:
    origin, source = claim.meta.origin, claim.meta.source
    if isinstance(origin, SidecarPreset):
        # The sidecar moved into the claim; one shared by a.jpg and a.png stays in the
        # inbox for the other image and is read there.
        if claim.sidecar is None and not origin.shared:
            raise JobFailure(f"the sidecar {origin.file} of {source} was taken away before the job started",
                             kind=FailureKind.NO_PRESET)
        path = claim.sidecar or hot.inbox / Path(source).parent / origin.file
        return _from_file(library, path, _inbox_label(source, origin.file))
    if isinstance(origin, FolderPreset):
        return _from_file(library, hot.inbox / origin.file, f"inbox/{origin.file}")
    if isinstance(origin, NamedPreset | DefaultPreset):
        return library.load(origin.name)
    raise JobFailure(f"no preset for {source}", kind=FailureKind.NO_PRESET)


def _from_file(library: PresetLibrary, path: Path, label: str) -> Preset:
    """Not ``library.load_file``: that treats the file's stem as a preset name in the
    ``extends`` chain, so ``portrait.json`` beside ``portrait.jpg`` extending the
    ``portrait`` preset failed as a loop. Errors name the file as the user dropped it
    (``inbox/...``), not its path inside the claim folder."""
    try:
        data = read_preset_json(path, follow_symlinks=False)  # from the hot folder: links are never followed
    except PresetError as exc:
        raise PresetError(str(exc).replace(str(path), label)) from None
    return library.from_data(data, label)


def _inbox_label(source: str, name: str) -> str:
    return f"inbox/{Path(source).with_name(name)}"


def _rejection(origin: Rejected, source: str, library: PresetLibrary) -> str:
    name, parts = Path(source).name, Path(source).parts
    if origin.failure == FailureKind.UNSUPPORTED_FILE:
        return unsupported_reason(name)
    if origin.failure == FailureKind.NO_IMAGE:
        return f"{name} is a preset sidecar whose image never arrived"
    if len(parts) > 1:
        folder = parts[0]
        return (f"inbox/{folder}/ is named after no preset, and {name} has no sidecar or preset.json: "
                f"{library.unknown(folder, 'folder preset')}")
    return (f"no preset for {source}: no sidecar {Path(source).stem}.json, no preset.json and no default_preset; "
            "drop it into inbox/PRESET/ (one of: " + ", ".join(library.names()) + ")")
