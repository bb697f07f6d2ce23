"""The shipped unit passes `systemd-analyze verify` with no warning and rates well on `security`."""

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

UNIT = Path(__file__).resolve().parents[2] / "systemd" / "calmd.service"
pytestmark = pytest.mark.skipif(
    shutil.which("systemd-analyze") is None, reason="needs systemd-analyze (Debian: systemd)"
)


def installed_copy(tmp_path: Path) -> Path:
    """The unit with ExecStart pointing at this environment's calmd (verify checks the binary exists)."""
    calmd = Path(sys.executable).with_name("calmd")
    assert calmd.exists(), "calmd console script is not installed"
    unit = tmp_path / "calmd.service"
    unit.write_text(UNIT.read_text().replace("/opt/calm/.venv/bin/calmd", str(calmd)))
    return unit


def test_verify_prints_no_warning(tmp_path: Path) -> None:
    proc = subprocess.run(["systemd-analyze", "verify", str(installed_copy(tmp_path))], capture_output=True, text=True)
    assert proc.returncode == 0 and proc.stderr.strip() == "", proc.stderr


def test_verify_would_catch_a_bad_key(tmp_path: Path) -> None:
    unit = installed_copy(tmp_path)
    unit.write_text(unit.read_text().replace("NoNewPrivileges=yes", "NoNewPrivileges=yes\nNoSuchKey=1"))
    proc = subprocess.run(["systemd-analyze", "verify", str(unit)], capture_output=True, text=True)
    assert "NoSuchKey" in proc.stderr


def test_security_exposure_is_low(tmp_path: Path) -> None:
    proc = subprocess.run(
        ["systemd-analyze", "security", "--offline=true", str(installed_copy(tmp_path))], capture_output=True, text=True
    )
    match = re.search(r"Overall exposure level for calmd.service: ([0-9.]+)", proc.stdout)
    assert match, proc.stdout[-500:] + proc.stderr
    assert float(match.group(1)) <= 2.0


def test_unit_is_notify_with_watchdog_and_restart() -> None:
    text = UNIT.read_text()
    for line in ("Type=notify", "Restart=on-failure", "User=calm", "ProtectSystem=strict", "NoNewPrivileges=yes"):
        assert line in text.splitlines()
    assert re.search(r"^WatchdogSec=\d+", text, re.M)
