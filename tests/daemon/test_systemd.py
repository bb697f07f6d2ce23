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


# ---- scale-out: one calmd per GPU (template) and the proxy ------------------------------------------
SYSTEMD = UNIT.parent


def installed_copies(tmp_path: Path) -> Path:
    """calmd@.service, calm-proxy.service and calm-mqtt.service pointing at this environment's scripts."""
    bin_dir = Path(sys.executable).parent
    units = (("calmd@.service", "calmd"), ("calm-proxy.service", "calm-proxy"), ("calm-mqtt.service", "calm-mqtt"))
    for name, script in units:
        assert (bin_dir / script).exists(), f"{script} console script is not installed"
        text = (SYSTEMD / name).read_text().replace(f"/opt/calm/.venv/bin/{script}", str(bin_dir / script))
        (tmp_path / name).write_text(text)
    return tmp_path


@pytest.mark.parametrize("unit", ["calmd@0.service", "calmd@3.service", "calm-proxy.service", "calm-mqtt.service"])
def test_scale_out_units_verify_with_no_warning(tmp_path: Path, unit: str) -> None:
    # an instance name resolves against the template beside it
    proc = subprocess.run(
        ["systemd-analyze", "verify", str(installed_copies(tmp_path) / unit)], capture_output=True, text=True
    )
    assert proc.returncode == 0 and proc.stderr.strip() == "", proc.stderr


def test_template_verify_would_catch_a_bad_key(tmp_path: Path) -> None:
    template = installed_copies(tmp_path) / "calmd@.service"
    template.write_text(template.read_text().replace("NoNewPrivileges=yes", "NoNewPrivileges=yes\nNoSuchKey=1"))
    proc = subprocess.run(
        ["systemd-analyze", "verify", str(tmp_path / "calmd@0.service")], capture_output=True, text=True
    )
    assert "NoSuchKey" in proc.stderr


@pytest.mark.parametrize("unit", ["calmd@0.service", "calm-proxy.service", "calm-mqtt.service"])
def test_scale_out_units_security_exposure_is_low(tmp_path: Path, unit: str) -> None:
    path = installed_copies(tmp_path) / unit
    proc = subprocess.run(["systemd-analyze", "security", "--offline=true", str(path)], capture_output=True, text=True)
    match = re.search(rf"Overall exposure level for {re.escape(unit)}: ([0-9.]+)", proc.stdout)
    assert match, proc.stdout[-500:] + proc.stderr
    assert float(match.group(1)) <= 2.0


def test_template_gives_each_instance_its_gpu_and_config_and_keeps_calmds_hardening() -> None:
    single = UNIT.read_text().splitlines()
    template = (SYSTEMD / "calmd@.service").read_text().splitlines()
    for line in ("Environment=CUDA_VISIBLE_DEVICES=%i", "DeviceAllow=/dev/nvidia%i rw"):
        assert line in template
    assert any(line.startswith("ExecStart=") and "--config /etc/calm/calmd-%i.toml" in line for line in template)
    hardening = single[single.index("# Hardening") :]
    dropped = [
        line for line in hardening if line not in template and not line.startswith(("#", "DeviceAllow=/dev/nvidia0"))
    ]
    assert dropped == []
    for line in ("Type=notify", "Restart=on-failure", "User=calm", "NoNewPrivileges=yes", "DevicePolicy=closed"):
        assert line in (SYSTEMD / "calm-proxy.service").read_text().splitlines()


def test_mqtt_bridge_unit_is_notify_restarts_and_keeps_the_proxys_hardening() -> None:
    proxy = (SYSTEMD / "calm-proxy.service").read_text().splitlines()
    bridge = (SYSTEMD / "calm-mqtt.service").read_text().splitlines()
    hardening = proxy[proxy.index("# Hardening: as calmd's, and no devices at all") + 1 :]
    assert [line for line in hardening if line not in bridge] == []
    for line in ("Type=notify", "Restart=on-failure", "User=calm", "ReadOnlyPaths=/etc/calm"):
        assert line in bridge
    assert "ExecStart=/opt/calm/.venv/bin/calm-mqtt --config /etc/calm/calm-mqtt.toml" in bridge
