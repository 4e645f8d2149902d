"""`stylefold doctor`: is this machine ready to run the daemon? (SPEC §2)

Each check gives OK, WARN or FAIL and, unless OK, the command or step that fixes it.
The doctor never raises: a check that crashes becomes a FAIL of that check. torch is
imported only inside the device and weights checks, so the folder checks stay fast.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import logging
import os
import platform
import pwd
import re
import shutil
import sys
import tempfile
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from ..config import Config, load_config
from ..hotfolder.layout import HotFolder
from ..hotfolder.waits import human_size
from ..safeopen import sha256_regular
from .common import with_broker

__all__ = ["DEFAULT_UNIT_PATHS", "Check", "Status", "add_parser", "exit_code", "format_checks", "run_doctor"]

logger = logging.getLogger(__name__)

Status = Literal["OK", "WARN", "FAIL"]
_Result = tuple[Status, str, str]  # status, detail, fix

DEFAULT_UNIT_PATHS = (Path("/etc/systemd/system"), Path("/lib/systemd/system"), Path("/usr/lib/systemd/system"))
UNIT_NAMES = ("stylefold.service", "stylefold@.service")
# The units set TORCH_HOME so that the weights live in their StateDirectory.
UNIT_CHECKPOINTS = Path("/var/lib/stylefold/torch/hub/checkpoints")
INOTIFY_DIR = Path("/proc/sys/fs/inotify")
NVIDIA_VERSION_FILE = Path("/proc/driver/nvidia/version")
MIN_INOTIFY_WATCHES = 8192
MIN_INOTIFY_INSTANCES = 128
WARN_FREE_BYTES = 2 * 1024**3
FAIL_FREE_BYTES = 200 * 1024**2
_GIB = 1024**3


def add_parser(sub: Any) -> None:
    doctor = sub.add_parser("doctor", help="check device, weights, folder permissions, inotify limits, disk space")
    doctor.add_argument("--root", type=Path, default=None)
    doctor.add_argument("--config", type=Path, default=None)
    doctor.add_argument("--device", default=None)
    doctor.add_argument("--weights", default=None)
    doctor.add_argument("--broker", default=None,
                        help="also check this Redis broker and its workers (default: [cluster] broker)")
    doctor.set_defaults(func=cmd_doctor)


def cmd_doctor(args: argparse.Namespace) -> int:
    config = load_config(args.config, {"root": args.root, "device": args.device, "weights": args.weights})
    checks = run_doctor(with_broker(config, args.broker))
    print(format_checks(checks))
    return exit_code(checks)


@dataclass(frozen=True)
class Check:
    name: str
    status: Status
    detail: str
    fix: str = ""


def run_doctor(config: Config, *, unit_paths: Iterable[Path] = DEFAULT_UNIT_PATHS) -> list[Check]:
    hot = HotFolder(config.root)
    steps: list[tuple[str, Callable[[], _Result]]] = [
        ("versions", _check_versions),
        ("device", lambda: _check_device(config.device)),
        ("weights", lambda: _check_weights(config.weights)),
        ("folders", lambda: _check_folders(hot)),
        ("filesystem", lambda: _check_filesystem(hot)),
        ("disk", lambda: _check_disk(hot)),
        ("journal", lambda: _check_journal(hot)),
        ("inotify", lambda: _check_inotify(config.poll)),
        ("unit", lambda: _check_unit(tuple(unit_paths))),
    ]
    if config.cluster.broker:  # SPEC §8 (cluster/registry.py)
        from ..cluster.registry import check_broker

        steps.append(("broker", lambda: check_broker(config.cluster.broker or "", config.weights)))
    return [_guarded(name, step) for name, step in steps]


def format_checks(checks: Sequence[Check]) -> str:
    width = max((len(c.name) for c in checks), default=0)
    lines: list[str] = []
    fixes: set[str] = set()
    for c in checks:
        lines.append(f"{c.status:<4} {c.name:<{width}}  {c.detail}")
        if c.status != "OK" and c.fix and c.fix not in fixes:  # one fix for two checks is said once
            fixes.add(c.fix)
            lines.append(f"{'':<4} {'':<{width}}  fix: {c.fix}")
    return "\n".join(lines)


def exit_code(checks: Iterable[Check]) -> int:
    """2 (SPEC: bad configuration) if any check failed, else 0; warnings pass."""
    return 2 if any(c.status == "FAIL" for c in checks) else 0


def _guarded(name: str, step: Callable[[], _Result]) -> Check:
    try:
        status, detail, fix = step()
    except Exception as exc:  # a doctor that crashes diagnoses nothing
        logger.debug("doctor check %s crashed", name, exc_info=True)
        return Check(name, "FAIL", f"the check itself failed: {type(exc).__name__}: {exc}",
                     "run `stylefold -v doctor` for the traceback and report it")
    return Check(name, status, detail, fix)


def _check_versions() -> _Result:
    from .. import __version__

    found, missing = [f"python {platform.python_version()}"], []
    for dist in ("torch", "torchvision"):
        try:
            found.append(f"{dist} {importlib.metadata.version(dist)}")
        except importlib.metadata.PackageNotFoundError:
            missing.append(dist)
    found.append(f"stylefold {__version__}")
    if missing:
        return "FAIL", f"{', '.join(missing)} not installed; {', '.join(found)}", "pip install torch torchvision"
    return "OK", ", ".join(found), ""


def _check_device(name: str) -> _Result:
    import torch

    from ..engine.runtime import resolve_device

    try:
        device = resolve_device(name)
    except ValueError as exc:
        return ("FAIL", str(exc), "check `nvidia-smi` and the driver (under systemd also the unit's "
                "DeviceAllow= lines and that nvidia-uvm is loaded), or use --device auto or cpu")
    if device.type == "cuda":
        index = device.index if device.index is not None else torch.cuda.current_device()
        props = torch.cuda.get_device_properties(index)
        # Tensor-core bf16 from Ampere (8.x) on; torch.cuda.is_bf16_supported() also says
        # yes for emulated bf16, which is slower than fp32.
        bf16 = "yes" if props.major >= 8 else "no (fp32)"
        return ("OK", f"cuda:{index} {props.name}, {props.total_memory / _GIB:.0f} GiB, compute "
                f"{props.major}.{props.minor}, driver {_nvidia_driver() or 'unknown'}, "
                f"CUDA {torch.version.cuda}, native bf16 {bf16}", "")
    if device.type == "mps":
        return "OK", "mps (Apple GPU)", ""
    from ..engine.runtime import cpu_bf16

    native, why = cpu_bf16()
    bf16 = f"yes, precision auto is bf16: {why}" if native else f"no, precision auto is fp32: {why}"
    return ("WARN", f"no GPU: CPU steps are ~10-100x slower; cpu, {torch.get_num_threads()} threads, "
            f"native bf16 {bf16}", "install the NVIDIA driver and a CUDA build of torch, or expect "
            "slow jobs (`stylefold bench` measures them)")


def _nvidia_driver() -> str | None:
    try:
        text = NVIDIA_VERSION_FILE.read_text()
    except OSError:
        return None
    match = re.search(r"Kernel Module\b.*?\s(\d+\.\d+(?:\.\d+)?)\s", text)
    return match.group(1) if match else None


def _check_weights(weights: str) -> _Result:
    if weights == "random":
        return ("WARN", "random weights: for tests and smoke runs only, not for production",
                "use --weights imagenet (the default) or a path to a vgg19 state dict")
    if weights == "imagenet":
        return _check_imagenet()
    return _check_weights_file(Path(weights))


def _check_imagenet() -> _Result:
    import torch
    from torchvision.models import VGG19_Weights

    entry = VGG19_Weights.IMAGENET1K_V1
    file_name = entry.url.rsplit("/", 1)[-1]
    size_mb = entry.meta["_file_size"]
    cached = Path(torch.hub.get_dir()) / "checkpoints" / file_name
    if not cached.is_file():
        unit_note = "" if cached.parent == UNIT_CHECKPOINTS else f" (for the systemd units: {UNIT_CHECKPOINTS}/)"
        return ("WARN", f"ImageNet weights {file_name} ({size_mb:.0f} MB) not downloaded yet: the first start "
                f"downloads them to {cached}", f"offline: download {entry.url} elsewhere and copy it to "
                f"{cached}{unit_note}")
    # torch.hub names its files NAME-<first hex digits of the sha256>.EXT.
    prefix = re.search(r"-([0-9a-f]+)\.", file_name)
    digest = sha256_regular(cached, follow_symlinks=True)
    if prefix and not digest.startswith(prefix.group(1)):
        return ("FAIL", f"{cached}: sha256 {digest} does not start with {prefix.group(1)} (truncated or corrupt)",
                f"delete {cached} and download {entry.url} again")
    return "OK", f"imagenet {cached} ({size_mb:.0f} MB), sha256 {digest}", ""


def _check_weights_file(path: Path) -> _Result:
    fix = "give --weights a torchvision vgg19 state dict: torch.save(model.state_dict(), PATH)"
    if not path.is_file():
        return "FAIL", f"weights file {path} does not exist", fix
    from ..engine.features import WeightsError, load_vgg19_features

    try:
        _, info = load_vgg19_features(path)
    except WeightsError as exc:
        return "FAIL", str(exc), fix
    return "OK", f"{path}: VGG19 features, sha256 {info.sha256}", ""


def _hot_folders(hot: HotFolder) -> dict[str, Path]:
    return {"inbox/": hot.inbox, "styles/": hot.styles, "outbox/": hot.outbox, "outbox/logs/": hot.logs,
            "done/": hot.done, "failed/": hot.failed, ".stylefold/": hot.state}


def _check_folders(hot: HotFolder) -> _Result:
    init = f"stylefold init {hot.root}"
    if not hot.root.is_dir():
        return "FAIL", f"hot-folder root {hot.root} does not exist", init
    missing, unwritable = [], []
    for label, folder in _hot_folders(hot).items():
        if not folder.is_dir():
            missing.append(label)
        elif not _writable(folder):
            unwritable.append(label)
    user = _user_name()
    chown = (f"sudo chown -R stylefold:stylefold {hot.root} && sudo chmod -R u+rwX {hot.root} (the daemon's user; "
             f"`sudo -u stylefold stylefold doctor --root {hot.root}` checks as that user)")
    problems = ([f"missing: {', '.join(missing)}"] if missing else []) + (
        [f"not writable as {user}: {', '.join(unwritable)}"] if unwritable else [])
    if problems:
        fix = " and ".join(([init] if missing else []) + ([chown] if unwritable else []))
        return "FAIL", f"{hot.root}: {'; '.join(problems)}", fix
    return "OK", f"{hot.root}: all {len(_hot_folders(hot))} folders present and writable as {user}", ""


def _check_journal(hot: HotFolder) -> _Result:
    """The journal opens and passes ``PRAGMA quick_check`` (read-only: moves nothing)."""
    from ..hotfolder.journal import journal_problem

    if not hot.journal.exists():
        return "OK", f"{hot.journal} not made yet (the daemon creates it at its first start)", ""
    problem = journal_problem(hot.journal)
    if problem is None:
        return "OK", f"{hot.journal} opens and passes quick_check", ""
    if "locked" in problem:
        return "WARN", problem, "another process holds the journal's lock; the daemon waits for it"
    return ("WARN", problem, "nothing to do by hand: the daemon moves it aside (kept, named with the time) and "
            "rebuilds it from done/, failed/, outbox/logs/ and its claims at its next start")


def _writable(folder: Path) -> bool:
    """os.access alone trusts mode bits; a read-only mount or an ACL can still refuse.
    The probe's leading dot makes the watcher ignore it (SPEC §3)."""
    if not os.access(folder, os.W_OK | os.X_OK):
        return False
    try:
        fd, probe = tempfile.mkstemp(prefix=".doctor-", suffix=".tmp", dir=folder)
        os.close(fd)
        os.unlink(probe)
    except OSError:
        return False
    return True


def _user_name() -> str:
    try:
        return pwd.getpwuid(os.geteuid()).pw_name
    except KeyError:
        return f"uid {os.geteuid()}"


def _check_filesystem(hot: HotFolder) -> _Result:
    """inbox/ and .stylefold/ must share a filesystem (a claim is a rename); outbox/,
    done/ and failed/ may be elsewhere (a NAS mount): files reach them by copy, fsync,
    rename, then unlink of the source."""
    folders = {label: path for label, path in _hot_folders(hot).items()
               if label in ("inbox/", "outbox/", "done/", "failed/", ".stylefold/")}
    absent = [label for label, path in folders.items() if not path.is_dir()]
    if absent:
        return "WARN", f"not checked: {', '.join(absent)} missing", f"stylefold init {hot.root}"
    devices = {label: os.stat(path).st_dev for label, path in folders.items()}
    if devices["inbox/"] != devices[".stylefold/"]:
        return ("FAIL", "inbox/ and .stylefold/ are on different filesystems: files cannot be claimed "
                "(a claim is an atomic rename)",
                f"keep inbox/ and .stylefold/ of {hot.root} on one filesystem (no mount or symlink to another disk)")
    apart = [label for label, dev in devices.items() if dev != devices["inbox/"]]
    if apart:
        return ("OK", f"{', '.join(apart)} on another filesystem than inbox/: files reach them by copy, fsync "
                "and rename, then the source is removed (safe across a crash, slower than a rename)", "")
    return "OK", f"{', '.join(devices)} on one filesystem: moves are atomic renames", ""


def _check_disk(hot: HotFolder) -> _Result:
    """Free space on every filesystem the hot folder writes to."""
    places: dict[int, Path] = {}
    for folder in _hot_folders(hot).values():
        where = folder.absolute()
        while not where.exists() and where != where.parent:
            where = where.parent
        places.setdefault(os.stat(where).st_dev, where)
    worst: Status = "OK"
    details = []
    for where in places.values():
        usage = shutil.disk_usage(where)
        details.append(f"{human_size(usage.free)} free of {human_size(usage.total)} at {where}")
        if usage.free < FAIL_FREE_BYTES:
            worst = "FAIL"
        elif usage.free < WARN_FREE_BYTES and worst == "OK":
            worst = "WARN"
    fix = ("free space: empty done/ and old outbox/ results, or move the hot folder; meanwhile the daemon waits "
           "(photos stay in the inbox) and goes on by itself once there is room") if worst != "OK" else ""
    return worst, "; ".join(details), fix


def _check_inotify(poll: bool) -> _Result:
    if poll:
        return "OK", "poll = true in the config: the watcher polls, inotify is not used", ""
    if not sys.platform.startswith("linux"):
        return "OK", f"{sys.platform}: no inotify, the watcher uses the platform's own events", ""
    try:
        watches = int((INOTIFY_DIR / "max_user_watches").read_text())
        instances = int((INOTIFY_DIR / "max_user_instances").read_text())
    except (OSError, ValueError) as exc:
        return "WARN", f"cannot read the inotify limits: {exc}", "if new files are not seen, set poll = true"
    detail = f"max_user_watches {watches}, max_user_instances {instances}"
    fixes = []
    if watches < MIN_INOTIFY_WATCHES:
        fixes.append("fs.inotify.max_user_watches=524288")
    if instances < MIN_INOTIFY_INSTANCES:
        fixes.append("fs.inotify.max_user_instances=512")
    if fixes:
        settings = "\\n".join(fixes)
        return ("WARN", f"{detail}: too low, watching can fail with 'no space left on device'",
                f"printf '{settings}\\n' | sudo tee /etc/sysctl.d/60-stylefold.conf && sudo sysctl --system")
    return "OK", detail, ""


def _check_unit(unit_paths: tuple[Path, ...]) -> _Result:
    found = [str(d / n) for d in unit_paths for n in UNIT_NAMES if os.path.isfile(d / n)]
    if found:
        return "OK", f"installed: {', '.join(found)}", ""
    return ("WARN", f"no systemd unit in {', '.join(str(d) for d in unit_paths)}",
            "sudo cp systemd/stylefold.service /etc/systemd/system/ && sudo systemctl daemon-reload && "
            "sudo systemctl enable --now stylefold (or stylefold@.service: one instance per GPU, "
            "enable stylefold@0 stylefold@1 ...)")
