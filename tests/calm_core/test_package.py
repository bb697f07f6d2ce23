"""calm_core is a library: importing it pulls in no daemon-side dependency, and the wire format and the
bridges load no model code. Each check runs in a fresh interpreter, so nothing this test process already
imported can hide an import."""

import subprocess
import sys


def loaded_after(imports: str, watched: tuple[str, ...]) -> list[str]:
    """Which of the watched modules a fresh interpreter holds after `import <imports>`."""
    code = f"import sys, {imports}; print(' '.join(m for m in {watched!r} if m in sys.modules))"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout.split()


def test_import_calm_core_loads_no_zmq_or_sound_device() -> None:
    imports = "calm_core, calm_core.cli, calm_core.method.classifier, calm_core.backbones"
    assert loaded_after(imports, ("zmq", "sounddevice", "webrtcvad", "calmd", "daemon")) == []


def test_the_wire_and_the_bridges_load_no_torch() -> None:
    # calm-mqtt, calm-proxy and a subscriber start in a fraction of a second and need no model code.
    imports = "calm_core.messages.events, calm_core.messages.client, calmd.client, calmd.mqtt.main, calmd.proxy"
    assert loaded_after(imports, ("torch", "transformers", "calm_core.method")) == []
    # ...and the check sees torch where it is loaded:
    assert loaded_after("calm_core.features", ("torch",)) == ["torch"]


def test_the_classifier_is_still_a_top_level_name() -> None:
    assert loaded_after("calm_core", ("torch",)) == []  # until it is used
    code = "from calm_core import CalmClassifier, CalmConfig, Prediction; print(CalmClassifier.__module__)"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and proc.stdout.strip() == "calm_core.method.classifier", proc.stderr
