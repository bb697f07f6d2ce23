"""Checks the Qwen2.5-Omni and Qwen3-Omni thinker adapters share, each against the stock thinker."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from calm_core.testing import tone

from .audio_lm_checks import stock_heads


def stock_thinker(model_dir: Path, thinker_class: Any) -> Any:
    """The whole stock thinker, vocabulary projection included, as transformers loads it from the folder."""
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(model_dir)
    return thinker_class.from_pretrained(model_dir, config=getattr(config, "thinker_config", config)).eval()


def thinker_inputs(text: dict[str, torch.Tensor], audio: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The stock thinker's keyword inputs from the tokenised prompt and the processed audio."""
    return {
        "input_ids": text["input_ids"],
        "attention_mask": text["attention_mask"],
        "input_features": audio["input_features"],
        "feature_attention_mask": audio["feature_attention_mask"],
    }


def check_encoder_matches_stock(backbone: Any, clip: np.ndarray, inputs: dict[str, torch.Tensor]) -> None:
    """Our audio tokens of one clip equal the stock audio features of the processor's inputs."""
    with torch.no_grad():
        stock = backbone.model.get_audio_features(inputs["input_features"], inputs["feature_attention_mask"])
        [ours] = backbone.audio_tokens([clip])
    assert ours.shape == stock.last_hidden_state.shape
    assert (ours - stock.last_hidden_state).abs().max().item() < 1e-5


def check_encoder_batch_equals_one_clip_at_a_time(backbone: Any, clips: Sequence[np.ndarray]) -> list[torch.Tensor]:
    """Returns the batched audio tokens."""
    with torch.no_grad():
        batched: list[torch.Tensor] = backbone.audio_tokens(clips)
        for clip, tokens in zip(clips, batched, strict=True):
            assert (tokens - backbone.audio_tokens([clip])[0]).abs().max().item() < 1e-5
    return batched


def check_prompt_is_the_processor_expansion(backbone: Any, clip: np.ndarray, inputs: dict[str, torch.Tensor]) -> None:
    [tokens] = backbone.audio_tokens([clip])
    d = backbone.decoder
    assert inputs["input_ids"][0].tolist() == d.prefix_ids + [backbone.audio_token_id] * tokens.shape[0] + d.suffix_ids


def check_audio_only_rotary_positions_are_plain(thinker: Any, inputs: dict[str, torch.Tensor]) -> None:
    """The 3-D (time, height, width) positions of an audio-only prompt are 0..n-1 on every axis."""
    positions, _ = thinker.model.get_rope_index(
        inputs["input_ids"],
        attention_mask=inputs["attention_mask"],
        audio_seqlens=inputs["feature_attention_mask"].sum(-1),
    )
    n = inputs["input_ids"].shape[1]
    assert torch.equal(positions, torch.arange(n).expand(3, 1, n))


def check_heads_match_the_stock_thinker(
    backbone: Any,
    thinker: Any,
    inputs_of: Callable[[Any, np.ndarray], dict[str, torch.Tensor]],
    n_heads: int,
    head_dim: int,
) -> None:
    """Heads of one right-padded batch equal the stock full forward of each clip alone."""
    clips = [tone(440.0, 1.0), tone(1800.0, 0.7, seed=4), tone(300.0, 4.3, seed=2)]
    ours = backbone.head_activations(clips)  # one batch: right-padded rows
    assert ours.shape == (3, 4, n_heads, head_dim)
    for i, clip in enumerate(clips):
        ref = stock_heads(thinker, inputs_of(backbone, clip)).view_as(ours[i])
        assert (ref - ours[i]).abs().max().item() < 1e-5
