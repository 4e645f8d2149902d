"""systemd/stylefold-web.service: `systemd-analyze verify` accepts it, it runs
`stylefold web` on the root, unprivileged and sandboxed, and does not restart on a
setting error (exit 2)."""

from __future__ import annotations

from pathlib import Path

from .test_systemd_units import UNITS_DIR, _values, _verify

UNIT = UNITS_DIR / "stylefold-web.service"


def test_web_unit_passes_systemd_analyze_verify(tmp_path: Path) -> None:
    _verify(UNIT, tmp_path / "stylefold-web.service")


def test_web_unit_runs_stylefold_web_unprivileged_and_sandboxed() -> None:
    assert _values(UNIT, "ExecStart") == ["/usr/local/bin/stylefold web --root ${STYLEFOLD_ROOT}"]
    assert _values(UNIT, "User") == ["stylefold"] and _values(UNIT, "ProtectSystem") == ["strict"]
    assert _values(UNIT, "ReadWritePaths") == ["/srv/stylefold"] and _values(UNIT, "PrivateDevices") == ["yes"]
    assert _values(UNIT, "NoNewPrivileges") == ["yes"] and _values(UNIT, "CapabilityBoundingSet") == [""]
    assert _values(UNIT, "RestartPreventExitStatus") == ["2"]
    assert _values(UNIT, "EnvironmentFile") == ["-/etc/stylefold/stylefold.env"]
