"""Tiny random-weight models and synthetic audio for tests, demos and benchmarks; no download.

python -m calm_core.testing make-tiny-model DIR [--layers N] [--legacy-keys]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch

SPECIAL_TOKENS = ["<|im_start|>", "<|im_end|>", "<|audio_bos|>", "<|AUDIO|>", "<|audio_eos|>"]


def tiny_tokenizer():  # type: ignore[no-untyped-def]
    """A byte-level Qwen2 tokenizer (256 byte tokens, no merges) with Qwen2-Audio's special tokens."""
    from transformers import Qwen2Tokenizer
    from transformers.convert_slow_tokenizer import bytes_to_unicode

    vocab = {ch: i for i, ch in enumerate(bytes_to_unicode().values())}
    vocab["<|endoftext|>"] = len(vocab)
    tok = Qwen2Tokenizer(vocab=vocab, merges=[], unk_token=None, eos_token="<|im_end|>", pad_token="<|endoftext|>")
    tok.add_special_tokens({"additional_special_tokens": SPECIAL_TOKENS})
    return tok


def make_tiny_qwen2_audio(
    out_dir: str | Path,
    *,
    n_layers: int = 4,
    hidden: int = 64,
    n_heads: int = 4,
    audio_layers: int = 2,
    audio_dim: int = 64,
    seed: int = 0,
    legacy_keys: bool = False,
    intermediate: int | None = None,
    vocab_size: int | None = None,
    audio_heads: int = 4,
    save_dtype: torch.dtype = torch.float32,
) -> Path:
    """Write a random-weight Qwen2-Audio (model, tokenizer, feature extractor) to out_dir.

    With legacy_keys the weights are stored under the original checkpoint's key names
    (`language_model.model.layers...`), as Qwen/Qwen2-Audio-7B-Instruct ships them.
    """
    from safetensors.torch import load_file, save_file
    from transformers import (
        Qwen2AudioConfig,
        Qwen2AudioForConditionalGeneration,
        Qwen2AudioProcessor,
        WhisperFeatureExtractor,
    )

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tok = tiny_tokenizer()
    processor = Qwen2AudioProcessor(feature_extractor=WhisperFeatureExtractor(feature_size=128), tokenizer=tok)
    config = Qwen2AudioConfig(
        audio_config={
            "d_model": audio_dim,
            "encoder_layers": audio_layers,
            "encoder_attention_heads": audio_heads,
            "encoder_ffn_dim": audio_dim * 4 if audio_dim > 64 else audio_dim * 2,
            "num_mel_bins": 128,
            "max_source_positions": 1500,
        },
        text_config={
            "model_type": "qwen2",
            "vocab_size": vocab_size or len(tok),
            "hidden_size": hidden,
            "intermediate_size": intermediate or hidden * 2,
            "num_hidden_layers": n_layers,
            "num_attention_heads": n_heads,
            "num_key_value_heads": max(1, n_heads // 2) if hidden <= 256 else n_heads,
            "max_position_embeddings": 2048,
            "pad_token_id": tok.pad_token_id,
        },
        audio_token_id=tok.convert_tokens_to_ids("<|AUDIO|>"),  # type: ignore[call-arg]
    )
    torch.manual_seed(seed)
    model = Qwen2AudioForConditionalGeneration(config).eval()
    # Random init gives near-zero projections; scale so that audio actually moves the heads.
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() >= 2:
                p.normal_(0.0, 1.0 / np.sqrt(p.shape[-1]))
    model.to(save_dtype).save_pretrained(out)
    processor.save_pretrained(out)
    if legacy_keys:
        weights = out / "model.safetensors"
        state = load_file(str(weights))
        save_file({_legacy_key(k): v.contiguous() for k, v in state.items()}, str(weights), metadata={"format": "pt"})
    return out


def _legacy_key(key: str) -> str:
    for new, old in (
        ("model.language_model.", "language_model.model."),
        ("lm_head.", "language_model.lm_head."),
        ("model.audio_tower.", "audio_tower."),
        ("model.multi_modal_projector.", "multi_modal_projector."),
    ):
        if key.startswith(new):
            return old + key[len(new) :]
    return key


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
    tiny = sub.add_parser("make-tiny-model", help="write a tiny random-weight Qwen2-Audio to DIR")
    tiny.add_argument("dir", type=Path)
    tiny.add_argument("--layers", type=int, default=4, help="decoder layers (default 4)")
    tiny.add_argument("--seed", type=int, default=0)
    tiny.add_argument(
        "--legacy-keys", action="store_true", help="store weights under the original checkpoint's key names"
    )
    args = parser.parse_args(argv)
    out = make_tiny_qwen2_audio(args.dir, n_layers=args.layers, seed=args.seed, legacy_keys=args.legacy_keys)
    print(json.dumps({"model_dir": str(out)}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
