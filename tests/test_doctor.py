"""`stylefold doctor` on real hot folders in tmp_path; a few mocked backends (st_dev,
disk_usage, the inotify limits) where the real condition cannot be made in a test."""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import NamedTuple

import pytest

from stylefold.cli import doctor
from stylefold.cli.doctor import Check, exit_code, format_checks, run_doctor
from stylefold.config import Config
from stylefold.hotfolder.layout import HotFolder


class DiskUsage(NamedTuple):
    total: int
    used: int
    free: int


def _run(root: Path, unit_dir: Path | None = None, **config: object) -> dict[str, Check]:
    settings = Config.model_validate({"root": root, "device": "cpu", "weights": "random", **config})
    units = (unit_dir,) if unit_dir is not None else ()
    return {c.name: c for c in run_doctor(settings, unit_paths=units)}


@pytest.fixture
def hot(tmp_path: Path) -> HotFolder:
    folder = HotFolder(tmp_path / "hot")
    folder.ensure()
    return folder


def test_good_hot_folder_passes_the_folder_checks(hot: HotFolder) -> None:
    checks = _run(hot.root)
    assert checks["folders"].status == "OK", checks["folders"]
    assert checks["filesystem"].status == "OK", checks["filesystem"]
    assert checks["versions"].status == "OK"
    assert "torch" in checks["versions"].detail
    # The write probe leaves nothing behind.
    assert [p.name for p in hot.inbox.iterdir()] == []


def test_missing_folder_fails_with_stylefold_init(hot: HotFolder) -> None:
    hot.done.rmdir()
    check = _run(hot.root)["folders"]
    assert check.status == "FAIL"
    assert "done/" in check.detail
    assert f"stylefold init {hot.root}" in check.fix


def test_missing_root_fails_with_stylefold_init(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    real_disk_usage = shutil.disk_usage
    measured: list[Path] = []

    def disk_usage(path: os.PathLike[str] | str) -> DiskUsage:
        real_disk_usage(path)  # raises for a path that does not exist, as the real check would
        measured.append(Path(path))
        return DiskUsage(100 * 1024**3, 50 * 1024**3, 50 * 1024**3)

    monkeypatch.setattr(shutil, "disk_usage", disk_usage)
    checks = _run(tmp_path / "nowhere")
    assert checks["folders"].status == "FAIL"
    assert "stylefold init" in checks["folders"].fix
    # The disk is measured on the nearest parent that exists, not failed for the missing root.
    assert checks["disk"].status == "OK", checks["disk"]
    assert measured == [tmp_path]
    assert checks["disk"].detail == f"50.0 GiB free of 100.0 GiB at {tmp_path}"


def _user_name(uid: int) -> str:
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return f"uid {uid}"


def _daemon_ids() -> tuple[int, int]:
    """The uid and gid of an unprivileged user, as the daemon runs: this one, unless it
    is root (CI), for whom the kernel enforces no mode bits; then nobody."""
    if os.geteuid() != 0:
        return os.geteuid(), os.getegid()
    try:
        nobody = pwd.getpwnam("nobody")
    except KeyError:
        return 65534, 65534
    return nobody.pw_uid, nobody.pw_gid


@contextlib.contextmanager
def _acting_as(uid: int, gid: int) -> Iterator[None]:
    """The body runs with real and effective ids ``uid``/``gid`` and no supplementary
    groups; the saved ids stay root's, to switch back. Leaving uid 0 clears the effective
    capabilities, so mode bits bind as for the daemon's own user. No-op for the current
    user."""
    if (uid, gid) == (os.geteuid(), os.getegid()):
        yield
        return
    uids, gids, groups = os.getresuid(), os.getresgid(), os.getgroups()
    try:
        try:
            os.setgroups([])
            os.setresgid(gid, gid, gids[2])
            os.setresuid(uid, uid, uids[2])
        except PermissionError as exc:
            pytest.skip(f"root without CAP_SETUID/CAP_SETGID cannot act as uid {uid}: {exc}")
        yield
    finally:
        os.setresuid(*uids)
        os.setresgid(*gids)
        os.setgroups(groups)


def test_read_only_inbox_fails_with_chown(monkeypatch: pytest.MonkeyPatch) -> None:
    """The daemon's user owns the hot folder but its inbox/ is 0o555. Root writes through
    that, so under root the folder check runs as nobody (the rest of the doctor as root)."""
    uid, gid = _daemon_ids()
    ids_before = (os.getresuid(), os.getresgid(), os.getgroups())
    # Not tmp_path: pytest keeps that in a 0o700 folder of root's, which nobody cannot enter.
    with tempfile.TemporaryDirectory(prefix="stylefold-doctor-") as tmp:
        hot = HotFolder(Path(tmp) / "hot")
        hot.ensure()
        for path in (Path(tmp), *Path(tmp).rglob("*")):
            os.chown(path, uid, gid)
        hot.inbox.chmod(0o555)
        check_folders = doctor._check_folders

        def check_as_daemon(folder: HotFolder) -> tuple[str, str, str]:
            with _acting_as(uid, gid):
                return check_folders(folder)

        monkeypatch.setattr(doctor, "_check_folders", check_as_daemon)
        try:
            check = _run(hot.root)["folders"]
        finally:
            hot.inbox.chmod(0o755)
    assert (os.getresuid(), os.getresgid(), os.getgroups()) == ids_before  # switched back
    assert check.status == "FAIL", check
    # Only the inbox: the other folders are the user's and writable.
    assert check.detail == f"{hot.root}: not writable as {_user_name(uid)}: inbox/"
    assert "chown" in check.fix


def _as_if_mounted(monkeypatch: pytest.MonkeyPatch, folder: Path) -> None:
    """``os.stat`` says ``folder`` is on another device, as if it were a mount."""
    real_stat = os.stat

    def stat(path: os.PathLike[str] | str, *args: object, **kwargs: object) -> os.stat_result:
        result = real_stat(path, *args, **kwargs)  # type: ignore[arg-type]
        if Path(path) == folder:
            fields = list(result)
            fields[2] = result.st_dev + 1  # index 2 is st_dev
            return os.stat_result(fields)
        return result

    monkeypatch.setattr(os, "stat", stat)


def test_done_on_another_filesystem_is_fine_and_said(hot: HotFolder, monkeypatch: pytest.MonkeyPatch) -> None:
    _as_if_mounted(monkeypatch, hot.done)
    check = _run(hot.root)["filesystem"]
    assert check.status == "OK"
    assert "done/ on another filesystem" in check.detail and "copy" in check.detail


def test_state_on_another_filesystem_than_the_inbox_fails(hot: HotFolder, monkeypatch: pytest.MonkeyPatch) -> None:
    _as_if_mounted(monkeypatch, hot.state)
    check = _run(hot.root)["filesystem"]
    assert check.status == "FAIL"
    assert "inbox/ and .stylefold/" in check.detail
    assert "one filesystem" in check.fix


@pytest.mark.parametrize(("free", "status"), [(100 * 1024**2, "FAIL"), (1024**3, "WARN"), (50 * 1024**3, "OK")])
def test_free_space_thresholds(hot: HotFolder, monkeypatch: pytest.MonkeyPatch, free: int, status: str) -> None:
    total = 100 * 1024**3
    monkeypatch.setattr(shutil, "disk_usage", lambda path: DiskUsage(total, total - free, free))
    assert _run(hot.root)["disk"].status == status


def test_low_inotify_limits_warn_with_the_sysctl(hot: HotFolder, tmp_path: Path,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    limits = tmp_path / "inotify"
    limits.mkdir()
    (limits / "max_user_watches").write_text("4096\n")
    (limits / "max_user_instances").write_text("128\n")
    monkeypatch.setattr(doctor, "INOTIFY_DIR", limits)
    monkeypatch.setattr(sys, "platform", "linux")
    check = _run(hot.root)["inotify"]
    assert check.status == "WARN"
    assert "4096" in check.detail
    assert "fs.inotify.max_user_watches=" in check.fix and "sysctl" in check.fix
    assert "max_user_instances=" not in check.fix

    (limits / "max_user_watches").write_text("524288\n")
    assert _run(hot.root)["inotify"].status == "OK"
    assert _run(hot.root, poll=True)["inotify"].status == "OK"


def test_cpu_device_warns(hot: HotFolder) -> None:
    check = _run(hot.root, device="cpu")["device"]
    assert check.status == "WARN"
    assert "no GPU" in check.detail
    assert "native bf16" in check.detail


@pytest.mark.parametrize("version_line", [
    "NVRM version: NVIDIA UNIX Open Kernel Module for x86_64  570.86.15  Release Build  (dvs-builder@U16)",
    "NVRM version: NVIDIA UNIX x86_64 Kernel Module  570.86.15  Sat Aug 19 01:15:15 UTC 2023",
], ids=["open", "proprietary"])
def test_cuda_device_names_gpu_memory_and_driver(
    hot: HotFolder, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, version_line: str
) -> None:
    """The GPU branch, with torch.cuda mocked: CI has no GPU."""
    import torch

    version_file = tmp_path / "nvidia-version"
    version_file.write_text(version_line + "\nGCC version:  gcc version 12.2.0\n")
    monkeypatch.setattr(doctor, "NVIDIA_VERSION_FILE", version_file)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    props = SimpleNamespace(name="NVIDIA H200", total_memory=141 * 1024**3, major=9, minor=0)
    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda index: props)
    check = _run(hot.root, device="cuda:1")["device"]
    assert check.status == "OK", check
    assert check.detail.startswith("cuda:1 NVIDIA H200, 141 GiB, compute 9.0, driver 570.86.15")
    assert "native bf16 yes" in check.detail


def test_unavailable_cuda_fails_with_a_fix(hot: HotFolder, monkeypatch: pytest.MonkeyPatch) -> None:
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    check = _run(hot.root, device="cuda:0")["device"]
    assert check.status == "FAIL"
    assert "CUDA is not available" in check.detail
    assert "nvidia-smi" in check.fix and "DeviceAllow" in check.fix


def test_random_weights_warn(hot: HotFolder) -> None:
    check = _run(hot.root, weights="random")["weights"]
    assert check.status == "WARN"
    assert "not for production" in check.detail


def test_weights_file_that_is_not_a_state_dict_fails(hot: HotFolder, tmp_path: Path) -> None:
    bogus = tmp_path / "vgg19.pth"
    bogus.write_bytes(b"this is not a pickle")
    check = _run(hot.root, weights=str(bogus))["weights"]
    assert check.status == "FAIL"
    assert str(bogus) in check.detail
    assert "state_dict" in check.fix


def test_missing_weights_file_fails(hot: HotFolder, tmp_path: Path) -> None:
    check = _run(hot.root, weights=str(tmp_path / "absent.pth"))["weights"]
    assert check.status == "FAIL"
    assert "does not exist" in check.detail


def test_weights_file_of_vgg19_passes_with_its_sha256(hot: HotFolder, weights_file: Path) -> None:
    from stylefold.safeopen import sha256_regular

    check = _run(hot.root, weights=str(weights_file))["weights"]
    assert check.status == "OK", check
    assert sha256_regular(weights_file) in check.detail


def test_imagenet_weights_not_downloaded_warn_with_url_size_and_place(
    hot: HotFolder, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import torch

    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))
    check = _run(hot.root, weights="imagenet")["weights"]
    assert check.status == "WARN"
    assert "vgg19-dcbb9e9d.pth" in check.detail and "548 MB" in check.detail
    assert "https://download.pytorch.org/models/vgg19-dcbb9e9d.pth" in check.fix
    assert str(tmp_path / "hub" / "checkpoints" / "vgg19-dcbb9e9d.pth") in check.fix


def test_imagenet_weights_with_wrong_hash_fail(
    hot: HotFolder, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import torch

    cached = tmp_path / "hub" / "checkpoints" / "vgg19-dcbb9e9d.pth"
    cached.parent.mkdir(parents=True)
    cached.write_bytes(b"a truncated download")
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))
    check = _run(hot.root, weights="imagenet")["weights"]
    assert check.status == "FAIL"
    assert "dcbb9e9d" in check.detail
    assert f"delete {cached}" in check.fix


def test_installed_unit_is_found(hot: HotFolder, tmp_path: Path) -> None:
    units = tmp_path / "units"
    units.mkdir()
    assert _run(hot.root, unit_dir=units)["unit"].status == "WARN"
    assert "systemctl enable --now stylefold" in _run(hot.root, unit_dir=units)["unit"].fix
    (units / "stylefold@.service").write_text("[Service]\n")
    check = _run(hot.root, unit_dir=units)["unit"]
    assert check.status == "OK"
    assert "stylefold@.service" in check.detail


def test_a_check_that_crashes_is_a_fail_not_an_exception(
    hot: HotFolder, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken(path: Path) -> None:
        raise RuntimeError("statvfs exploded")

    monkeypatch.setattr(shutil, "disk_usage", broken)
    checks = _run(hot.root)
    assert checks["disk"].status == "FAIL"
    assert "statvfs exploded" in checks["disk"].detail
    assert checks["folders"].status == "OK"  # the others still ran
    assert len(checks) == 9


def test_format_checks_and_exit_code() -> None:
    checks = [
        Check("device", "OK", "cuda:0 NVIDIA H200"),
        Check("weights", "WARN", "random weights", "use --weights imagenet"),
        Check("folders", "FAIL", "inbox/ missing", "stylefold init ROOT"),
    ]
    lines = format_checks(checks).splitlines()
    assert lines[0].split() == ["OK", "device", "cuda:0", "NVIDIA", "H200"]
    assert lines[1].startswith("WARN weights ")
    assert lines[2].strip() == "fix: use --weights imagenet"
    assert lines[3].startswith("FAIL folders ")
    assert lines[4].strip() == "fix: stylefold init ROOT"
    assert len(lines) == 5  # no fix line under OK
    assert exit_code(checks) == 2
    assert exit_code(checks[:2]) == 0
    assert exit_code([]) == 0
