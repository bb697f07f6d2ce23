"""IBM Granite Speech adapter: a conformer encoder (CTC-trained, block attention) and a Q-Former
projector into a Granite language model, with the speech LoRA the released checkpoints ship beside
the weights (adapter_config.json + adapter_model.safetensors).

The stock model turns its LoRA on whenever audio is given and off for text alone; CALM always gives
audio, so the LoRA is loaded with peft's own API (not transformers' integration, whose peft version
floor can exceed what is released) and stays on for every forward (prefix included, as in the stock
forward). peft wraps the attention projections, o_proj among them; the heads are the input of
that wrapped o_proj, which is still every head's output.
"""

from __future__ import annotations

import contextlib
import json
import math
import re
import tempfile
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..errors import AudioError, ModelLoadError
from ..fingerprint import Fingerprint, canonical_json
from .audio_lm import AudioLMBackbone, quiet_transformers
from .base import precision_kwargs
from .decoder import split_prompt

ADAPTER_VERSION = "granite_speech/1"
AUDIO_PLACEHOLDER = "<|audio|>"
# The system turn of the model card's examples. Without one, Granite's chat template writes today's
# date into the prompt, which would change the features (and the fingerprint) every day.
SYSTEM_PROMPT = (
    "Knowledge Cutoff Date: April 2024.\nToday's Date: April 9, 2025.\n"
    "You are Granite, developed by IBM. You are a helpful AI assistant"
)
AUDIO_ONLY_TURN = [{"role": "system", "content": SYSTEM_PROMPT}, {"role": "user", "content": AUDIO_PLACEHOLDER}]
# What the chat template renders for AUDIO_ONLY_TURN with the generation prompt.
DEFAULT_PROMPT = (
    f"<|start_of_role|>system<|end_of_role|>{SYSTEM_PROMPT}<|end_of_text|>\n"
    f"<|start_of_role|>user<|end_of_role|>{AUDIO_PLACEHOLDER}<|end_of_text|>\n"
    "<|start_of_role|>assistant<|end_of_role|>"
)
# Kept in the compute dtype under NF4: the conformer and the Q-Former projector.
AUDIO_MODULES = ("encoder", "projector")
ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = "adapter_model.safetensors"
ADAPTER_PREFIX = "adapter_"  # adapter_config.json, adapter_model.safetensors
# adapter_config.json keys that say where or with what the adapter was written, not what it computes.
_VOLATILE_ADAPTER_KEYS = ("base_model_name_or_path", "peft_version", "revision", "inference_mode")


@dataclass(frozen=True)
class GraniteMel:
    """GraniteSpeechFeatureExtractor's settings and its log-mel, computed with torch alone.

    The stock extractor needs torchaudio (its MelSpectrogram), whose PyPI wheels are CUDA builds;
    this is the same computation: a power mel spectrogram (centred, reflect-padded STFT of a periodic
    Hann window, HTK mel scale, no filter norm), log10 floored 8 decades below the clip's maximum,
    scaled, and two frames stacked per encoder frame.
    """

    sampling_rate: int = 16_000
    n_fft: int = 512
    win_length: int = 400
    hop_length: int = 160
    n_mels: int = 80
    projector_window_size: int = 15
    projector_downsample_rate: int = 5

    @classmethod
    def from_folder(cls, model_dir: Path) -> GraniteMel:
        """The settings as GraniteSpeechFeatureExtractor reads them from the folder (its defaults if unset)."""
        from transformers import FeatureExtractionMixin

        try:
            saved, _ = FeatureExtractionMixin.get_feature_extractor_dict(str(model_dir), local_files_only=True)
        except OSError as e:
            raise ModelLoadError(f"{model_dir}: no Granite Speech feature extractor settings ({e})") from e
        settings = {}
        for key, default in asdict(cls()).items():
            value = saved.get(key, default)
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                raise ModelLoadError(
                    f"{model_dir}: feature extractor setting {key}={value!r} is not a positive integer"
                )
            settings[key] = value
        return cls(**settings)

    def to_dict(self) -> dict[str, int]:
        return {**asdict(self), "feature_size": self.n_mels}

    def filters(self) -> torch.Tensor:
        """HTK mel filters, (n_fft // 2 + 1, n_mels), the float32 operations of torchaudio's melscale_fbanks."""
        all_freqs = torch.linspace(0, self.sampling_rate // 2, self.n_fft // 2 + 1)
        top = 2595.0 * math.log10(1.0 + (self.sampling_rate // 2) / 700.0)
        f_pts = 700.0 * (10.0 ** (torch.linspace(0.0, top, self.n_mels + 2) / 2595.0) - 1.0)
        f_diff = f_pts[1:] - f_pts[:-1]
        slopes = f_pts.unsqueeze(0) - all_freqs.unsqueeze(1)
        down = (-1.0 * slopes[:, :-2]) / f_diff[:-1]
        up = slopes[:, 2:] / f_diff[1:]
        return torch.max(torch.zeros(1), torch.min(down, up))

    def log_mel(self, clips: torch.Tensor) -> torch.Tensor:
        """Encoder input of equal-length 16 kHz clips (B, samples): (B, frames // 2, 2 * n_mels)."""
        spec = torch.stft(
            clips.float(),
            n_fft=self.n_fft,
            hop_length=self.hop_length,
            win_length=self.win_length,
            window=torch.hann_window(self.win_length),
            center=True,
            pad_mode="reflect",
            normalized=False,
            onesided=True,
            return_complex=True,
        )
        power = spec.abs().pow(2.0)  # (B, n_fft // 2 + 1, frames)
        mel = torch.matmul(power.transpose(-1, -2), self.filters()).transpose(-1, -2)  # (B, n_mels, frames)
        logmel = mel.transpose(-1, -2).clip_(min=1e-10).log10_()
        peak = logmel.amax(dim=(-2, -1), keepdim=True)
        logmel = torch.maximum(logmel, peak - 8.0).div_(4).add_(1)
        if logmel.shape[1] % 2 == 1:  # an odd last frame is dropped
            logmel = logmel[:, :-1]
        return logmel.reshape(clips.shape[0], -1, 2 * logmel.shape[-1])

    def n_audio_tokens(self, n_samples: int) -> int:
        """The processor's count of <|audio|> tokens for a clip (GraniteSpeechFeatureExtractor's formula)."""
        encoder_frames = (n_samples // self.hop_length + 1) // 2
        windows = math.ceil(encoder_frames / self.projector_window_size)
        return windows * (self.projector_window_size // self.projector_downsample_rate)

    def check_length(self, clip: np.ndarray) -> None:
        # The STFT reflects n_fft // 2 samples at each end, which needs a longer clip.
        if clip.size <= self.n_fft // 2:
            raise AudioError(
                f"clip of {clip.size} samples is too short for Granite Speech's log-mel"
                f" (needs more than {self.n_fft // 2} samples at {self.sampling_rate} Hz)"
            )


def adapter_settings(model_dir: Path, config: Any) -> str:
    """The folder's LoRA settings for the fingerprint; an error where the config expects a LoRA that is absent."""
    path = model_dir / ADAPTER_CONFIG
    if not path.is_file():
        if getattr(config, "has_lora_adapter", False):
            raise ModelLoadError(
                f"{model_dir}: config.json sets has_lora_adapter but the folder has no {ADAPTER_CONFIG}"
                " (the speech LoRA that ibm-granite/granite-speech checkpoints ship beside the weights)"
            )
        return "none"
    try:
        settings = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ModelLoadError(f"{path}: unreadable LoRA adapter config ({e})") from e
    if not isinstance(settings, dict):
        raise ModelLoadError(f"{path}: expected a JSON object, got {type(settings).__name__}")
    try:
        import peft  # noqa: F401
    except ImportError as e:
        raise ModelLoadError(
            f"{model_dir}: the speech LoRA ({ADAPTER_CONFIG}) needs peft: pip install 'calm-audio[granite]'"
        ) from e
    return canonical_json({k: v for k, v in settings.items() if k not in _VOLATILE_ADAPTER_KEYS})


@contextlib.contextmanager
def folder_without_adapter(model_dir: Path) -> Iterator[Path]:
    """A temporary folder of links to every file of model_dir except the adapter's."""
    with tempfile.TemporaryDirectory(prefix="calm-granite-") as tmp:
        view = Path(tmp)
        for entry in model_dir.iterdir():
            if not entry.name.startswith(ADAPTER_PREFIX):
                (view / entry.name).symlink_to(entry.resolve())
        yield view


def lora_key(adapter_key: str) -> str:
    """An adapter tensor's name relative to GraniteSpeechModel, as peft's state-dict helpers name it.

    Saved names start with peft's base_model.model. and follow the conditional-generation model's
    layout: model.language_model. (transformers 5) or language_model.model. (the released checkpoints).
    """
    key = adapter_key.removeprefix("base_model.model.")
    key = key.removeprefix("model.")
    return key.replace("language_model.model.", "language_model.", 1)


def decoder_layer(key: str) -> int:
    """The decoder layer a tensor name belongs to; -1 for tensors outside the decoder's layers."""
    match = re.match(r"language_model\.layers\.(\d+)\.", key)
    return int(match.group(1)) if match else -1


def load_speech_lora(model: torch.nn.Module, model_dir: Path) -> None:
    """The folder's LoRA onto model through peft's own API, active; every tensor must find its place."""
    from peft import PeftConfig, inject_adapter_in_model, set_peft_model_state_dict
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    weights_path = model_dir / ADAPTER_WEIGHTS
    try:
        config = PeftConfig.from_pretrained(str(model_dir), local_files_only=True)
        weights = load_file(str(weights_path))
    except (OSError, ValueError, SafetensorError) as e:
        raise ModelLoadError(f"{model_dir}: could not read the speech LoRA ({e})") from e
    config.inference_mode = True
    inject_adapter_in_model(config, model, adapter_name="default")
    decoder: Any = model.language_model
    built = len(decoder.layers)  # a truncated load builds the first layers only
    state = {k: v for k, v in ((lora_key(k), v) for k, v in weights.items()) if decoder_layer(k) < built}
    expected = {n.replace(".default.", ".") for n, _ in model.named_parameters() if ".default." in n}
    missing, unexpected = sorted(expected - state.keys()), sorted(state.keys() - expected)
    if missing or unexpected:
        raise ModelLoadError(
            f"{weights_path}: the LoRA does not fit the model's layers"
            f" (missing {len(missing)}: {missing[:3]}; unexpected {len(unexpected)}: {unexpected[:3]})"
        )
    set_peft_model_state_dict(model, state, adapter_name="default")
    model.eval()  # the injected layers are built in training mode: their LoRA dropout would be on


class GraniteSpeechBackbone(AudioLMBackbone):
    """Head activations of Granite Speech's Granite decoder (speech LoRA on) at the last prompt token.

    The encoder runs on each clip alone, exactly the stock input for one clip: the stock extractor
    pads a batch to its longest clip and the conformer takes no padding mask (its convolutions and
    block attention see the padding), so only clips of equal length are encoded together.
    """

    name = "granite_speech"
    title = "Granite Speech"
    adapter_version = ADAPTER_VERSION
    default_prompt = DEFAULT_PROMPT

    def load_parts(self, config: Any) -> None:
        """The tokenizer, the torch log-mel and the base model with the speech LoRA on."""
        from transformers import AutoTokenizer, GraniteSpeechModel

        self.lora = adapter_settings(self.model_dir, config)
        self.mel = GraniteMel.from_folder(self.model_dir)
        kwargs: dict[str, Any] = {"config": config, "local_files_only": True, "device_map": {"": self.device}}
        kwargs.update(precision_kwargs(self.precision, self.device, AUDIO_MODULES))
        try:
            with quiet_transformers():
                self.tokenizer = AutoTokenizer.from_pretrained(self.model_dir, local_files_only=True)
                # The base model (no lm_head), from a view of the folder without the adapter: with peft
                # installed, from_pretrained would load it through transformers' PEFT integration, which
                # demands a peft release newer than any on the index (transformers 5.25: peft >= 0.22).
                with folder_without_adapter(self.model_dir) as base_dir:
                    self.model = GraniteSpeechModel.from_pretrained(base_dir, **kwargs).eval()
        except (OSError, ValueError) as e:
            raise ModelLoadError(f"{self.model_dir}: could not load {self.title} ({e})") from e
        if self.lora != "none":
            # On for every forward: what the stock generate does whenever audio is given.
            load_speech_lora(self.model, self.model_dir)
        self.feature_extractor = self.mel

    def make_fingerprint(self, config: Any) -> Fingerprint:
        base = super().make_fingerprint(config)
        # The processor component holds every log-mel setting (the shared keys miss win_length, n_mels).
        components = {**base.components, "processor": canonical_json(self.mel.to_dict()), "lora": self.lora}
        return Fingerprint(components=components, model_id=base.model_id)

    def template_prompt(self) -> str:
        if getattr(self.tokenizer, "chat_template", None) is None:
            return DEFAULT_PROMPT
        prompt: str = self.tokenizer.apply_chat_template(AUDIO_ONLY_TURN, tokenize=False, add_generation_prompt=True)
        return prompt

    def prompt_ids(self, prompt: str) -> tuple[list[int], list[int]]:
        return split_prompt(self.tokenizer, prompt, AUDIO_PLACEHOLDER)

    def audio_tokens(self, clip: np.ndarray) -> torch.Tensor:
        return self.batch_audio_tokens([clip])[0]

    def batch_audio_tokens(self, clips: Sequence[np.ndarray]) -> list[torch.Tensor]:
        """Clips of equal length go through the stock encoder and projector together, each alone otherwise."""
        for clip in clips:
            self.mel.check_length(clip)
        groups: dict[int, list[int]] = {}
        for i, clip in enumerate(clips):
            groups.setdefault(clip.size, []).append(i)
        tokens: list[torch.Tensor | None] = [None] * len(clips)
        dtype = self.model.encoder.input_linear.weight.dtype
        for members in groups.values():
            audio = torch.stack([torch.from_numpy(np.asarray(clips[i], dtype=np.float32)) for i in members])
            features = self.mel.log_mel(audio).to(self.device, dtype)  # (n, frames, 2 * n_mels)
            projected = self.model.get_audio_features(features, return_dict=True).pooler_output
            for i, row in zip(members, projected, strict=True):
                tokens[i] = row
        return [t for t in tokens if t is not None]
