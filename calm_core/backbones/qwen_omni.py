"""Qwen-Omni adapters (Qwen2.5-Omni and Qwen3-Omni): the thinker's audio encoder and language model only
(no vision blocks, no vocabulary projection, no talker, token2wav or code2wav), truncated loading and
early exit at the deepest head. The two share the thinker's layout and differ in their audio encoder.

Two facts make the stock forward easy to match exactly for audio-only input:
- the audio encoder runs on valid frames only. Qwen2.5-Omni's stock thinker drops the padded mel
  frames (feature_attention_mask) before the encoder, which then works in independent windows of
  2 * n_window frames with block-diagonal attention; what the 30 s padded input costs is the
  3000-frame log-mel, which mel_valid_frames avoids (equal values, see valid_frames.py). Qwen3-Omni's
  processor does not pad a single clip at all; see encode_qwen3_audio for its encoder.
- the multimodal (3-D) rotary positions of audio-only input are plain positions: get_rope_index only
  builds 3-D positions when an image or video grid is given, otherwise all three axes are 0..n-1, which
  is what the language model uses when given no position ids.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch

from ..errors import AudioError, ModelLoadError
from ..fingerprint import Fingerprint, canonical_json, sha256_text
from .audio_lm import default_precision, quiet_transformers, text_layout, truncate_layers
from .base import LoadOptions, feature_fingerprint, precision_kwargs, resolve_exit_layer
from .decoder import PromptDecoder, split_prompt
from .valid_frames import mel_valid_frames

ADAPTER_VERSION = "qwen2_5_omni/1"
AUDIO_PLACEHOLDER = "<|AUDIO|>"
# Qwen's documented system prompt, which the model was tuned with (the model card warns that others
# change its behaviour); a constant prefix, so its cost is paid once per model by a prefix cache.
SYSTEM_PROMPT = (
    "You are Qwen, a virtual human developed by the Qwen Team, Alibaba Group, "
    "capable of perceiving auditory and visual inputs, as well as generating text and speech."
)
# The chat template's rendering of [system, user: one audio] with the generation prompt.
DEFAULT_PROMPT = (
    f"<|im_start|>system\n{SYSTEM_PROMPT}<|im_end|>\n"
    "<|im_start|>user\n<|audio_bos|><|AUDIO|><|audio_eos|><|im_end|>\n<|im_start|>assistant\n"
)

QWEN3_ADAPTER_VERSION = "qwen3_omni_moe/1"
QWEN3_AUDIO_PLACEHOLDER = "<|audio_pad|>"
# Qwen3-Omni's chat template for [user: one audio] with the generation prompt; it adds no default
# system prompt.
QWEN3_DEFAULT_PROMPT = "<|im_start|>user\n<|audio_start|><|audio_pad|><|audio_end|><|im_end|>\n<|im_start|>assistant\n"


def omni_mel(feature_extractor: Any, clip: np.ndarray) -> torch.Tensor:
    """The valid log-mel frames of a 16 kHz clip, as the stock thinker keeps them: (n_mels, ceil(n / hop))."""
    mel, n_valid = mel_valid_frames(feature_extractor, clip)
    if n_valid < 3:
        raise AudioError(f"clip of {clip.size} samples is too short for the audio encoder")
    return mel[:, :n_valid]


def encode_audio(audio_tower: Any, mels: Sequence[torch.Tensor]) -> list[torch.Tensor]:
    """Audio tokens of several clips in one encoder call: [(n_tokens_i, hidden)].

    The encoder reads the clips' frames concatenated with their lengths, as the stock thinker
    passes them; windows never span two clips, so each clip's tokens equal its own run.
    """
    weight = audio_tower.conv1.weight
    lengths = torch.tensor([m.shape[-1] for m in mels])
    frames = torch.cat(list(mels), dim=-1).to(device=weight.device, dtype=weight.dtype)  # (n_mels, sum T)
    tokens = audio_tower(frames, feature_lens=lengths.to(weight.device)).last_hidden_state
    _, n_tokens = audio_tower._get_feat_extract_output_lengths(lengths)
    return list(tokens.split(n_tokens.tolist()))


def qwen3_mel(feature_extractor: Any, clip: np.ndarray) -> torch.Tensor:
    """Log-mel of a 16 kHz clip as Qwen3OmniMoeProcessor makes it for one clip (no padding): (n_mels, n // hop)."""
    if clip.size <= feature_extractor.n_fft // 2:
        raise AudioError(
            f"clip of {clip.size} samples is too short for the audio encoder (needs more than "
            f"{feature_extractor.n_fft // 2} samples, {feature_extractor.n_fft // 2 / 16:.1f} ms)"
        )
    features = feature_extractor(
        clip, sampling_rate=16_000, padding="longest", truncation=False, return_attention_mask=True, return_tensors="pt"
    )
    return features["input_features"][0, :, : int(features["attention_mask"].sum())]


def encode_qwen3_audio(audio_tower: Any, mels: Sequence[torch.Tensor]) -> list[torch.Tensor]:
    """Audio tokens of several clips, each equal to the stock encoder's run on that clip alone: [(n_tokens_i, hidden)].

    The encoder cuts each clip into chunks of 2 * n_window frames and pads every chunk of a call to
    the longest one before three stride-2 convolutions; padding leaks into a short chunk's last
    outputs (past the first convolution it is gelu(bias), not the zeros a clip alone is padded with).
    Alone, a clip's chunks are padded to min(its frames, 2 * n_window), so clips sharing that width
    share a call: every clip of at least 2 * n_window frames (1 s) in one call, shorter ones by length.
    Attention windows (n_window_infer) never span two clips.
    """
    from transformers.models.qwen3_omni_moe.modeling_qwen3_omni_moe import _get_feat_extract_output_lengths

    weight = audio_tower.conv2d1.weight
    chunk = 2 * audio_tower.n_window
    groups: dict[int, list[int]] = {}
    for i, mel in enumerate(mels):
        groups.setdefault(min(mel.shape[-1], chunk), []).append(i)
    out: list[torch.Tensor] = [torch.empty(0)] * len(mels)
    for members in groups.values():
        lengths = torch.tensor([mels[i].shape[-1] for i in members])
        frames = torch.cat([mels[i] for i in members], dim=-1).to(device=weight.device, dtype=weight.dtype)
        tokens = audio_tower(frames, feature_lens=lengths.to(weight.device)).last_hidden_state
        n_tokens = _get_feat_extract_output_lengths(lengths, audio_tower.n_window)
        for i, t in zip(members, tokens.split(n_tokens.tolist()), strict=True):
            out[i] = t
    return out


def thinker_of(config: Any) -> Any:
    """The thinker's config: a released checkpoint nests it in `thinker_config`; a thinker saved alone is it."""
    return getattr(config, "thinker_config", config)


class QwenOmniThinkerBackbone:
    """Head activations of a Qwen-Omni thinker's language model at the last prompt token.

    A family names its thinker class, prompt and audio encoding; loading, the prompt read-out and
    the fingerprint are shared.
    """

    name: str
    title: ClassVar[str]  # for messages, e.g. "Qwen2.5-Omni"
    adapter_version: ClassVar[str]  # in the fingerprint: bump when the features change
    default_prompt: ClassVar[str]
    audio_placeholder: ClassVar[str]

    def __init__(self, model_dir: Path, options: LoadOptions = LoadOptions()):
        from transformers import AutoConfig, AutoTokenizer, WhisperFeatureExtractor

        self.model_dir = Path(model_dir)
        self.device = torch.device(options.device)
        try:
            thinker = thinker_of(AutoConfig.from_pretrained(self.model_dir, local_files_only=True))
        except (OSError, ValueError) as e:
            raise ModelLoadError(f"{self.model_dir}: unreadable {self.title} config.json ({e})") from e
        on_disk = thinker.to_dict()
        self.layout = text_layout(thinker.text_config)
        thinker = copy.deepcopy(thinker)
        self.loaded_layers = truncate_layers(thinker.text_config, self.layout.n_layers, options.load_layers)
        self.drop_vision(thinker)
        # NF4 on CUDA, fp32 on CPU; the audio encoder stays in the compute dtype, as for Qwen2-Audio.
        precision = default_precision(options, self.device)
        kwargs: dict[str, Any] = {"config": thinker, "local_files_only": True, "device_map": {"": self.device}}
        kwargs.update(precision_kwargs(precision, self.device, ["audio_tower", "visual"]))
        try:
            with quiet_transformers():
                self.tokenizer = AutoTokenizer.from_pretrained(self.model_dir, local_files_only=True)
                self.feature_extractor = WhisperFeatureExtractor.from_pretrained(self.model_dir, local_files_only=True)
                # The base thinker has no lm_head; the speech-output modules' weights are skipped.
                model, info = self.thinker_class().from_pretrained(self.model_dir, output_loading_info=True, **kwargs)
        except (OSError, ValueError) as e:
            raise ModelLoadError(f"{self.model_dir}: could not load the {self.title} thinker ({e})") from e
        if info["missing_keys"]:
            missing = sorted(info["missing_keys"])
            raise ModelLoadError(
                f"{self.model_dir}: the weights lack {len(missing)} thinker tensors (e.g. {', '.join(missing[:3])}); "
                f"expected a {self.title} checkpoint or a thinker saved from one"
            )
        del model.visual  # what is left of it: audio-only input never reaches it
        self.model = model.eval()
        self.prompt = options.prompt or self.default_prompt
        prefix, suffix = split_prompt(self.tokenizer, self.prompt, self.audio_placeholder)
        pad_id = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else 0
        self.audio_token_id = int(thinker.audio_token_id)
        self.decoder = PromptDecoder(
            self.model.language_model, prefix, suffix, self.audio_token_id, pad_id, self.device
        )
        self.fingerprint: Fingerprint = feature_fingerprint(
            self.adapter_version,
            on_disk,
            self.model_dir,
            precision,
            self.prompt,
            self.feature_extractor,
            self.layout,
            prompt_ids=sha256_text(canonical_json([prefix, suffix])),  # the tokenizer's reading of the prompt
        )

    def thinker_class(self) -> Any:
        """The transformers thinker class without its language-modelling head."""
        raise NotImplementedError

    def drop_vision(self, thinker: Any) -> None:
        """Edit the thinker config so that the vision blocks are neither built nor read from disk."""
        thinker.vision_config.depth = 0

    @property
    def text_layers(self) -> Any:
        return self.model.language_model.layers

    def audio_tokens(self, clips: Sequence[np.ndarray]) -> list[torch.Tensor]:
        """Audio tokens of 16 kHz clips from their valid frames: [(n_tokens, hidden)]."""
        raise NotImplementedError

    @torch.inference_mode()
    def head_activations(self, clips: Sequence[np.ndarray], exit_layer: int | None = None) -> torch.Tensor:
        exit_layer = resolve_exit_layer(exit_layer, self.loaded_layers)
        if not clips:
            return torch.empty(0, exit_layer + 1, self.layout.n_heads, self.layout.head_dim)
        out = self.decoder.heads(self.audio_tokens(clips), exit_layer)  # (B, L, H * D)
        return out.view(len(clips), exit_layer + 1, self.layout.n_heads, self.layout.head_dim)


class Qwen2_5OmniBackbone(QwenOmniThinkerBackbone):
    """The Qwen2.5-Omni thinker (3B, 7B)."""

    name = "qwen2_5_omni"
    title = "Qwen2.5-Omni"
    adapter_version = ADAPTER_VERSION
    default_prompt = DEFAULT_PROMPT
    audio_placeholder = AUDIO_PLACEHOLDER

    def thinker_class(self) -> Any:
        from transformers import Qwen2_5OmniThinkerModel

        return Qwen2_5OmniThinkerModel

    def audio_tokens(self, clips: Sequence[np.ndarray]) -> list[torch.Tensor]:
        """Audio tokens of 16 kHz clips from their valid frames, one encoder call: [(n_tokens, hidden)]."""
        return encode_audio(self.model.audio_tower, [omni_mel(self.feature_extractor, clip) for clip in clips])


class Qwen3OmniMoeBackbone(QwenOmniThinkerBackbone):
    """The Qwen3-Omni thinker (30B-A3B: a mixture-of-experts language model).

    NF4 quantises the attention and dense linear layers only: the experts are fused 3-D parameters,
    not nn.Linear, which bitsandbytes leaves in the compute dtype. In the public 30B-A3B config they
    are 29.0 B of the thinker's 30.9 B parameters (54 GiB in fp16, 1.1 GiB per layer) against 0.9 B
    in attention, so an NF4 load is ~56 GiB at full depth; a truncated load scales it down per layer.
    """

    name = "qwen3_omni_moe"
    title = "Qwen3-Omni"
    adapter_version = QWEN3_ADAPTER_VERSION
    default_prompt = QWEN3_DEFAULT_PROMPT
    audio_placeholder = QWEN3_AUDIO_PLACEHOLDER

    def thinker_class(self) -> Any:
        from transformers import Qwen3OmniMoeThinkerModel

        return Qwen3OmniMoeThinkerModel

    def drop_vision(self, thinker: Any) -> None:
        thinker.vision_config.depth = 0
        thinker.vision_config.deepstack_visual_indexes = []  # their mergers feed image tokens only

    def audio_tokens(self, clips: Sequence[np.ndarray]) -> list[torch.Tensor]:
        return encode_qwen3_audio(self.model.audio_tower, [qwen3_mel(self.feature_extractor, clip) for clip in clips])
