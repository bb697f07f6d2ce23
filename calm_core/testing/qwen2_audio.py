"""A tiny random-weight Qwen2-Audio written through the real save_pretrained path."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from .common import random_model

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
    model = random_model(Qwen2AudioForConditionalGeneration, config, seed)
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


def stock_audio_tokens(backbone: Any, clip: np.ndarray) -> torch.Tensor:
    """The stock path: 30 s padded mel, masked encoder, as Qwen2AudioModel.forward builds it."""
    from transformers.masking_utils import create_bidirectional_mask

    m = backbone.model
    fe = backbone.feature_extractor(
        clip, sampling_rate=16000, return_attention_mask=True, padding="max_length", return_tensors="pt"
    )
    feat_len, out_len = m.audio_tower._get_feat_extract_output_lengths(fe["attention_mask"].sum(-1))
    mask2d = (torch.arange(1500)[None] < feat_len[:, None]).long()
    mask = create_bidirectional_mask(
        config=m.audio_tower.config, inputs_embeds=torch.zeros(1, 1500, 1), attention_mask=mask2d
    )
    with torch.no_grad():
        hidden = m.audio_tower(fe["input_features"], attention_mask=mask).last_hidden_state
        return m.multi_modal_projector(hidden)[0, : int(out_len[0])]
