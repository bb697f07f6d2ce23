"""A tiny random-weight Qwen2.5-Omni (thinker, talker and token2wav) written through the real save_pretrained path.

The full model is saved as Qwen/Qwen2.5-Omni-7B ships: one config of model_type `qwen2_5_omni` and weights
under `thinker.*`, `talker.*` and `token2wav.*`, so that loading it exercises what a real checkpoint does.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from .common import random_model

# Qwen2.5-Omni's tokenizer attributes the processor and the chat template use, with their tokens.
OMNI_TOKENS = {
    "audio_token": "<|AUDIO|>",
    "audio_bos_token": "<|audio_bos|>",
    "audio_eos_token": "<|audio_eos|>",
    "image_token": "<|IMAGE|>",
    "video_token": "<|VIDEO|>",
    "vision_bos_token": "<|vision_bos|>",
    "vision_eos_token": "<|vision_eos|>",
}


@contextmanager
def _quiet() -> Iterator[None]:
    # The talker's config checks its text-side token ids against its own codec vocabulary and warns,
    # as it does for the real checkpoint's config; nothing is wrong.
    from transformers.utils import logging as hf_logging

    level = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    try:
        yield
    finally:
        hf_logging.set_verbosity(level)


def omni_tokenizer(tokens: dict[str, str] = OMNI_TOKENS):  # type: ignore[no-untyped-def]
    """A byte-level Qwen2 tokenizer (256 byte tokens, no merges) with a Qwen-Omni's special tokens
    (by default Qwen2.5-Omni's)."""
    from transformers import Qwen2Tokenizer
    from transformers.convert_slow_tokenizer import bytes_to_unicode

    vocab = {ch: i for i, ch in enumerate(bytes_to_unicode().values())}
    vocab["<|endoftext|>"] = len(vocab)
    tok = Qwen2Tokenizer(
        vocab=vocab,
        merges=[],
        unk_token=None,  # type: ignore[arg-type]  # Qwen's byte-level vocabulary has no unknown token
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        extra_special_tokens=tokens,
    )
    tok.add_special_tokens({"additional_special_tokens": ["<|im_start|>", "<|im_end|>"]})
    return tok


def mrope_sections(head_dim: int) -> list[int]:
    """The three rotary sections (time, height, width) splitting head_dim / 2 frequencies, as 16/24/24 does for 128."""
    half = head_dim // 2
    return [half - 2 * (half * 3 // 8), half * 3 // 8, half * 3 // 8]


def write_omni(
    out_dir: str | Path,
    tok: Any,
    config_class: Any,
    model_class: Any,
    parts: dict[str, Any],
    *,
    seed: int,
    thinker_only: bool,
) -> Path:
    """Build a Qwen-Omni from its part configs with seeded random weights and save it, or its thinker alone,
    with the tokenizer and a Whisper feature extractor."""
    from transformers import WhisperFeatureExtractor

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    with _quiet():
        model = random_model(model_class, config_class(**parts), seed)
        # thinker_only: the same thinker weights as the full model of the same seed.
        (model.thinker if thinker_only else model).save_pretrained(out)
    tok.save_pretrained(out)
    WhisperFeatureExtractor(feature_size=128).save_pretrained(out)
    return out


def _thinker_config(tok: Any, n_layers: int, hidden: int, n_heads: int, n_kv_heads: int, audio_dim: int) -> dict:
    ids = {name: tok.convert_tokens_to_ids(token) for name, token in OMNI_TOKENS.items()}
    head_dim = hidden // n_heads
    if head_dim % 2 or head_dim < 6:
        raise ValueError(f"hidden {hidden} / n_heads {n_heads} must give an even head_dim of at least 6")
    return {
        "audio_config": {
            "d_model": audio_dim,
            "encoder_layers": 2,
            "encoder_attention_heads": 4,
            "encoder_ffn_dim": audio_dim * 2,
            "num_mel_bins": 128,
            "n_window": 100,
            "output_dim": hidden,
            "max_source_positions": 1500,
        },
        # The vision tower is written (real checkpoints hold one) but calm never builds its blocks.
        "vision_config": {
            "depth": 1,
            "hidden_size": 32,
            "intermediate_size": 32,
            "num_heads": 2,
            "out_hidden_size": hidden,
            "fullatt_block_indexes": [0],
        },
        "text_config": {
            "vocab_size": len(tok),
            "hidden_size": hidden,
            "intermediate_size": hidden * 2,
            "num_hidden_layers": n_layers,
            "num_attention_heads": n_heads,
            "num_key_value_heads": n_kv_heads,
            "max_position_embeddings": 32768,
            "rope_parameters": {"rope_type": "default", "rope_theta": 1e6, "mrope_section": mrope_sections(head_dim)},
            "tie_word_embeddings": False,
            "pad_token_id": tok.pad_token_id,
        },
        "audio_token_index": ids["audio_token"],
        "image_token_index": ids["image_token"],
        "video_token_index": ids["video_token"],
        "audio_start_token_id": ids["audio_bos_token"],
        "audio_end_token_id": ids["audio_eos_token"],
        "vision_start_token_id": ids["vision_bos_token"],
        "vision_end_token_id": ids["vision_eos_token"],
    }


_TALKER = {
    "vocab_size": 64,
    "embedding_size": 64,
    "hidden_size": 32,
    "intermediate_size": 64,
    "num_hidden_layers": 1,
    "num_attention_heads": 2,
    "num_key_value_heads": 1,
    "head_dim": 16,
    "rope_parameters": {"rope_type": "default", "rope_theta": 1e6, "mrope_section": [2, 3, 3]},
    "tts_codec_start_token_id": 60,
    "tts_codec_end_token_id": 61,
    "tts_codec_pad_token_id": 62,
    "tts_codec_mask_token_id": 63,
}
_TOKEN2WAV = {
    "dit_config": {
        "hidden_size": 32,
        "num_hidden_layers": 1,
        "num_attention_heads": 2,
        "head_dim": 16,
        "emb_dim": 16,
        "num_embeds": 64,
        "enc_emb_dim": 16,
        "enc_dim": 16,
        "enc_channels": [16, 16, 16, 16, 48],
        "enc_attention_channels": 8,
        "enc_se_channels": 8,
        "look_ahead_layers": [0],
        "look_backward_layers": [0],
    },
    "bigvgan_config": {
        "upsample_initial_channel": 32,
        "resblock_kernel_sizes": [3],
        "resblock_dilation_sizes": [[1, 3, 5]],
        "upsample_rates": [2],
        "upsample_kernel_sizes": [4],
    },
}


def make_tiny_qwen2_5_omni(
    out_dir: str | Path,
    *,
    n_layers: int = 4,
    hidden: int = 64,
    n_heads: int = 4,
    n_kv_heads: int = 2,
    audio_dim: int = 64,
    seed: int = 0,
    thinker_only: bool = False,
) -> Path:
    """Write a random-weight Qwen2.5-Omni (model, tokenizer, feature extractor) to out_dir.

    By default the whole model (thinker, talker, token2wav) as the released checkpoints hold it;
    with thinker_only, a thinker saved on its own (model_type `qwen2_5_omni_thinker`), as fine-tunes ship.
    """
    from transformers import Qwen2_5OmniConfig, Qwen2_5OmniForConditionalGeneration

    tok = omni_tokenizer()
    parts = {
        "thinker_config": _thinker_config(tok, n_layers, hidden, n_heads, n_kv_heads, audio_dim),
        "talker_config": _TALKER,
        "token2wav_config": _TOKEN2WAV,
    }
    return write_omni(
        out_dir,
        tok,
        Qwen2_5OmniConfig,
        Qwen2_5OmniForConditionalGeneration,
        parts,
        seed=seed,
        thinker_only=thinker_only,
    )
