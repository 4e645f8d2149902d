"""The systemd units: `systemd-analyze verify` accepts them, and they say what the SPEC needs.

verify refuses a unit whose ExecStart binary is missing, so the tests verify a copy whose
ExecStart points at this environment's `stylefold`. It does not check that User= exists.
Most mistakes (an unknown key, a bad value) are warnings with exit status 0, so any
line of verify's output that names our unit fails the test too.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

UNITS_DIR = Path(__file__).resolve().parent.parent / "systemd"
SERVICE = UNITS_DIR / "stylefold.service"
TEMPLATE = UNITS_DIR / "stylefold@.service"
INSTALLED_EXEC = "/usr/local/bin/stylefold"


def _systemd_analyze() -> str:
    found = shutil.which("systemd-analyze")
    if found is None:
        message = "systemd-analyze not installed (apt-get install systemd)"
        if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
            pytest.fail(f"{message}: CI must verify the units")
        pytest.skip(message)
    return found


def _local_exec() -> str:
    """This environment's stylefold command, quoted for an ExecStart= line."""
    found = shutil.which("stylefold")
    argv = [found] if found else [sys.executable, "-m", "stylefold"]
    return " ".join(f'"{a}"' if re.search(r"\s", a) else a for a in argv)


def _verify(unit_file: Path, target: Path) -> None:
    """Copy ``unit_file`` to ``target``'s folder with a runnable ExecStart, verify ``target``."""
    text = unit_file.read_text()
    assert f"ExecStart={INSTALLED_EXEC} " in text
    (target.parent / unit_file.name).write_text(text.replace(f"ExecStart={INSTALLED_EXEC} ",
                                                             f"ExecStart={_local_exec()} "))
    result = subprocess.run(
        [_systemd_analyze(), "verify", "--man=no", str(target)],
        capture_output=True, text=True, timeout=120,
    )
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    ours = [line for line in output.splitlines() if "stylefold" in line]
    assert ours == [], output


def _directives(unit_file: Path) -> list[tuple[str, str]]:
    pairs = []
    for line in unit_file.read_text().splitlines():
        line = line.strip()
        if line and not line.startswith(("#", ";", "[")):
            key, _, value = line.partition("=")
            pairs.append((key.strip(), value.strip()))
    return pairs


def _values(unit_file: Path, key: str) -> list[str]:
    return [v for k, v in _directives(unit_file) if k == key]


def test_service_passes_systemd_analyze_verify(tmp_path: Path) -> None:
    _verify(SERVICE, tmp_path / "stylefold.service")


def test_template_instance_passes_systemd_analyze_verify(tmp_path: Path) -> None:
    # verify resolves stylefold@0.service through the template in the same folder, as
    # systemctl would, so %i is expanded to "0".
    _verify(TEMPLATE, tmp_path / "stylefold@0.service")


def test_verify_catches_a_broken_unit(tmp_path: Path) -> None:
    """The check above can fail: a typo in a key is reported (as a warning, status 0)."""
    broken = tmp_path / "src" / "stylefold.service"
    broken.parent.mkdir()
    broken.write_text(SERVICE.read_text().replace("KillMode=mixed", "KillMode=mixd"))
    with pytest.raises(AssertionError, match="kill mode"):
        _verify(broken, tmp_path / "stylefold.service")


@pytest.mark.parametrize("unit_file", [SERVICE, TEMPLATE], ids=["service", "template"])
def test_unit_has_notify_restart_and_hardening(unit_file: Path) -> None:
    d = dict(_directives(unit_file))
    assert d["Type"] == "notify"
    assert d["NotifyAccess"] == "main"
    assert int(d["WatchdogSec"]) >= 60
    assert d["Restart"] == "on-failure"
    assert d["TimeoutStopSec"] == "90"
    assert d["KillMode"] == "mixed"
    assert d["ProtectSystem"] == "strict"
    assert "/srv/stylefold" in _values(unit_file, "ReadWritePaths")
    assert d["PrivateTmp"] == "yes"
    assert d["NoNewPrivileges"] == "yes"
    assert d["ProtectHome"] == "yes"
    assert d["User"] == d["Group"] == "stylefold"
    assert d["EnvironmentFile"] == "-/etc/stylefold/stylefold.env"
    assert d["StateDirectory"] == "stylefold"
    assert "TORCH_HOME=/var/lib/stylefold/torch" in _values(unit_file, "Environment")
    # CUDA JIT and PyTorch need writable+executable memory.
    assert "MemoryDenyWriteExecute" not in d


@pytest.mark.parametrize("unit_file", [SERVICE, TEMPLATE], ids=["service", "template"])
def test_unit_lets_the_nvidia_devices_through(unit_file: Path) -> None:
    d = dict(_directives(unit_file))
    assert d.get("PrivateDevices", "no") != "yes"
    assert d["DevicePolicy"] == "closed"
    allowed = {v.split()[0] for v in _values(unit_file, "DeviceAllow")}
    assert {"char-nvidia", "char-nvidia-frontend", "char-nvidia-uvm", "/dev/nvidiactl",
            "/dev/nvidia-uvm", "/dev/nvidia-uvm-tools", "/dev/nvidia-modeset"} <= allowed
    assert {"video", "render"} <= set(d["SupplementaryGroups"].split())


def test_service_runs_serve_on_the_root() -> None:
    argv = shlex.split(dict(_directives(SERVICE))["ExecStart"])
    assert argv == [INSTALLED_EXEC, "serve", "--root", "${STYLEFOLD_ROOT}"]
    assert "STYLEFOLD_ROOT=/srv/stylefold" in _values(SERVICE, "Environment")


def test_template_instance_is_the_cuda_device() -> None:
    argv = shlex.split(dict(_directives(TEMPLATE))["ExecStart"])
    # One daemon per GPU: the page of their root is stylefold-web.service's, not theirs.
    assert argv == [INSTALLED_EXEC, "serve", "--root", "${STYLEFOLD_ROOT}", "--device", "cuda:%i", "--web", "off"]


# ---------------------------------------------------------------- the GPU worker (SPEC §8)

WORKER = UNITS_DIR / "stylefold-worker@.service"


def test_worker_instance_passes_systemd_analyze_verify(tmp_path: Path) -> None:
    env = Path("/etc/stylefold/worker.env")
    if not env.exists():  # verify refuses a unit whose EnvironmentFile= is missing
        unit = tmp_path / "src" / WORKER.name
        unit.parent.mkdir()
        (tmp_path / "worker.env").write_text("STYLEFOLD_BROKER=redis://127.0.0.1:6379/0\n")
        unit.write_text(WORKER.read_text().replace(f"EnvironmentFile={env}",
                                                   f"EnvironmentFile={tmp_path / 'worker.env'}"))
        _verify(unit, tmp_path / "stylefold-worker@0.service")
    else:
        _verify(WORKER, tmp_path / "stylefold-worker@0.service")


def test_worker_unit_runs_one_worker_per_gpu_with_the_broker_from_an_environment_file() -> None:
    d = dict(_directives(WORKER))
    argv = shlex.split(d["ExecStart"])
    assert argv == [INSTALLED_EXEC, "worker", "--device", "cuda:%i", "--name", "%H-gpu%i"]
    assert d["EnvironmentFile"] == "/etc/stylefold/worker.env"  # the password lives there only
    assert "redis://" not in WORKER.read_text().split("[Unit]")[1]  # never a URL in a directive
    assert d["Restart"] == "on-failure" and d["KillSignal"] == "SIGTERM" and d["TimeoutStopSec"] == "90"
    assert d["ProtectSystem"] == "strict" and "ReadWritePaths" not in d  # no shared hot folder
    assert d["CacheDirectory"] == "stylefold-worker" and d["User"] == "stylefold"
    assert d["DevicePolicy"] == "closed" and "MemoryDenyWriteExecute" not in d
