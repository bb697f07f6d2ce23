"""Tiny random-weight models and synthetic audio for tests, demos and benchmarks; no download.

python -m calm_core.testing make-tiny-model DIR [--family F] [--layers N] [--legacy-keys]

Each model family has a module here that writes a tiny model through the family's own
`save_pretrained`, so that loading it exercises the same `from_pretrained` path as real weights.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from .audioflamingo3 import make_tiny_audioflamingo3
from .granite_speech import make_tiny_granite_speech
from .qwen2_audio import SPECIAL_TOKENS, make_tiny_qwen2_audio, tiny_tokenizer
from .qwen3_omni import make_tiny_qwen3_omni_moe
from .qwen_omni import make_tiny_qwen2_5_omni
from .voxtral import make_tiny_voxtral

# family -> writer(out_dir, n_layers=..., seed=...) -> Path; one entry per backbone family
TINY_FAMILIES: dict[str, Callable[..., Path]] = {
    "audioflamingo3": make_tiny_audioflamingo3,
    "granite_speech": make_tiny_granite_speech,
    "qwen2_audio": make_tiny_qwen2_audio,
    "voxtral": make_tiny_voxtral,
    "qwen2_5_omni": make_tiny_qwen2_5_omni,
    "qwen3_omni_moe": make_tiny_qwen3_omni_moe,
}


def tone(freq: float, seconds: float = 1.0, sr: int = 16_000, *, noise: float = 0.05, seed: int = 0) -> np.ndarray:
    """A sine tone with a little noise and a random phase, float32 at sr."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * sr)) / sr
    x = 0.5 * np.sin(2 * np.pi * freq * t + rng.uniform(0, 2 * np.pi)) + noise * rng.standard_normal(t.size)
    return x.astype(np.float32)


def voiced(f0: float, seconds: float = 1.0, sr: int = 16_000, *, seed: int = 0) -> np.ndarray:
    """A voice-like sound: 19 harmonics of f0 with a 4 Hz syllable envelope, which VADs detect as speech."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * sr)) / sr
    x = sum(np.sin(2 * np.pi * f0 * k * t) / k for k in range(1, 20))
    envelope = 0.6 + 0.4 * np.sin(2 * np.pi * 4 * t)
    return (0.3 * x * envelope / np.abs(x).max() + 0.01 * rng.standard_normal(t.size)).astype(np.float32)


def write_tone_dataset(root: str | Path, classes: dict[str, float], per_class: int, *, seed: int = 0) -> Path:
    """A folder-per-class dataset of tones (class name -> frequency), lengths 0.6 to 1.4 s."""
    import soundfile as sf

    root = Path(root)
    rng = np.random.default_rng(seed)
    for name, freq in classes.items():
        (root / name).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            seconds = float(rng.uniform(0.6, 1.4))
            clip = tone(freq * float(rng.uniform(0.97, 1.03)), seconds, seed=int(rng.integers(1 << 31)))
            sf.write(root / name / f"{name}_{i:02d}.wav", clip, 16_000, subtype="PCM_16")
    return root


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m calm_core.testing", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    tiny = sub.add_parser("make-tiny-model", help="write a tiny random-weight model of one family to DIR")
    tiny.add_argument("dir", type=Path)
    tiny.add_argument(
        "--family", choices=sorted(TINY_FAMILIES), default="qwen2_audio", help="model family (default qwen2_audio)"
    )
    tiny.add_argument("--layers", type=int, default=4, help="decoder layers (default 4)")
    tiny.add_argument("--seed", type=int, default=0)
    tiny.add_argument(
        "--legacy-keys", action="store_true", help="store weights under the original checkpoint's key names"
    )
    args = parser.parse_args(argv)
    kwargs: dict[str, Any] = {"n_layers": args.layers, "seed": args.seed}
    if args.legacy_keys:
        if args.family != "qwen2_audio":
            parser.error("--legacy-keys applies to --family qwen2_audio only")
        kwargs["legacy_keys"] = True
    out = TINY_FAMILIES[args.family](args.dir, **kwargs)
    print(json.dumps({"model_dir": str(out)}))
    return 0


__all__ = [
    "SPECIAL_TOKENS",
    "TINY_FAMILIES",
    "make_tiny_audioflamingo3",
    "make_tiny_granite_speech",
    "make_tiny_qwen2_5_omni",
    "make_tiny_qwen2_audio",
    "make_tiny_qwen3_omni_moe",
    "make_tiny_voxtral",
    "tiny_tokenizer",
    "tone",
    "voiced",
    "write_tone_dataset",
]
