"""calm_core is a library: importing it pulls in no daemon-side dependency."""

import subprocess
import sys


def test_import_calm_core_loads_no_zmq_or_sound_device() -> None:
    code = (
        "import sys, calm_core, calm_core.cli, calm_core.classifier, calm_core.backbones;"
        "bad = [m for m in ('zmq', 'sounddevice', 'webrtcvad', 'calmd', 'daemon') if m in sys.modules];"
        "print(bad); sys.exit(1 if bad else 0)"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
