"""Configuration: the shipped example is valid; bad values and unknown keys name the key."""

import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from calmd.config import ConfigError, load_config, parse_config

from .conftest import ENV

EXAMPLE = Path(__file__).resolve().parents[2] / "config" / "calmd.toml"
BASE = {"model": {"path": "/m", "classifier": "/c.safetensors"}, "streams": [{"id": "a", "type": "mic"}]}


def with_(section: str, **values):
    data = {k: (dict(v) if isinstance(v, dict) else [dict(x) for x in v]) for k, v in BASE.items()}
    if section == "streams":
        data["streams"][0].update(values)
    else:
        data.setdefault(section, {}).update(values)
    return data


def test_shipped_example_is_valid_and_loopback_by_default() -> None:
    cfg = load_config(EXAMPLE)
    assert [s.type for s in cfg.streams] == ["rtsp", "mic"]
    assert cfg.publish.endpoint == "tcp://127.0.0.1:5556" and cfg.metrics.host == "127.0.0.1"


def test_defaults_bind_loopback() -> None:
    cfg = parse_config(BASE)
    assert cfg.publish.endpoint.startswith("tcp://127.0.0.1:") and cfg.metrics.host == "127.0.0.1"


@pytest.mark.parametrize(
    "data, key, message",
    [
        (with_("vad", aggressivness=2), "vad.aggressivness", "unknown key"),
        (with_("vad", frame_ms=25), "vad.frame_ms", "25"),
        (with_("inference", batch_size="four"), "inference.batch_size", "'four'"),
        (with_("publish", endpoint="http://x:1"), "publish.endpoint", "scheme must be"),
        (with_("publish", endpoint="tcp://127.0.0.1"), "publish.endpoint", "need a port"),
        (with_("metrics", host="localhost"), "metrics.host", "localhost"),
        (with_("metrics", port=70000), "metrics.port", "65535"),
        (with_("streams", type="rtsp"), "streams.0", "needs `url`"),
        (with_("streams", type="rtsp", url="http://cam/x"), "streams.0", "rtsp://host"),
        (with_("streams", type="file"), "streams.0", "needs `path`"),
        (with_("streams", type="stdin"), "streams.0", "needs `sample_rate`"),
        (with_("streams", id="bad id!"), "streams.0.id", "pattern"),
        (with_("streams", type="cdrom"), "streams.0.type", "'cdrom'"),
        (with_("vad", min_segment_s=5, max_segment_s=2), "vad", "must not exceed max_segment_s"),
        (with_("publish", curve_secret_key="/k"), "publish", "set together"),
        ({"model": {"path": "/m", "classifier": "/c"}, "streams": []}, "<top level>", "or one [listeners.<protocol>]"),
        ({**BASE, "plugins": {"load": "os"}}, "plugins", "unknown key"),
    ],
)
def test_errors_name_key_value_and_rule(data: dict, key: str, message: str) -> None:
    with pytest.raises(ConfigError) as err:
        parse_config(data, "calmd.toml")
    text = str(err.value)
    assert text.startswith("calmd.toml: invalid configuration") and f"  {key}" in text and message in text


def test_duplicate_stream_ids(tmp_path: Path) -> None:
    data = {**BASE, "streams": [{"id": "a", "type": "mic"}, {"id": "a", "type": "mic"}]}
    with pytest.raises(ConfigError, match=r"repeated: \['a'\]"):
        parse_config(data)


def test_file_errors_and_overrides(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="no such configuration file"):
        load_config(tmp_path / "missing.toml")
    bad = tmp_path / "bad.toml"
    bad.write_text("[model\npath=1")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_config(bad)
    cfg = load_config(EXAMPLE, {"model.device": "cpu", "publish.endpoint": "tcp://127.0.0.1:6000"})
    assert cfg.model.device == "cpu" and cfg.publish.endpoint.endswith(":6000")
    # calmd's overrides reach nested tables the way calm-mqtt's do
    cfg = load_config(EXAMPLE, {"events.labels.alarm.min_score": 0.9})
    assert cfg.events.labels["alarm"].min_score == 0.9


def test_calm_mqtt_shares_the_config_base_without_importing_the_model_code_or_torch() -> None:
    from calm_core.errors import CalmError
    from calmd import configbase
    from calmd.mqtt import config as bridge_config

    assert issubclass(ConfigError, CalmError) and issubclass(ConfigError, configbase.ConfigError)
    assert bridge_config.ConfigError is configbase.ConfigError
    with pytest.raises(configbase.ConfigError, match="zmq.endpoints: Value error, 'inproc://x': scheme must be"):
        bridge_config.parse_bridge_config({"zmq": {"endpoints": ["inproc://x"]}})
    # It reads calmd's messages (calm_core.messages) and nothing of the model side.
    watched = "('torch', 'transformers', 'calm_core.method', 'calm_core.backbones')"
    loaded = f"import sys, calmd.mqtt.main; print(sorted(m for m in {watched} if m in sys.modules))"
    proc = subprocess.run([sys.executable, "-c", loaded], capture_output=True, text=True, env=ENV, timeout=120)
    assert proc.returncode == 0 and proc.stdout.strip() == "[]", (proc.stdout, proc.stderr)


SCALARS = st.one_of(
    st.none(), st.booleans(), st.integers(-(10**6), 10**6), st.floats(allow_nan=True), st.text(max_size=12)
)
KEYS = st.sampled_from(["path", "classifier", "device", "dtype", "endpoint", "port", "host", "mode", "id", "type",
                        "url", "frame_ms", "batch_size", "queue_size", "heartbeat_s", "loop", "bogus"])  # fmt: skip


@settings(max_examples=200, deadline=None)
@given(
    data=st.dictionaries(
        st.sampled_from(["model", "inference", "publish", "metrics", "vad", "events", "streams", "extra"]),
        st.one_of(
            SCALARS,
            st.dictionaries(KEYS, SCALARS, max_size=5),
            st.lists(st.dictionaries(KEYS, SCALARS, max_size=5), max_size=3),
        ),
        max_size=6,
    )
)
def test_any_document_is_accepted_or_refused_with_config_error(data: dict) -> None:
    try:
        cfg = parse_config(data, "fuzz.toml")
    except ConfigError as e:
        assert str(e).startswith("fuzz.toml: invalid configuration")
        return
    assert cfg.streams and cfg.model.path
