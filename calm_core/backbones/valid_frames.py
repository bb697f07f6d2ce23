"""Valid-frame audio encoding, shared by the families whose encoder is Whisper's (whisper, qwen2_audio,
qwen_omni, audioflamingo3): the log-mel of the clip alone, not of 30 s of padding, and the encoder run over
the frames that hold it. Equal to the stock 30 s extraction on those frames (tests compare them)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

# Zero samples appended before mel extraction: the frames just past the clip then match
# the stock 30 s padded extraction, which the encoder's convolutions look into.
_MEL_TAIL = 1600


def mel_valid_frames(feature_extractor: Any, clip: np.ndarray) -> tuple[torch.Tensor, int]:
    """Log-mel of a 16 kHz clip with just the frames the encoder reads: (n_mels, frames).

    Whisper's normalisation clamps at (global max - 8); zeros past the clip never raise
    the max, so a short zero tail gives the same values as 30 s of padding.
    """
    if clip.size + _MEL_TAIL > feature_extractor.n_samples:
        # Near 30 s the stock extraction already pads (or truncates) to exactly 30 s: use it as is.
        padded, padding = clip, "max_length"
    else:
        padded, padding = np.concatenate([clip, np.zeros(_MEL_TAIL, dtype=np.float32)]), "longest"
    feats = feature_extractor(padded, sampling_rate=16_000, padding=padding, truncation=True, return_tensors="pt")[
        "input_features"
    ][0]
    n_valid = min(-(-clip.size // feature_extractor.hop_length), feats.shape[-1])
    return feats[:, : _context_frames(n_valid)], n_valid


def _context_frames(n_valid: int, max_frames: int = 3000) -> int:
    # conv2 output j reads mel frames 2j-2 .. 2j+2; the last valid output is j = L2 - 1.
    conv_len = (n_valid - 1) // 2 + 1
    return min(2 * conv_len + 1, max_frames)


def encode_valid_frames(audio_tower: Any, projector: Any, mel: torch.Tensor, n_valid: int) -> torch.Tensor:
    """Audio tokens from the valid mel frames only, equal to the stock 30 s padded, masked run.

    The stock encoder masks padded positions out of self-attention, so they never reach a
    valid token except through the two convolutions; feeding the frames those read
    (mel_valid_frames) and slicing the positional table reproduces it at a fraction of the cost.
    mel: (n_mels, frames) -> (n_tokens, text_hidden).
    """
    weight = audio_tower.conv1.weight
    x = mel.to(device=weight.device, dtype=weight.dtype)[None]
    conv_len = (n_valid - 1) // 2 + 1
    x = F.gelu(audio_tower.conv1(x))
    x = F.gelu(audio_tower.conv2(x))[:, :, :conv_len]
    h = x.permute(0, 2, 1) + audio_tower.embed_positions.weight[:conv_len]
    for layer in audio_tower.layers:
        h = layer(h, None)
    h = audio_tower.avg_pooler(h.permute(0, 2, 1)).permute(0, 2, 1)
    h = audio_tower.layer_norm(h)
    n_tokens = (conv_len - 2) // 2 + 1
    return projector(h[0, :n_tokens])


def encode_valid_frames_batch(
    audio_tower: Any, projector: Any, mels: Sequence[tuple[torch.Tensor, int]]
) -> list[torch.Tensor]:
    """Audio tokens of several clips in one encoder run, each equal to encode_valid_frames on it alone.

    The mels are zero-padded to the longest: a clip's valid conv outputs never read past its own
    context frames (_context_frames), and its padded positions are masked out of self-attention
    as keys, as the stock run masks its 30 s of padding. [((n_mels, frames), n_valid)] ->
    [(n_tokens, text_hidden)].
    """
    from transformers.masking_utils import create_bidirectional_mask

    weight = audio_tower.conv1.weight
    width = max(mel.shape[-1] for mel, _ in mels)
    x = torch.stack([F.pad(mel, (0, width - mel.shape[-1])) for mel, _ in mels]).to(weight.device, weight.dtype)
    conv_lens = torch.tensor([(n_valid - 1) // 2 + 1 for _, n_valid in mels])
    longest = int(conv_lens.max())
    x = F.gelu(audio_tower.conv1(x))
    x = F.gelu(audio_tower.conv2(x))[:, :, :longest]
    h = x.permute(0, 2, 1) + audio_tower.embed_positions.weight[:longest]  # (B, T, d)
    valid = (torch.arange(longest)[None] < conv_lens[:, None]).long().to(weight.device)
    mask = create_bidirectional_mask(config=audio_tower.config, inputs_embeds=h, attention_mask=valid)
    for layer in audio_tower.layers:
        h = layer(h, mask)
    h = audio_tower.avg_pooler(h.permute(0, 2, 1)).permute(0, 2, 1)
    tokens = projector(audio_tower.layer_norm(h))  # (B, longest // 2, text_hidden)
    return [tokens[i, : (int(n) - 2) // 2 + 1] for i, n in enumerate(conv_lens)]
