"""The configuration lines the README tells users to copy validate against the config models."""

import re
from pathlib import Path

import pytest
import tomllib

from calmd.config import DaemonConfig, parse_config
from calmd.mqtt.config import parse_bridge_config

README = Path(__file__).resolve().parents[2] / "README.md"
# the sections with lines to copy into /etc/calm/calmd.toml, and the one for /etc/calm/calm-mqtt.toml
CALMD_SECTIONS = ("Per-label rules", "Saved clips", "Live page")
BRIDGE_SECTION = "Home Assistant (MQTT)"


def toml_blocks(section: str) -> list[str]:
    """The ```toml blocks of one README section (up to the next heading of any level)."""
    text = README.read_text()
    start = re.search(rf"^#+ {re.escape(section)}\n", text, re.M)
    assert start is not None, f"README has no section {section!r}"
    rest = text[start.end() :]
    following = re.search(r"^#+ ", rest, re.M)
    body = rest[: following.start()] if following else rest
    return re.findall(r"^```toml\n(.*?)^```", body, re.M | re.S)


def calmd_configs(section: str) -> list[DaemonConfig]:
    """Every calmd configuration a README section shows, validated as calmd does at start."""
    blocks = toml_blocks(section)
    assert blocks, f"README section {section!r} shows no configuration"
    configs = []
    for block in blocks:
        data = tomllib.loads(block)
        # what every calmd.toml has besides the lines shown
        data.setdefault("model", {"path": "/opt/calm/models/m", "classifier": "/etc/calm/home.calm.safetensors"})
        data.setdefault("streams", [{"id": "front-door", "type": "mic"}])
        configs.append(parse_config(data, f"README {section}"))
    return configs


@pytest.mark.parametrize("section", CALMD_SECTIONS)
def test_calmd_lines_in_the_readme_are_a_valid_configuration(section: str) -> None:
    calmd_configs(section)


def test_the_calm_mqtt_lines_in_the_readme_are_a_valid_configuration() -> None:
    blocks = toml_blocks(BRIDGE_SECTION)
    assert blocks, f"README section {BRIDGE_SECTION!r} shows no configuration"
    for block in blocks:
        cfg = parse_bridge_config(tomllib.loads(block), f"README {BRIDGE_SECTION}")
        assert cfg.broker.tls.enabled and cfg.broker.effective_port == 8883  # as the README says
