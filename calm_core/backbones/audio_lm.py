"""What every "audio encoder + projector + decoder LM" adapter shares besides the prompt read-out
(decoder.PromptDecoder): loading a local folder with the decoder truncated to the layers needed, NF4 on
CUDA with the audio side unquantised, the fingerprint, and head_activations.

A family's file supplies its model class, its prompt tokens and its audio tokens (its own encoder).
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch

from ..errors import ModelLoadError
from ..fingerprint import Fingerprint
from .base import HeadLayout, LoadOptions, feature_fingerprint, precision_kwargs, resolve_exit_layer
from .decoder import PromptDecoder

# Modules kept in the compute dtype under NF4: the audio encoder and the projector into the decoder.
AUDIO_MODULES = ("audio_tower", "multi_modal_projector")
# A decoder layer's weights, under the released names (language_model.model.layers.N) or transformers 5's.
_DECODER_LAYER_KEY = re.compile(r"language_model\.(?:model\.)?layers\.(\d+)\.")


@contextmanager
def quiet_transformers() -> Iterator[None]:
    """No progress bars or load reports (e.g. the unused layers of a truncated load)."""
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


def text_layout(text_config: Any) -> HeadLayout:
    """The decoder's head grid from its config: num_hidden_layers x num_attention_heads of head_dim."""
    return HeadLayout(
        n_layers=text_config.num_hidden_layers,
        n_heads=text_config.num_attention_heads,
        head_dim=getattr(text_config, "head_dim", None) or text_config.hidden_size // text_config.num_attention_heads,
    )


def truncate_layers(text_config: Any, n_layers: int, load_layers: int | None) -> int:
    """Build only decoder layers 0..load_layers-1 (the rest are neither built nor read from disk)."""
    if load_layers is None:
        return n_layers
    kept = max(1, min(load_layers, n_layers))
    text_config.num_hidden_layers = kept
    if getattr(text_config, "layer_types", None):
        text_config.layer_types = text_config.layer_types[:kept]
    return kept


def stored_decoder_layers(model_dir: Path) -> int | None:
    """How many decoder layers, from layer 0 on, the folder's weights hold (from the shard index, or the
    single file's header); None where no weight name looks like a decoder layer's."""
    from safetensors import safe_open

    index, single = model_dir / "model.safetensors.index.json", model_dir / "model.safetensors"
    try:
        if index.is_file():
            names = list(json.loads(index.read_text())["weight_map"])
        elif single.is_file():
            with safe_open(str(single), framework="pt") as f:
                names = list(f.keys())
        else:
            return None
    except (OSError, ValueError, KeyError) as e:
        raise ModelLoadError(f"{model_dir}: unreadable weight index ({e})") from e
    layers = {int(m.group(1)) for name in names if (m := _DECODER_LAYER_KEY.search(name))}
    if not layers:
        return None
    n = 0
    while n in layers:
        n += 1
    return n


def check_stored_layers(model_dir: Path, kept: int, n_layers: int) -> None:
    """Refuse to build decoder layers the folder has no weights for: transformers would fill them with random
    values without a word. A folder written for an early exit (bench/realsize.py) holds only layers 0..exit."""
    stored = stored_decoder_layers(model_dir)
    if stored is not None and stored < kept:
        raise ModelLoadError(
            f"{model_dir}: holds decoder layers 0..{stored - 1} of {n_layers}, but {kept} were to be loaded; "
            f"load at most {stored} (e.g. calm fit --max-layer {stored - 1})"
        )


def default_precision(options: LoadOptions, device: torch.device) -> str:
    # 4-bit NF4 on CUDA, where a 7B model must fit; fp32 on CPU.
    return options.dtype or ("nf4" if device.type == "cuda" else "fp32")


def load_pretrained(model_class: Any, model_dir: Path, config: Any, precision: str, device: torch.device) -> Any:
    """from_pretrained from the local folder only, in eval mode; NF4 quantises the decoder only."""
    kwargs: dict[str, Any] = {"config": config, "local_files_only": True, "device_map": {"": device}}
    kwargs.update(precision_kwargs(precision, device, AUDIO_MODULES))
    return model_class.from_pretrained(model_dir, **kwargs).eval()


def layout_fingerprint(
    adapter: str, config: Any, layout: HeadLayout, model_dir: Path, precision: str, prompt: str, feature_extractor: Any
) -> Fingerprint:
    """The fingerprint of the full model, however many layers were loaded."""
    full = config.to_dict()
    full["text_config"]["num_hidden_layers"] = layout.n_layers
    full["text_config"].pop("layer_types", None)
    return feature_fingerprint(adapter, full, model_dir, precision, prompt, feature_extractor, layout)


class AudioLMBackbone:
    """Head activations of an audio LM's decoder at the last prompt token (the Backbone protocol).

    Subclasses name their model class and implement prompt_ids and audio_tokens; a family that loads
    differently overrides load_parts and make_fingerprint.
    """

    name: str
    title: ClassVar[str]  # for messages, e.g. "Audio Flamingo 3"
    adapter_version: ClassVar[str]  # in the fingerprint: bump when the features change
    default_prompt: ClassVar[str]

    def __init__(self, model_dir: Path, options: LoadOptions = LoadOptions()):
        from transformers import AutoConfig

        self.model_dir = Path(model_dir)
        self.device = torch.device(options.device)
        try:
            config = AutoConfig.from_pretrained(self.model_dir, local_files_only=True)
        except (OSError, ValueError) as e:
            raise ModelLoadError(f"{self.model_dir}: unreadable {self.title} config.json ({e})") from e
        self.layout = text_layout(config.text_config)
        self.loaded_layers = truncate_layers(config.text_config, self.layout.n_layers, options.load_layers)
        check_stored_layers(self.model_dir, self.loaded_layers, self.layout.n_layers)
        self.precision = default_precision(options, self.device)
        self.load_parts(config)
        self.audio_token_id = int(config.audio_token_id)
        self.prompt = options.prompt or self.template_prompt()
        prefix, suffix = self.prompt_ids(self.prompt)
        pad_id = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else 0
        self.decoder = PromptDecoder(
            self.model.language_model, prefix, suffix, self.audio_token_id, pad_id, self.device
        )
        self.fingerprint = self.make_fingerprint(config)

    def load_parts(self, config: Any) -> None:
        """Load the model, tokenizer and feature extractor from model_dir (after layout and precision are set)."""
        from transformers import AutoProcessor

        try:
            with quiet_transformers():
                self.processor = AutoProcessor.from_pretrained(self.model_dir, local_files_only=True)
                # The base model class has no lm_head: the vocabulary projection is never loaded or run.
                self.model = load_pretrained(self.model_class(), self.model_dir, config, self.precision, self.device)
        except (OSError, ValueError) as e:
            raise ModelLoadError(f"{self.model_dir}: could not load {self.title} ({e})") from e
        self.tokenizer = self.processor.tokenizer
        self.feature_extractor = self.processor.feature_extractor

    def make_fingerprint(self, config: Any) -> Fingerprint:
        """What the features depend on: adapter version, weights, layout, precision, prompt, feature extractor."""
        return layout_fingerprint(
            self.adapter_version,
            config,
            self.layout,
            self.model_dir,
            self.precision,
            self.prompt,
            self.feature_extractor,
        )

    def model_class(self) -> Any:
        """The transformers class of the model without its language-modelling head."""
        raise NotImplementedError

    def template_prompt(self) -> str:
        """The default prompt: one audio-only user turn in the family's chat format."""
        return self.default_prompt

    def prompt_ids(self, prompt: str) -> tuple[list[int], list[int]]:
        """Token ids before and after the audio in the prompt."""
        raise NotImplementedError

    def audio_tokens(self, clip: np.ndarray) -> torch.Tensor:
        """Projected audio tokens of one 16 kHz mono clip: (n_tokens, text hidden)."""
        raise NotImplementedError

    def batch_audio_tokens(self, clips: Sequence[np.ndarray]) -> list[torch.Tensor]:
        """Audio tokens of each clip; a family whose encoder batches overrides this."""
        return [self.audio_tokens(clip) for clip in clips]

    @property
    def text_layers(self) -> Any:
        return self.model.language_model.layers

    @torch.inference_mode()
    def head_activations(self, clips: Sequence[np.ndarray], exit_layer: int | None = None) -> torch.Tensor:
        exit_layer = resolve_exit_layer(exit_layer, self.loaded_layers)
        if not clips:
            return torch.empty(0, exit_layer + 1, self.layout.n_heads, self.layout.head_dim)
        out = self.decoder.heads(self.batch_audio_tokens(clips), exit_layer)  # (B, L, H * D)
        return out.view(len(clips), exit_layer + 1, self.layout.n_heads, self.layout.head_dim)
