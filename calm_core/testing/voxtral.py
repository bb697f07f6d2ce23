"""A tiny random-weight Voxtral written through the real save_pretrained path, with a byte-level
tekken.json tokenizer (Mistral's format, read by mistral-common) in place of the released one."""

from __future__ import annotations

import base64
import json
from pathlib import Path

from .common import random_model

# Special tokens at the ranks the released tokenizer gives them (VoxtralProcessor expects [AUDIO] = 24);
# the ranks between are fillers, as in the released file.
_NAMED = {
    0: "<unk>", 1: "<s>", 2: "</s>", 3: "[INST]", 4: "[/INST]", 5: "[AVAILABLE_TOOLS]", 6: "[/AVAILABLE_TOOLS]",
    7: "[TOOL_RESULTS]", 8: "[/TOOL_RESULTS]", 9: "[TOOL_CALLS]", 10: "[IMG]", 11: "<pad>", 12: "[IMG_BREAK]",
    13: "[IMG_END]", 14: "[PREFIX]", 15: "[MIDDLE]", 16: "[SUFFIX]", 17: "[SYSTEM_PROMPT]", 18: "[/SYSTEM_PROMPT]",
    19: "[TOOL_CONTENT]", 24: "[AUDIO]", 25: "[BEGIN_AUDIO]", 32: "[ARGS]", 33: "[CALL_ID]", 34: "[TRANSCRIBE]",
}  # fmt: skip
N_SPECIAL = 40
# Tekken's pre-tokeniser pattern (words, numbers, punctuation runs, spaces).
_PATTERN = (
    r"[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+|"
    r"[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*|"
    r"\p{N}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)


def write_tiny_tekken(path: Path) -> int:
    """A tekken.json with the 256 bytes as its vocabulary and Voxtral's audio settings; returns the vocab size."""
    vocab = [{"rank": i, "token_bytes": base64.b64encode(bytes([i])).decode(), "token_str": None} for i in range(256)]
    special = [{"rank": i, "token_str": _NAMED.get(i, f"<SPECIAL_{i}>"), "is_control": True} for i in range(N_SPECIAL)]
    size = len(vocab) + N_SPECIAL
    tekken = {
        "config": {
            "pattern": _PATTERN,
            "num_vocab_tokens": len(vocab),
            "default_vocab_size": size,
            "default_num_special_tokens": N_SPECIAL,
            "version": "v7",
        },
        "vocab": vocab,
        "special_tokens": special,
        "version": 7,
        "type": "Tekken",
        "audio": {
            "sampling_rate": 16_000,
            "frame_rate": 12.5,
            "audio_encoding_config": {"num_mel_bins": 128, "hop_length": 160, "window_size": 400},
            "chunk_length_s": 30.0,
        },
    }
    path.write_text(json.dumps(tekken))
    return size


def make_tiny_voxtral(
    out_dir: str | Path,
    *,
    n_layers: int = 4,
    hidden: int = 64,
    n_heads: int = 4,
    audio_layers: int = 2,
    audio_dim: int = 32,
    seed: int = 0,
) -> Path:
    """Write a random-weight Voxtral (model, tekken.json, processor) to out_dir."""
    from transformers import (
        VoxtralConfig,
        VoxtralForConditionalGeneration,
        VoxtralProcessor,
        WhisperFeatureExtractor,
    )
    from transformers.tokenization_mistral_common import MistralCommonBackend

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    vocab_size = write_tiny_tekken(out / "tekken.json")
    processor = VoxtralProcessor(
        feature_extractor=WhisperFeatureExtractor(feature_size=128), tokenizer=MistralCommonBackend.from_pretrained(out)
    )
    config = VoxtralConfig(
        audio_config={
            "hidden_size": audio_dim,
            "intermediate_size": audio_dim * 4,  # the projector stacks 4 encoder frames per audio token
            "num_hidden_layers": audio_layers,
            "num_attention_heads": 4,
            "num_mel_bins": 128,
            "max_source_positions": 1500,
        },
        text_config={
            "vocab_size": vocab_size,
            "hidden_size": hidden,
            "intermediate_size": hidden * 2,
            "num_hidden_layers": n_layers,
            "num_attention_heads": n_heads,
            "num_key_value_heads": max(1, n_heads // 2),
            "head_dim": hidden // n_heads,
            "max_position_embeddings": 2048,
        },
        audio_token_id=24,
    )
    model = random_model(VoxtralForConditionalGeneration, config, seed)
    model.save_pretrained(out)
    processor.save_pretrained(out)
    return out
