"""The review loop end to end: `calm add` a new class to the file calmd serves, SIGHUP, and calmd labels with it."""

import signal
import subprocess
import sys
from pathlib import Path

import soundfile as sf

from calm_core.messages.client import Subscriber
from calm_core.messages.events import LabelEvent, StatusEvent
from calm_core.method.classifier import CalmClassifier
from calm_core.testing import voiced

from .conftest import ENV, endpoint_of, write_config
from .test_signals import next_matching


def calm(*args: str) -> str:
    proc = subprocess.run([sys.executable, "-m", "calm_core.cli", "-q", *args], capture_output=True, text=True,
                          env=ENV, timeout=300)  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


def test_sighup_after_calm_add_labels_with_the_new_class(
    tmp_path: Path, tiny_model_dir, tone_sets, daemon_factory
) -> None:
    live = tmp_path / "live.calm.safetensors"
    # Heads of layer 0 only: the refit cannot need a layer calmd has not loaded, so a reload (not a restart) does.
    calm("fit", "--model", str(tiny_model_dir), "--support", str(tone_sets["support"]), "--out", str(live),
         "--max-layer", "0", "--top-k", "3", "--cache-dir", str(tmp_path / "cache"))  # fmt: skip
    # Clips someone reviewed and labelled `voice`; calmd hears the first of them over and over, in windows of its
    # length, so after the reload it hears a sound the new class holds.
    voices = []
    for i, f0 in enumerate((280.0, 270.0, 290.0)):
        voices.append(tmp_path / f"voice_{int(f0)}.wav")
        sf.write(voices[-1], voiced(f0, 2.0, seed=i), 16_000, subtype="PCM_16")
    config = write_config(
        tmp_path / "calmd.toml", tiny_model_dir, live,
        f'[[streams]]\nid = "room"\ntype = "file"\npath = "{voices[0]}"\nloop = true\nrealtime = false\n',
        vad='mode = "none"\nwindow_s = 2.0\nhop_s = 2.0',
    )  # fmt: skip
    is_label = lambda e: isinstance(e, LabelEvent)  # noqa: E731
    with Subscriber(endpoint_of(config)) as sub:
        daemon = daemon_factory(config)
        before = next_matching(sub, is_label, 180)
        assert before is not None, daemon.stop()[1][-3000:]
        assert "voice" not in {s.label for s in before.top}  # not a class yet

        report = calm("add", "--classifier", str(live), "--label", "voice", *map(str, voices))
        assert "voice: 0 -> 3 support clips (new class)" in report and "systemctl reload calmd" in report
        assert CalmClassifier.load(live).labels == ["beep", "hum", "siren", "voice", "whistle"]
        daemon.proc.send_signal(signal.SIGHUP)
        after = next_matching(sub, lambda e: is_label(e) and e.label == "voice", 120)
        status = next_matching(sub, lambda e: isinstance(e, StatusEvent), 30)
        code, log = daemon.stop()
    assert after is not None, log[-3000:]
    assert status is not None and status.error is None and status.streams["room"].state == "live"
    assert "reloaded" in log and code == 0
