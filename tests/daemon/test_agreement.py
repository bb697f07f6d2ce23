"""calmd labels a sound as `calm classify` labels the same sound: known clips streamed through calmd, at other
gains and with quiet around them, against `calm classify` on the clip files themselves."""

import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import soundfile as sf

from calm_core.messages.client import Subscriber
from calm_core.messages.events import LabelEvent

from .conftest import ENV, endpoint_of, write_config

ENERGY_VAD = 'mode = "energy"\nframe_ms = 20\npre_roll_ms = 200\nhangover_ms = 300\nmin_segment_s = 0.3'
GAINS = (0.03, 0.3, 1.0)  # -30, -10 and 0 dB against the clip files


def stream_of(clips: list[Path], out: Path) -> Path:
    """The clips one after the other at the GAINS in turn, each between 1 s stretches of a -70 dBFS floor."""
    rng = np.random.default_rng(7)
    parts = [np.zeros(2 * 16_000, np.float32)]
    for i, path in enumerate(clips):
        audio, _ = sf.read(path, dtype="float32")
        parts += [rng.standard_normal(16_000).astype(np.float32) * 10 ** (-70 / 20), audio * GAINS[i % len(GAINS)]]
    parts.append(np.zeros(16_000, np.float32))
    sf.write(out, np.concatenate(parts), 16_000, subtype="FLOAT")
    return out


def test_calmd_and_calm_classify_agree_on_the_same_sounds(
    tmp_path: Path, tiny_model_dir, classifier_file, tone_sets, daemon_factory
) -> None:
    # 8 tones of 4 classes, 0.6 to 1.4 s, played in real time (ZeroMQ drops what is published before the
    # subscriber has joined; a stream replayed at full speed can be over by then)
    clips = [p for c in sorted(tone_sets["test"].iterdir()) for p in sorted(c.glob("*.wav"))[:2]]
    wav = stream_of(clips, tmp_path / "stream.wav")
    config = write_config(
        tmp_path / "calmd.toml", tiny_model_dir, classifier_file,
        f'[[streams]]\nid = "s"\ntype = "file"\npath = "{wav}"\nrealtime = true\n', vad=ENERGY_VAD,
    )  # fmt: skip
    with Subscriber(endpoint_of(config), ["s"]) as sub:
        daemon = daemon_factory(config, "--exit-when-done")
        labels: list[LabelEvent] = []
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline and (daemon.proc.poll() is None or len(labels) < len(clips)):
            event = sub.receive(timeout_s=0.5)
            if isinstance(event, LabelEvent):
                labels.append(event)
        code, log = daemon.stop()
    assert code == 0, log
    assert len(labels) == len(clips), log  # one segment per sound
    classify = subprocess.run(
        [sys.executable, "-m", "calm_core.cli", "-q", "classify", "--classifier", str(classifier_file),
         "--model", str(tiny_model_dir), "--json", *map(str, clips)],
        capture_output=True, text=True, env=ENV, timeout=300, check=True,
    )  # fmt: skip
    rows = [json.loads(line) for line in classify.stdout.splitlines()]
    assert [e.label for e in labels] == [r["label"] for r in rows]
    # The same sound gives the same scores: only the conditioned margins (a -70 dBFS floor) differ.
    diffs = [abs(e.score - r["score"]) for e, r in zip(labels, rows)]
    assert max(diffs) < 0.02, diffs
