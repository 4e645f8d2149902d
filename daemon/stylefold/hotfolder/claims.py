"""Claiming a file from the inbox, so that exactly one process works on it.

A claim is a folder ``.stylefold/work/<job id>/`` holding an exclusive ``flock`` on its
``lock`` file, a ``job.json`` (``ClaimMeta``: where the file came from, its preset's
origin, then the job description or the failure it met), and the original (plus its sidecar),
moved into its ``original/`` subfolder with ``os.rename``. The subfolder keeps a photo
named ``rendered.png`` or a sidecar named ``result.json`` apart from the job's own files
of those names (a photo named like them was overwritten by its own render). The rename
is atomic: of two daemons racing for one file, one gets it and the other gets ENOENT.
The lock is taken *before* the file moves in, and the kernel drops it when the process
dies (kill -9 included), so a work folder whose lock can be taken belongs to nobody: it
is an interrupted job, which a daemon resumes.
No torch here.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import shutil
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from pydantic import BaseModel, ConfigDict, ValidationError, field_validator

from ..failures import FailureKind
from ..fsops import move_no_clobber, same_bytes, write_atomic
from ..job.spec import JobSpec
from ..names import fit
from .claimed import begin_claim, claimed_here, end_claim, not_claimed
from .layout import HotFolder
from .origins import Origin, SidecarPreset

__all__ = ["Claim", "ClaimMeta", "FailureNote", "FinalMove", "claim", "claimed_here", "interrupted_claims", "is_held"]

logger = logging.getLogger(__name__)

JOB_FILE = "job.json"
LOCK_FILE = "lock"
ORIGINALS = "original"


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid")


class FailureNote(_Model):
    """A failure met before the job could run (its preset, its file)."""

    kind: FailureKind
    message: str


class FinalMove(_Model):
    """Where the image went when the job ended (its sidecar follows it there)."""

    dest: str  # the folder under the root: done or failed, then the inbox subfolder
    image: str

    @field_validator("dest")
    @classmethod
    def _under_done_or_failed(cls, dest: str) -> str:
        parts = dest.split("/")
        if parts[0] not in ("done", "failed") or any(p in ("", ".", "..") for p in parts):
            raise ValueError(f"not a folder under done/ or failed/: {dest!r}")
        return dest


class ClaimMeta(_Model):
    source: str  # the image's path relative to the inbox, as dropped
    name: str  # its file name in original/
    origin: Origin
    claimed_at: float
    sidecar: str | None = None
    sha256: str = ""  # the image's, once read (a failed job has one too: a retry clears it)
    spec: JobSpec | None = None
    failure: FailureNote | None = None
    final: FinalMove | None = None
    trouble: str | None = None  # why the last try could not finish (a full disk, a read-only done/)

    def to_bytes(self) -> bytes:
        # json.dumps, not pydantic's JSON: a Linux file name that is not UTF-8 reaches
        # Python with surrogate escapes, which json.dumps keeps and pydantic refuses.
        return json.dumps(self.model_dump(mode="json"), indent=2).encode()

    @classmethod
    def from_bytes(cls, raw: bytes) -> ClaimMeta:
        return cls.model_validate(json.loads(raw))


@dataclass
class Claim:
    job_id: str
    folder: Path
    meta: ClaimMeta
    _lock_fd: int | None = field(default=None, repr=False)

    @property
    def originals(self) -> Path:
        return self.folder / ORIGINALS

    @property
    def image(self) -> Path:
        return self.originals / self.meta.name

    @property
    def sidecar(self) -> Path | None:
        name = self.meta.sidecar
        return self.originals / name if name else None

    @property
    def checkpoint(self) -> Path:
        return self.folder / "checkpoint.pt"

    def save_meta(self) -> None:
        write_atomic(self.folder / JOB_FILE, self.meta.to_bytes())

    def release(self) -> None:
        """Give up the lock, leaving the folder for a later resume."""
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None

    def finish(self) -> None:
        """The job is over and its originals moved out: remove the folder. Anything
        still in original/ is never deleted with it: it goes back to the inbox."""
        originals = self.originals
        if originals.is_dir() and any(originals.iterdir()):
            logger.error("claim %s finished with originals still in it; returning them", self.job_id)
            dest = self.folder.parent.parent.parent / "inbox" / Path(self.meta.source).parent
            for path in list(originals.iterdir()):
                if not path.is_dir() or path.is_symlink():
                    move_no_clobber(path, dest)
        shutil.rmtree(self.folder, ignore_errors=True)
        self.release()


def _lock(folder: Path) -> int | None:
    try:
        fd = os.open(folder / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o644)
    except (FileNotFoundError, NotADirectoryError):
        return None  # removed by another daemon between listing and locking
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return None
    return fd


def is_held(folder: Path) -> bool:
    """Whether a live process holds the claim in ``folder`` (a shared lock is refused
    while its exclusive one is held). Creates nothing."""
    try:
        fd = os.open(folder / LOCK_FILE, os.O_RDONLY)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)  # closing drops a lock we got
    return False


def claim(hot: HotFolder, image: Path, sidecar: Path | None, source: str, origin: Origin) -> Claim | None:
    """Move ``image`` (and ``sidecar``) from the inbox into a new locked work folder.
    None if the file is gone (another daemon took it, or the user did).

    Any error (a full disk, a read-only ``.stylefold/``) raises with nothing left
    behind: the lock released, the half-built folder removed, the image and its sidecar
    back where they were in the inbox. A failed claim that kept its lock file open
    leaked a descriptor per try until the process could no longer list the inbox."""
    job_id = f"{time.time_ns():x}-{uuid.uuid4().hex[:8]}"
    # Built under a hidden name and locked before it gets its real name: another
    # daemon's scan for interrupted claims must never see it unlocked.
    building = hot.work / f".new-{job_id}"
    try:
        (building / ORIGINALS).mkdir(parents=True)
        fd = _lock(building)
    except BaseException:
        shutil.rmtree(building, ignore_errors=True)
        raise
    if fd is None:
        shutil.rmtree(building, ignore_errors=True)
        raise RuntimeError(f"could not lock the new claim folder {building}")
    meta = ClaimMeta(source=source, name=image.name, origin=origin, claimed_at=time.time())
    result = Claim(job_id, building, meta, fd)
    try:
        # job.json first: a folder with job.json but no image is a claim that never happened.
        result.save_meta()
        result.folder = hot.work / job_id
        os.rename(building, result.folder)
    except BaseException:
        _abandon(result, building)
        raise
    begin_claim(image)  # before the rename: a sibling lane that lost must find it noted
    try:
        os.rename(image, result.image)
    except FileNotFoundError:
        end_claim(image, taken=False)
        result.finish()
        return None
    except BaseException:
        end_claim(image, taken=False)
        _abandon(result, building)
        raise
    end_claim(image, taken=True)
    if sidecar is not None:
        try:
            _claim_sidecar(result, sidecar, image)
        except BaseException:
            not_claimed(image)
            _give_back(result, image, sidecar)
            raise
    return result


def _claim_sidecar(result: Claim, sidecar: Path, image: Path) -> None:
    # Recorded first: a crash between these two lines must not leave a sidecar in the
    # claim that job.json does not know of.
    result.meta.sidecar = sidecar.name
    result.save_meta()
    try:
        os.rename(sidecar, result.originals / sidecar.name)
    except FileNotFoundError:
        logger.warning("sidecar %s vanished while claiming %s", sidecar, image)
        result.meta.sidecar = None
        result.save_meta()


def _abandon(result: Claim, *folders: Path) -> None:
    """Undo a claim that holds no original yet: remove its folder, drop its lock."""
    for folder in {result.folder, *folders}:
        shutil.rmtree(folder, ignore_errors=True)
    result.release()


def _give_back(result: Claim, image: Path, sidecar: Path) -> None:
    """Undo a claim whose sidecar could not be recorded: the image (and the sidecar, if
    it moved) go back to the inbox by rename, which needs no space. If that fails too,
    the claim stays as it is, unlocked: an interrupted job, resumed (with its sidecar
    fetched from the inbox) at a later scan."""
    try:
        moved_sidecar = result.originals / sidecar.name
        if os.path.lexists(moved_sidecar) and not os.path.lexists(sidecar):
            os.rename(moved_sidecar, sidecar)
        os.rename(result.image, image)
    except OSError as exc:
        logger.error("could not return %s to the inbox (%s); it resumes from its claim", image.name, exc)
        result.release()
        return
    _abandon(result)


def interrupted_claims(hot: HotFolder) -> Iterator[Claim]:
    """Work folders nobody holds: jobs of a process that died or was stopped. Folders
    without their image are claims that never completed and are removed."""
    if not hot.work.is_dir():
        return
    for folder in sorted(p for p in hot.work.iterdir() if p.is_dir()):
        if folder.name.startswith("."):
            _remove_abandoned_build(folder)
            continue
        fd = _lock(folder)
        if fd is None:
            continue  # a live process is working on it
        try:
            meta: ClaimMeta | None = ClaimMeta.from_bytes((folder / JOB_FILE).read_bytes())
        except (OSError, ValueError, ValidationError):
            meta = None
        try:
            if meta is not None and meta.final is not None:
                _settle_final_move(hot, folder, meta)
            if meta is None or not _present(folder / ORIGINALS / meta.name):
                _return_strays(hot, folder, meta)
                _remove(folder, fd)
                continue
        except OSError as exc:  # a full or read-only folder: the claim stays for a later look
            logger.error("could not finish the claim %s (%s); it is looked at again later", folder.name, exc)
            os.close(fd)
            continue
        found = Claim(folder.name, folder, meta, fd)
        _fetch_sidecar(hot, found)
        yield found


def _present(path: Path) -> bool:
    """Whether the original is there: any kind of file (a FIFO or a symlink set aside as
    unsupported is an original too), not following symlinks."""
    try:
        path.lstat()
    except OSError:
        return False
    return True


def _settle_final_move(hot: HotFolder, folder: Path, meta: ClaimMeta) -> None:
    """The claim recorded where its image was going, and the image is still here: either
    the move never happened (forget the target: the job resumes), or a move to another
    filesystem copied it completely and died before unlinking the source (unlink it now:
    one original, never two, never none)."""
    final = meta.final
    assert final is not None
    image = folder / ORIGINALS / meta.name
    if not _present(image):
        return
    target = hot.root / final.dest / final.image
    if same_bytes(image, target):
        image.unlink()
        logger.warning("finished moving %s to %s/ (interrupted after the copy)", meta.name, final.dest)
        return
    meta.final = None
    write_atomic(folder / JOB_FILE, meta.to_bytes())


def _remove(folder: Path, fd: int) -> None:
    shutil.rmtree(folder, ignore_errors=True)
    os.close(fd)


def _remove_abandoned_build(folder: Path) -> None:
    """A claim folder whose process died before naming it: it never held an original
    (the image moves in only after the rename), so it can go."""
    try:
        fd = _lock(folder)
    except OSError:  # no lock file and no room for one: nobody can hold it; look again later
        return
    if fd is None:
        return
    try:
        if not any((folder / ORIGINALS).iterdir()):
            shutil.rmtree(folder, ignore_errors=True)
    except OSError:  # gone meanwhile, or never got its original/ (a full disk)
        shutil.rmtree(folder, ignore_errors=True)
    finally:
        os.close(fd)


def _fetch_sidecar(hot: HotFolder, found: Claim) -> None:
    """Finish a claim interrupted between moving the image and moving its sidecar: the
    job was paired with a sidecar that is still in the inbox. Without this the resumed
    job had no preset (failed ``no_preset``) and its sidecar failed later as an orphan."""
    origin = found.meta.origin
    if not isinstance(origin, SidecarPreset) or origin.shared:
        return
    if found.sidecar is not None and os.path.lexists(found.sidecar):
        return
    name = Path(origin.file).name
    left_behind = hot.inbox / Path(found.meta.source).parent / name
    try:
        os.rename(left_behind, found.originals / name)
    except FileNotFoundError:
        return  # taken away meanwhile: the job fails no_preset, saying so
    found.meta.sidecar = name
    found.save_meta()
    logger.info("moved %s into the interrupted claim of %s", left_behind, found.meta.source)


def _return_strays(hot: HotFolder, folder: Path, meta: ClaimMeta | None) -> None:
    """Put back any original in a broken claim folder, so nothing is ever lost: only
    what is in ``original/`` (the job's own rendered.png, result.json... were handed to
    the inbox as photos and sidecars before), and under a free name (a name taken in the
    inbox meanwhile left the original to be deleted with the folder)."""
    source_dir = hot.inbox / Path(meta.source).parent if meta is not None else hot.inbox
    originals = folder / ORIGINALS
    if not originals.is_dir():
        return
    # The image already went to done/ or failed/ (a crash while moving originals out):
    # what is left (its sidecar) follows it there, under the image's new stem.
    final = meta.final if meta is not None else None
    for path in originals.iterdir():
        if path.is_dir() and not path.is_symlink():
            continue
        if final:
            dest = hot.root / final.dest
            moved = move_no_clobber(path, dest, fit(Path(final.image).stem, path.suffix))
            logger.warning("moved %s of a finished claim to %s", path.name, moved)
        else:
            returned = move_no_clobber(path, source_dir)
            logger.warning("returned %s from an incomplete claim to %s", path.name, returned)
