"""`calm demo`: a small labelled set, a fit, an evaluation and a few classifications, end to end on CPU."""

from __future__ import annotations

import logging
from pathlib import Path

log = logging.getLogger("calm.demo")

DEMO_CLASSES = {"low_hum": 180.0, "whistle": 1400.0, "beep": 700.0, "siren": 2600.0}


def run_demo(workdir: Path, *, quiet: bool = False) -> int:
    """Tiny random-weight Qwen2-Audio on synthetic tones: proves the whole path works offline."""
    from .cli import main as calm
    from .testing import make_tiny_qwen2_audio, write_tone_dataset

    workdir = Path(workdir)
    model = workdir / "tiny-qwen2-audio"
    if not (model / "config.json").is_file():
        log.info("writing a tiny random-weight Qwen2-Audio to %s", model)
        make_tiny_qwen2_audio(model)
    support = write_tone_dataset(workdir / "support", DEMO_CLASSES, per_class=6, seed=1)
    test = write_tone_dataset(workdir / "test", DEMO_CLASSES, per_class=6, seed=2)
    clf = workdir / "demo.calm.safetensors"
    cache = ["--cache-dir", str(workdir / "cache")]
    q = ["-q"] if quiet else []
    steps = [
        ["fit", "--model", str(model), "--support", str(support), "--out", str(clf), "--top-k", "8", *cache],
        ["eval", "--classifier", str(clf), "--data", str(test), *cache],
        ["classify", "--classifier", str(clf), *(str(p) for p in sorted((test / "whistle").glob("*.wav"))[:2])],
        ["heads", "--classifier", str(clf), "--out", str(workdir / "heads.png")],
    ]
    for step in steps:
        print(f"\n$ calm {' '.join(step)}", flush=True)
        code = calm(q + step)
        if code != 0:
            return code
    return 0
