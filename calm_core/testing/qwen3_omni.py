"""A tiny random-weight Qwen3-Omni (thinker, talker and code2wav) written through the real save_pretrained path.

The full model is saved as Qwen/Qwen3-Omni-30B-A3B-Instruct ships: one config of model_type `qwen3_omni_moe`
and weights under `thinker.*`, `talker.*` and `code2wav.*`, the experts stored one tensor per expert
(save_pretrained unfuses them as the released files hold them).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .qwen_omni import mrope_sections, omni_tokenizer, write_omni

# Qwen3-Omni's tokenizer attributes the processor and the chat template use, with their tokens.
QWEN3_OMNI_TOKENS = {
    "audio_token": "<|audio_pad|>",
    "audio_bos_token": "<|audio_start|>",
    "audio_eos_token": "<|audio_end|>",
    "image_token": "<|image_pad|>",
    "video_token": "<|video_pad|>",
    "vision_bos_token": "<|vision_start|>",
    "vision_eos_token": "<|vision_end|>",
}


def _thinker_config(tok: Any, n_layers: int, hidden: int, n_heads: int, head_dim: int, n_kv_heads: int) -> dict:
    ids = {name: tok.convert_tokens_to_ids(token) for name, token in QWEN3_OMNI_TOKENS.items()}
    if head_dim % 2 or head_dim < 6:
        raise ValueError(f"head_dim {head_dim} must be even and at least 6")
    return {
        # The released encoder's structure (chunks of 2 * 50 frames, attention windows of 800 frames),
        # at a small width.
        "audio_config": {
            "d_model": 64,
            "encoder_layers": 2,
            "encoder_attention_heads": 4,
            "encoder_ffn_dim": 128,
            "num_mel_bins": 128,
            "n_window": 50,
            "n_window_infer": 800,
            "downsample_hidden_size": 16,
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
            "deepstack_visual_indexes": [0],
        },
        # Every layer a mixture of experts, as in the released thinker; head_dim * heads may differ from hidden.
        "text_config": {
            "vocab_size": len(tok),
            "hidden_size": hidden,
            "intermediate_size": hidden * 2,
            "num_hidden_layers": n_layers,
            "num_attention_heads": n_heads,
            "num_key_value_heads": n_kv_heads,
            "head_dim": head_dim,
            "num_experts": 4,
            "num_experts_per_tok": 2,
            "moe_intermediate_size": 32,
            "max_position_embeddings": 32768,
            "rope_parameters": {
                "rope_type": "default",
                "rope_theta": 1e6,
                "mrope_section": mrope_sections(head_dim),
                "interleaved": True,
            },
            "pad_token_id": tok.pad_token_id,
        },
        "audio_token_id": ids["audio_token"],
        "image_token_id": ids["image_token"],
        "video_token_id": ids["video_token"],
        "audio_start_token_id": ids["audio_bos_token"],
        "vision_start_token_id": ids["vision_bos_token"],
        "vision_end_token_id": ids["vision_eos_token"],
    }


def _talker_config(thinker_hidden: int) -> dict:
    return {
        "text_config": {
            "vocab_size": 64,
            "hidden_size": 32,
            "intermediate_size": 32,
            "num_hidden_layers": 1,
            "num_attention_heads": 2,
            "num_key_value_heads": 1,
            "num_experts": 2,
            "num_experts_per_tok": 1,
            "moe_intermediate_size": 16,
            "shared_expert_intermediate_size": 32,
            "rope_parameters": {"rope_type": "default", "rope_theta": 1e6},
        },
        "code_predictor_config": {
            "vocab_size": 64,
            "hidden_size": 32,
            "intermediate_size": 32,
            "num_hidden_layers": 1,
            "num_attention_heads": 2,
            "num_key_value_heads": 1,
            "head_dim": 16,
            "num_code_groups": 4,
        },
        "num_code_groups": 4,
        "spatial_merge_size": 2,
        "thinker_hidden_size": thinker_hidden,
        "accept_hidden_layer": 1,
        "codec_bos_id": 55,
        "codec_pad_id": 56,
        "codec_think_eos_id": 57,
        "codec_think_bos_id": 58,
        "codec_nothink_id": 59,
        "codec_eos_token_id": 60,
    }


_CODE2WAV = {
    "codebook_size": 64,
    "hidden_size": 32,
    "num_attention_heads": 2,
    "num_key_value_heads": 2,
    "intermediate_size": 32,
    "num_hidden_layers": 1,
    "num_quantizers": 4,
    "upsample_rates": [2, 2],
    "upsampling_ratios": [2],
    "decoder_dim": 32,
    "sliding_window": 8,
}


def make_tiny_qwen3_omni_moe(
    out_dir: str | Path,
    *,
    n_layers: int = 4,
    hidden: int = 64,
    n_heads: int = 4,
    head_dim: int = 16,
    n_kv_heads: int = 2,
    seed: int = 0,
    thinker_only: bool = False,
) -> Path:
    """Write a random-weight Qwen3-Omni (model, tokenizer, feature extractor) to out_dir.

    By default the whole model (thinker, talker, code2wav) as the released checkpoints hold it;
    with thinker_only, a thinker saved on its own (model_type `qwen3_omni_moe_thinker`).
    """
    from transformers import Qwen3OmniMoeConfig, Qwen3OmniMoeForConditionalGeneration

    tok = omni_tokenizer(QWEN3_OMNI_TOKENS)
    parts = {
        "thinker_config": _thinker_config(tok, n_layers, hidden, n_heads, head_dim, n_kv_heads),
        "talker_config": _talker_config(hidden),
        "code2wav_config": _CODE2WAV,
    }
    return write_omni(
        out_dir,
        tok,
        Qwen3OmniMoeConfig,
        Qwen3OmniMoeForConditionalGeneration,
        parts,
        seed=seed,
        thinker_only=thinker_only,
    )
