"""Voxtral adapter (Mistral): a Whisper encoder over whole 30 s windows, four frames stacked per audio
token by the projector, and a Llama-style decoder prompted in Mistral's instruct format."""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from ..errors import AudioError
from .audio_lm import AudioLMBackbone

ADAPTER_VERSION = "voxtral/1"
AUDIO_PLACEHOLDER = "[AUDIO]"
# Mistral's instruct format for one user turn holding only the audio (what the tokenizer's chat
# template gives, [AUDIO] repeated once per audio token in place of the placeholder).
DEFAULT_PROMPT = "<s>[INST][BEGIN_AUDIO][AUDIO][/INST]"
WINDOW_FRAMES = 3000  # mel frames per encoder window: 30 s at a 10 ms hop


def encode_with_specials(tokenizer: Any, text: str) -> list[int]:
    """Token ids of text in which the tokenizer's special tokens (<s>, [INST], ...) are written out:
    Mistral's tokenizer encodes plain text only, so specials are looked up by name."""
    specials = sorted(tokenizer.all_special_tokens, key=len, reverse=True)
    ids: list[int] = []
    for piece in re.split(f"({'|'.join(map(re.escape, specials))})", text):
        if piece in specials:
            ids.append(int(tokenizer.convert_tokens_to_ids(piece)))
        elif piece:
            ids.extend(tokenizer.encode(piece, add_special_tokens=False))
    return ids


class VoxtralBackbone(AudioLMBackbone):
    """Head activations of Voxtral's decoder at the last prompt token.

    The encoder is the stock one on the stock input: Voxtral's Whisper encoder takes no attention mask
    and attends to the padding of its 30 s window, so a valid-frame run would give other audio tokens.
    A clip of up to 30 s is always one window and 375 audio tokens.
    """

    name = "voxtral"
    title = "Voxtral"
    adapter_version = ADAPTER_VERSION
    default_prompt = DEFAULT_PROMPT

    def model_class(self) -> Any:
        from transformers import VoxtralModel

        return VoxtralModel

    def prompt_ids(self, prompt: str) -> tuple[list[int], list[int]]:
        if prompt.count(AUDIO_PLACEHOLDER) != 1:
            raise ValueError(f"prompt must contain {AUDIO_PLACEHOLDER} exactly once, got: {prompt!r}")
        head, tail = prompt.split(AUDIO_PLACEHOLDER)
        return encode_with_specials(self.tokenizer, head), encode_with_specials(self.tokenizer, tail)

    def windows(self, clip: np.ndarray) -> torch.Tensor:
        """The processor's input: log-mel of the clip zero-padded to whole 30 s windows, (n_windows, n_mels, 3000)."""
        if clip.size == 0:
            raise AudioError("empty clip: the audio encoder needs at least one sample")
        fe = self.feature_extractor
        mel = fe(
            clip,
            sampling_rate=16_000,
            padding=True,
            truncation=False,
            pad_to_multiple_of=fe.n_samples,
            return_tensors="pt",
        )["input_features"]  # (1, n_mels, frames)
        return mel.reshape(fe.feature_size, -1, WINDOW_FRAMES).transpose(0, 1)

    def audio_tokens(self, clip: np.ndarray) -> torch.Tensor:
        return self.batch_audio_tokens([clip])[0]

    def batch_audio_tokens(self, clips: Sequence[np.ndarray]) -> list[torch.Tensor]:
        """Every window of every clip through the stock encoder and projector in one run."""
        windows = [self.windows(clip) for clip in clips]
        features = torch.cat(windows).to(self.device)
        tokens = self.model.get_audio_features(input_features=features, return_dict=True).pooler_output
        return list(tokens.split([w.shape[0] * len(tokens) // features.shape[0] for w in windows]))
