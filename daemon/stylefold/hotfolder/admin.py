"""``stylefold init``, ``submit`` and ``status``: the hot folder from the outside.

No torch: these run in an editor's export hook or a shell and must start fast.
"""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ..config import CONFIG_NAME
from ..fsops import atomic_write, free_names
from .journal import JobState, Journal
from .layout import PRESET_FILE, HotFolder, is_ignored, is_image

__all__ = ["CONFIG_TEMPLATE", "init_root", "status_report", "submit_files"]

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
"""


def init_root(root: Path) -> list[Path]:
    """Create the hot-folder tree and a commented config; returns what was created."""
    hot = HotFolder(root)
    created = [p for p in (hot.inbox, hot.styles, hot.outbox, hot.logs, hot.done, hot.failed, hot.work)
               if not p.exists()]
    hot.ensure()
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
            _copy_in(sidecar, target_dir / f"{Path(name).stem}.json")
        placed.append(_copy_in(image, target_dir / name))
    return placed


def _free_name(folder: Path, name: str, *, with_sidecar: bool) -> str:
    suffix = Path(name).suffix
    for stem in free_names(Path(name).stem):
        # A photo named preset.* would get a sidecar named preset.json: the folder's preset.
        if with_sidecar and stem.lower() == "preset":
            continue
        if not (folder / f"{stem}{suffix}").exists() and not (with_sidecar and (folder / f"{stem}.json").exists()):
            return f"{stem}{suffix}"
    raise FileExistsError(f"no free name for {name} in {folder}")


def _copy_in(src: Path, dest: Path) -> Path:
    with src.open("rb") as fin:
        # .part: ignored by the watcher until the no-overwrite rename makes it visible.
        atomic_write(dest, lambda fout: shutil.copyfileobj(fin, fout, 1 << 20), overwrite=False, suffix=".part")
    return dest


def status_report(root: Path, recent: int = 10) -> dict[str, Any]:
    """Queue, running jobs with progress, recent results and failures."""
    hot = HotFolder(root)
    waiting = []
    if hot.inbox.is_dir():
        for dirpath, dirnames, filenames in os.walk(hot.inbox):
            dirnames[:] = [d for d in dirnames if not is_ignored(d)]
            for name in filenames:
                counted = is_image(name) or not name.endswith(".json")
                if counted and not is_ignored(name) and name.lower() != PRESET_FILE:
                    waiting.append(hot.relative(Path(dirpath) / name))
    report: dict[str, Any] = {"root": str(hot.root.absolute()), "waiting": sorted(waiting), "running": [],
                              "recent_done": [], "recent_failed": [], "counts": {}}
    if not hot.journal.exists():
        return report
    journal = Journal(hot.journal)
    try:
        report["counts"] = journal.counts()
        for record in journal.by_state(JobState.RUNNING) + journal.by_state(JobState.QUEUED):
            # A row whose claim folder is gone belongs to a process that died after
            # moving the originals out: the file is in done/ or failed/, not running.
            state = record.state.value if (hot.work / record.id).is_dir() else "stale"
            report["running"].append({"job": record.id, "source": record.source, "state": state,
                                      "attempts": record.attempts, "progress": record.progress,
                                      "since_s": round(time.time() - record.updated, 1)})
        for record in journal.by_state(JobState.DONE, recent):
            report["recent_done"].append({"source": record.source, "output": record.output,
                                          "at": record.updated})
        for record in journal.by_state(JobState.FAILED, recent):
            report["recent_failed"].append({"source": record.source, "kind": record.error_kind,
                                            "error": record.error, "at": record.updated})
    finally:
        journal.close()
    return report
