"""``stylefold init``, ``submit`` and ``status``: the hot folder from the outside.

No torch: these run in an editor's export hook or a shell and must start fast.
"""

from __future__ import annotations

import datetime as dt
import shutil
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ..config import CONFIG_NAME, Config
from ..fsops import atomic_write, free_names
from ..names import fit
from ..presets import PresetLibrary
from .claims import is_held
from .journal import JobState, Journal, JournalCorrupt
from .layout import HotFolder, is_ignored
from .watcher import Inbox

__all__ = ["CONFIG_TEMPLATE", "broker_workers", "clock", "init_root", "status_report", "submit_files"]

CONFIG_TEMPLATE = """\
# stylefold configuration. Every key is optional; the values shown are the defaults,
# except where a comment gives the default, as "(default: ...)".
# Precedence: command line, then STYLEFOLD_* environment variables, then this file.
# Relative paths are relative to this file's folder.

# root = "."                  # the hot folder (this file's folder when it lives there)
# device = "auto"             # auto (cuda, then mps, then cpu), cpu, cuda, cuda:N, mps
# weights = "imagenet"        # imagenet (downloaded once, 548 MB), a .pth path, or random
# threads = 8                 # CPU threads for torch (default: all cores)
# default_preset = "book"     # for images with no sidecar, preset.json or folder preset (default: none)
# presets_dir = "presets"     # your own NAME.json presets, their styles in presets/styles/ (default: none)
# style_dirs = []             # more folders style images may come from

# Caps a preset can never exceed (the job fails with kind too_large):
# max_steps = 2000
# max_size = 4096             # shorter side of the result, pixels
# memory_budget_mb = 0        # per optimisation; 0: 70% of GPU memory or 1/4 of RAM.
#                             # Larger results are made coarse to fine, in tiles.
# max_input_pixels = 100000000

# Watching:
# settle_s = 2.0              # a file is taken once unchanged this long
# pair_timeout_s = 30.0       # how long an image waits for its sidecar .json
# scan_interval_s = 30.0      # full rescan, in case file events were lost
# poll = false                # true on network shares (SMB/NFS): poll instead of inotify
# checkpoint_every = 50       # steps between checkpoints of a running job
# log_every_s = 10.0          # progress log line interval off a terminal

# The status page and HTTP API (README "Status page and HTTP API"):
# [web]
# listen = "127.0.0.1:8707"   # HOST:PORT, or "off"; an address off loopback needs a token
# token = "a-long-random-secret"  # (default: none) or STYLEFOLD_WEB_TOKEN; 16+ characters
# names = []                  # more host names the page is reached by (any other is refused)
# max_upload_mb = 200

# GPU workers on other machines (README "Several machines: workers"):
# [cluster]
# broker = "redis://gpu-hub:6379/0"  # (default: none: jobs run in this process) or STYLEFOLD_BROKER
# slots = 4                   # jobs in flight at once: the number of workers plus one
# lease_s = 20.0              # a worker silent this long is gone: its job goes to another
# visibility_timeout_s = 3600.0
# max_transfer_mb = 200       # largest photo, style, result or checkpoint sent through the broker
"""


def init_root(root: Path) -> list[Path]:
    """Create the hot-folder tree, ``inbox/NAME/`` for each built-in preset (a photo
    dropped there is made with that preset) and a commented config; returns what was
    created. Nothing that exists is touched."""
    hot = HotFolder(root)
    preset_inboxes = [hot.inbox / name for name in PresetLibrary.default().names()]
    created = [p for p in (hot.inbox, *preset_inboxes, hot.styles, hot.outbox, hot.logs, hot.done, hot.failed,
                           hot.work) if not p.exists()]
    hot.ensure()
    for folder in preset_inboxes:
        folder.mkdir(exist_ok=True)
    config = root / CONFIG_NAME
    if not config.exists():
        config.write_text(CONFIG_TEMPLATE, encoding="utf-8")
        created.append(config)
    return created


def submit_files(images: Sequence[Path], root: Path, preset: str | None = None) -> list[Path]:
    """Copy images into the inbox safely: a hidden temp name, fsync, then rename, so the
    daemon never sees half a file. ``preset``: a preset name (the image goes into
    ``inbox/NAME/``) or a preset JSON file (copied as each image's sidecar, first)."""
    hot = HotFolder(root)
    hot.inbox.mkdir(parents=True, exist_ok=True)
    target_dir = hot.inbox
    sidecar: Path | None = None
    if preset:
        as_file = Path(preset)
        if as_file.suffix.lower() == ".json":
            if not as_file.is_file():
                raise FileNotFoundError(f"preset file {as_file} does not exist")
            sidecar = as_file
        else:
            # A name, not a path: "../x" or "/x" put the images outside the inbox, where
            # nothing would ever process them (and ".x" is a folder the daemon ignores).
            if Path(preset).name != preset or preset.startswith(".") or is_ignored(preset):
                raise ValueError(f"--preset {preset!r}: give a preset name or a preset .json file")
            target_dir = hot.inbox / preset
            target_dir.mkdir(exist_ok=True)
    placed = []
    for image in images:
        if not image.is_file():
            raise FileNotFoundError(f"no such image: {image}")
        name = _free_name(target_dir, image.name, with_sidecar=sidecar is not None)
        if sidecar is not None:
            _copy_in(sidecar, target_dir / fit(Path(name).stem, ".json"))
        placed.append(_copy_in(image, target_dir / name))
    return placed


def _free_name(folder: Path, name: str, *, with_sidecar: bool) -> str:
    suffix = Path(name).suffix
    for candidate in free_names(Path(name).stem, suffix):
        stem = Path(candidate).stem
        # A photo named preset.* would get a sidecar named preset.json: the folder's preset.
        if with_sidecar and stem.lower() == "preset":
            continue
        if not (folder / candidate).exists() and not (with_sidecar and (folder / fit(stem, ".json")).exists()):
            return candidate
    raise FileExistsError(f"no free name for {name} in {folder}")


def _copy_in(src: Path, dest: Path) -> Path:
    with src.open("rb") as fin:
        # .part: ignored by the watcher until the no-overwrite rename makes it visible.
        atomic_write(dest, lambda fout: shutil.copyfileobj(fin, fout, 1 << 20), overwrite=False, suffix=".part")
    return dest


def status_report(config: Config, recent: int = 10) -> dict[str, Any]:
    """Queue (with why each file waits), running and interrupted jobs with progress,
    recent results and failures. Counts the queue as the daemon's console does."""
    hot = HotFolder(config.root)
    now = time.time()
    library = PresetLibrary.for_config(config)
    inbox = Inbox(hot, config.settle_s, config.pair_timeout_s, has_preset=lambda n: library.find(n) is not None,
                  default_preset=config.default_preset)
    inbox.scan(now, from_mtime=True)
    queue = inbox.queue(now, clock=clock)
    report: dict[str, Any] = {
        "root": str(hot.root.absolute()), "waiting": [w.source for w in queue],
        "queue": [{"source": w.source, "reason": w.reason, "since": round(w.since, 3)} for w in queue],
        "running": [], "recent_done": [], "recent_failed": [], "counts": {},
        "workers": broker_workers(config),
    }
    if not hot.journal.exists():
        return report
    try:
        journal = Journal(hot.journal, read_only=True)  # status moves and rebuilds nothing
    except JournalCorrupt as exc:
        report["journal_problem"] = (f"{exc}; the daemon moves it aside and rebuilds it from the folders "
                                     "at its next start")
        return report
    try:
        report["counts"] = journal.counts()
        for record in journal.by_state(JobState.RUNNING) + journal.by_state(JobState.QUEUED):
            report["running"].append({"job": record.id, "source": record.source, "state": _claim_state(hot, record.id),
                                      "attempts": record.attempts, "progress": record.progress,
                                      "since_s": round(now - record.updated, 1), "updated": record.updated})
        for record in journal.by_state(JobState.DONE, recent):
            report["recent_done"].append({"source": record.source, "output": record.output, "at": record.updated})
        for record in journal.by_state(JobState.FAILED, recent):
            report["recent_failed"].append({"source": record.source, "kind": record.error_kind,
                                            "error": record.error, "at": record.updated})
    finally:
        journal.close()
    return report


def broker_workers(config: Config) -> list[dict[str, Any]]:
    """With a broker (SPEC §8): its workers (name, device, weights, current job, last
    heartbeat); one entry with ``problem`` when the broker cannot be asked."""
    if not config.cluster.broker:
        return []
    from ..cluster.identity import identity_of_setting
    from ..cluster.protocol import redact
    from ..cluster.registry import list_workers
    from ..cluster.store import connect

    try:
        weights: str | None = identity_of_setting(config.weights)
    except ValueError:
        weights = None
    try:
        return list_workers(connect(config.cluster.broker, retries=0, timeout_s=2.0), weights)
    except Exception as exc:  # an unreachable broker is a line in the status, not a failure
        return [{"problem": f"cannot reach the broker {redact(config.cluster.broker)}: {exc}"}]


def _claim_state(hot: HotFolder, job_id: str) -> str:
    """``running`` while a live process holds the claim; ``interrupted`` when none does
    (the next start resumes it); ``stale`` when the claim is gone (a process died after
    moving the originals out: the file is in done/ or failed/)."""
    folder = hot.work / job_id
    if not folder.is_dir():
        return "stale"
    return "running" if is_held(folder) else "interrupted"


def clock(t: float) -> str:
    """A wall-clock time as a person reads it: HH:MM:SS today, else the date too."""
    moment = dt.datetime.fromtimestamp(t)
    return moment.strftime("%H:%M:%S" if moment.date() == dt.date.today() else "%Y-%m-%d %H:%M:%S")
