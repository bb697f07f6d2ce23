"""Qwen2-Audio adapter: valid-frame audio encoder, truncated loading and early exit at the deepest head."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from ..errors import AudioError
from .audio_lm import AudioLMBackbone
from .decoder import split_prompt
from .valid_frames import encode_valid_frames, encode_valid_frames_batch, mel_valid_frames

ADAPTER_VERSION = "qwen2_audio/1"
AUDIO_PLACEHOLDER = "<|AUDIO|>"
DEFAULT_PROMPT = (
    "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
    "<|im_start|>user\nAudio 1: <|audio_bos|><|AUDIO|><|audio_eos|>\n"
    "What is the sound in this audio?<|im_end|>\n<|im_start|>assistant\n"
)

log = logging.getLogger(__name__)


class Qwen2AudioBackbone(AudioLMBackbone):
    """Head activations of Qwen2-Audio's language model at the last prompt token."""

    name = "qwen2_audio"
    title = "Qwen2-Audio"
    adapter_version = ADAPTER_VERSION
    default_prompt = DEFAULT_PROMPT

    def model_class(self) -> Any:
        from transformers import Qwen2AudioModel

        return Qwen2AudioModel

    def prompt_ids(self, prompt: str) -> tuple[list[int], list[int]]:
        return split_prompt(self.tokenizer, prompt, AUDIO_PLACEHOLDER)

    def audio_tokens(self, clip: np.ndarray) -> torch.Tensor:
        """Projected audio tokens of one 16 kHz clip via the valid-frame encoder: (n_tokens, hidden)."""
        return valid_frame_audio_tokens(self.model, self.feature_extractor, clip)

    def batch_audio_tokens(self, clips: Sequence[np.ndarray]) -> list[torch.Tensor]:
        """Audio tokens of each clip through one padded, masked encoder run (equal to one at a time)."""
        return valid_frame_audio_tokens_batch(self.model, self.feature_extractor, clips)


def valid_frame_audio_tokens_batch(
    model: Any, feature_extractor: Any, clips: Sequence[np.ndarray]
) -> list[torch.Tensor]:
    """valid_frame_audio_tokens of several clips, clips of equal length batched in one encoder run.

    Bucketing, not padding to the longest (encode_valid_frames_batch can do either): equal lengths
    batch without waste (0.76x of one at a time, 8 clips of 2 s, quiet 2-core CPU), while a padded
    batch of 0.7-3.1 s clips is slower (1.37x: the padding costs more than batching saves).
    """
    mels = []
    for clip in clips:
        mel, n_valid = mel_valid_frames(feature_extractor, clip)
        if n_valid < 3:
            raise AudioError(f"clip of {clip.size} samples is too short for the audio encoder")
        mels.append((mel, n_valid))
    buckets: dict[tuple[int, int], list[int]] = {}
    for i, (mel, n_valid) in enumerate(mels):
        buckets.setdefault((n_valid, mel.shape[-1]), []).append(i)
    out: list[torch.Tensor] = [torch.empty(0)] * len(mels)
    for idx in buckets.values():
        encoded = encode_valid_frames_batch(model.audio_tower, model.multi_modal_projector, [mels[i] for i in idx])
        for i, tokens in zip(idx, encoded, strict=True):
            out[i] = tokens
    return out


def valid_frame_audio_tokens(model: Any, feature_extractor: Any, clip: np.ndarray) -> torch.Tensor:
    """Audio tokens of a Whisper encoder + average pool + projector (Qwen2-Audio, Audio Flamingo 3)."""
    mel, n_valid = mel_valid_frames(feature_extractor, clip)
    if n_valid < 3:
        raise AudioError(f"clip of {clip.size} samples is too short for the audio encoder")
    return encode_valid_frames(model.audio_tower, model.multi_modal_projector, mel, n_valid)
