"""Qwen2-Audio adapter: valid-frame audio encoder, truncated loading and early exit at the deepest head."""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from ..errors import AudioError, ModelLoadError
from ..fingerprint import Fingerprint
from .base import HeadLayout, LoadOptions, feature_fingerprint, precision_kwargs, resolve_exit_layer
from .decoder import PromptDecoder, split_prompt

ADAPTER_VERSION = "qwen2_audio/1"
AUDIO_PLACEHOLDER = "<|AUDIO|>"
DEFAULT_PROMPT = (
    "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
    "<|im_start|>user\nAudio 1: <|audio_bos|><|AUDIO|><|audio_eos|>\n"
    "What is the sound in this audio?<|im_end|>\n<|im_start|>assistant\n"
)
# Zero samples appended before mel extraction: the frames just past the clip then match
# the stock 30 s padded extraction, which the encoder's convolutions look into.
_MEL_TAIL = 1600

log = logging.getLogger(__name__)


@contextmanager
def _quiet_transformers() -> Iterator[None]:
    from transformers.utils import logging as hf_logging

    level = hf_logging.get_verbosity()
    bars = hf_logging.is_progress_bar_enabled()
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        hf_logging.set_verbosity(level)
        if bars:
            hf_logging.enable_progress_bar()


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


class Qwen2AudioBackbone:
    """Head activations of Qwen2-Audio's language model at the last prompt token."""

    name = "qwen2_audio"

    def __init__(self, model_dir: Path, options: LoadOptions = LoadOptions()):
        from transformers import AutoConfig, AutoProcessor, Qwen2AudioModel

        self.model_dir = Path(model_dir)
        self.device = torch.device(options.device)
        config = AutoConfig.from_pretrained(self.model_dir, local_files_only=True)
        text = config.text_config
        self.layout = HeadLayout(
            n_layers=text.num_hidden_layers,
            n_heads=text.num_attention_heads,
            head_dim=getattr(text, "head_dim", None) or text.hidden_size // text.num_attention_heads,
        )
        self.loaded_layers = self.layout.n_layers
        if options.load_layers is not None:
            self.loaded_layers = max(1, min(options.load_layers, self.layout.n_layers))
            text.num_hidden_layers = self.loaded_layers
            if getattr(text, "layer_types", None):
                text.layer_types = text.layer_types[: self.loaded_layers]
        kwargs: dict[str, Any] = {"config": config, "local_files_only": True, "device_map": {"": self.device}}
        # Default: 4-bit NF4 on CUDA, where a 7B model must fit; fp32 on CPU. NF4 quantises the
        # language model only: the audio encoder and projector stay in the compute dtype.
        precision = options.dtype or ("nf4" if self.device.type == "cuda" else "fp32")
        kwargs.update(precision_kwargs(precision, self.device, ["audio_tower", "multi_modal_projector"]))
        try:
            with _quiet_transformers():
                self.processor = AutoProcessor.from_pretrained(self.model_dir, local_files_only=True)
                # The base model has no lm_head: the vocabulary projection is never loaded or run.
                self.model = Qwen2AudioModel.from_pretrained(self.model_dir, **kwargs).eval()
        except (OSError, ValueError) as e:
            raise ModelLoadError(f"{self.model_dir}: could not load Qwen2-Audio ({e})") from e
        self.tokenizer = self.processor.tokenizer
        self.feature_extractor = self.processor.feature_extractor
        self.audio_token_id = int(config.audio_token_id)
        self.prompt = options.prompt or DEFAULT_PROMPT
        prefix, suffix = split_prompt(self.tokenizer, self.prompt, AUDIO_PLACEHOLDER)
        pad_id = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else 0
        self.decoder = PromptDecoder(
            self.model.language_model, prefix, suffix, self.audio_token_id, pad_id, self.device
        )
        self.fingerprint = self._fingerprint(config, precision)

    def _fingerprint(self, config: Any, precision: str) -> Fingerprint:
        full = config.to_dict()
        full["text_config"]["num_hidden_layers"] = self.layout.n_layers
        full["text_config"].pop("layer_types", None)
        return feature_fingerprint(
            ADAPTER_VERSION, full, self.model_dir, precision, self.prompt, self.feature_extractor, self.layout
        )

    @property
    def text_layers(self) -> Any:
        return self.model.language_model.layers

    def audio_tokens(self, clip: np.ndarray) -> torch.Tensor:
        """Projected audio tokens of one 16 kHz clip via the valid-frame encoder: (n_tokens, hidden)."""
        mel, n_valid = mel_valid_frames(self.feature_extractor, clip)
        if n_valid < 3:
            raise AudioError(f"clip of {clip.size} samples is too short for the audio encoder")
        return encode_valid_frames(self.model.audio_tower, self.model.multi_modal_projector, mel, n_valid)

    @torch.inference_mode()
    def head_activations(self, clips: Sequence[np.ndarray], exit_layer: int | None = None) -> torch.Tensor:
        exit_layer = resolve_exit_layer(exit_layer, self.loaded_layers)
        if not clips:
            return torch.empty(0, exit_layer + 1, self.layout.n_heads, self.layout.head_dim)
        out = self.decoder.heads([self.audio_tokens(clip) for clip in clips], exit_layer)  # (B, L, H * D)
        return out.view(len(clips), exit_layer + 1, self.layout.n_heads, self.layout.head_dim)
