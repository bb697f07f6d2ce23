"""Raw PCM piped into calmd's stdin at 8 kHz (telephone audio), resampled and classified."""

import subprocess
import sys
import time
from pathlib import Path

import soundfile as sf

from calm_core.messages.client import Subscriber
from calm_core.messages.events import LabelEvent, StatusEvent

from .conftest import ENV, endpoint_of, write_config


def test_stdin_pcm_at_8khz(tmp_path: Path, tiny_model_dir, classifier_file, scene_wav) -> None:
    import soxr

    audio, _ = sf.read(scene_wav, dtype="float32")
    pcm = (soxr.resample(audio, 16000, 8000) * 32767).astype("<i2").tobytes()
    config = write_config(
        tmp_path / "calmd.toml", tiny_model_dir, classifier_file,
        '[[streams]]\nid = "call"\ntype = "stdin"\nsample_rate = 8000\n',
    )  # fmt: skip
    with Subscriber(endpoint_of(config), ["call"]) as sub:
        proc = subprocess.Popen(
            [sys.executable, "-m", "calmd", "--config", str(config), "--exit-when-done", "--no-metrics"],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=ENV,
        )  # fmt: skip
        # Audio only once calmd is up and this subscriber connected: its first status has arrived.
        deadline = time.monotonic() + 300
        while not isinstance(sub.receive(timeout_s=0.5), StatusEvent):
            assert time.monotonic() < deadline and proc.poll() is None, proc.communicate(timeout=30)[0].decode()
        out, _ = proc.communicate(input=pcm, timeout=300)
        labels = []
        while (event := sub.receive(timeout_s=2)) is not None:
            if isinstance(event, LabelEvent):
                labels.append(event)
    assert proc.returncode == 0, out.decode()
    assert len(labels) == 4
    for event, start in zip(labels, (1.0, 4.0, 7.0, 10.0)):
        assert abs(event.start_s - (start - 0.3)) <= 0.1
