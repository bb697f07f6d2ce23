"""The configuration lines the guide (docs/) tells users to copy validate against the config models.

tests/test_docs.py checks every TOML example of the guide the same way; these name the sections users copy
from, and what each must give."""

import re
from pathlib import Path

import pytest
import tomllib

from calmd.config import DaemonConfig, parse_config
from calmd.mqtt.config import parse_bridge_config

DOCS = Path(__file__).resolve().parents[2] / "docs"
# (page, section) with lines to copy into /etc/calm/calmd.toml, and the page for /etc/calm/calm-mqtt.toml
CALMD_SECTIONS = (("calmd.md", "Per-label rules"), ("calmd.md", "Saved clips"), ("review.md", "Live page"))
BRIDGE_SECTION = ("home-assistant.md", "Home Assistant and MQTT")


def toml_blocks(where: tuple[str, str]) -> list[str]:
    """The ```toml blocks of one section of a guide page (up to the next heading of any level)."""
    page, section = where
    text = (DOCS / page).read_text()
    start = re.search(rf"^#+ {re.escape(section)}\n", text, re.M)
    assert start is not None, f"docs/{page} has no section {section!r}"
    rest = text[start.end() :]
    following = re.search(r"^#+ ", rest, re.M)
    body = rest[: following.start()] if following else rest
    return re.findall(r"^```toml\n(.*?)^```", body, re.M | re.S)


def calmd_configs(section: tuple[str, str]) -> list[DaemonConfig]:
    """Every calmd configuration a guide section shows, validated as calmd does at start."""
    blocks = toml_blocks(section)
    assert blocks, f"guide section {section!r} shows no configuration"
    configs = []
    for block in blocks:
        data = tomllib.loads(block)
        # what every calmd.toml has besides the lines shown
        data.setdefault("model", {"path": "/opt/calm/models/m", "classifier": "/etc/calm/home.calm.safetensors"})
        data.setdefault("streams", [{"id": "front-door", "type": "mic"}])
        configs.append(parse_config(data, f"docs/{section[0]} {section[1]}"))
    return configs


@pytest.mark.parametrize("section", CALMD_SECTIONS, ids=lambda s: s[1])
def test_calmd_lines_in_the_guide_are_a_valid_configuration(section: tuple[str, str]) -> None:
    calmd_configs(section)


def test_the_calm_mqtt_lines_in_the_guide_are_a_valid_configuration() -> None:
    blocks = toml_blocks(BRIDGE_SECTION)
    assert blocks, f"guide section {BRIDGE_SECTION!r} shows no configuration"
    for block in blocks:
        cfg = parse_bridge_config(tomllib.loads(block), f"docs/{BRIDGE_SECTION[0]}")
        assert cfg.broker.tls.enabled and cfg.broker.effective_port == 8883  # as the guide says
