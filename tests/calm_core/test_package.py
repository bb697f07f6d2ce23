"""calm_core is a library: importing it pulls in no daemon-side dependency."""

import subprocess
import sys


def test_import_calm_core_loads_no_zmq_or_sound_device() -> None:
    code = (
        "import sys, calm_core, calm_core.cli, calm_core.method.classifier, calm_core.backbones;"
        "bad = [m for m in ('zmq', 'sounddevice', 'webrtcvad', 'calmd', 'daemon') if m in sys.modules];"
        "print(bad); sys.exit(1 if bad else 0)"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_the_wire_and_the_bridges_load_no_torch() -> None:
    # calm-mqtt, calm-proxy and a subscriber start in a fraction of a second and need no model code.
    code = (
        "import sys, calm_core.messages.events, calm_core.messages.client, calmd.client, calmd.mqtt.main, calmd.proxy;"
        "bad = [m for m in ('torch', 'transformers', 'calm_core.method') if m in sys.modules];"
        "print(bad); sys.exit(1 if bad else 0)"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_the_classifier_is_still_a_top_level_name() -> None:
    code = (
        "import calm_core; from calm_core import CalmClassifier, CalmConfig, Prediction;"
        "print(CalmClassifier.__module__)"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and proc.stdout.strip() == "calm_core.method.classifier", proc.stderr
