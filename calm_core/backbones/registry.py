"""Which adapter opens a model folder: ADAPTERS, keyed by config.json `model_type` (as transformers'
AutoConfig keys its own), and load_backbone. The family files hold no registry."""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path

import torch

from ..errors import ModelLoadError
from .audioflamingo3 import AudioFlamingo3Backbone
from .base import DTYPES, Backbone, LoadOptions, cpu_bf16_instructions, resolve_model_dir
from .granite_speech import GraniteSpeechBackbone
from .qwen2_audio import Qwen2AudioBackbone
from .qwen_omni import Qwen2_5OmniBackbone, Qwen3OmniMoeBackbone
from .voxtral import VoxtralBackbone
from .whisper import WhisperBackbone

ADAPTERS: dict[str, Callable[[Path, LoadOptions], Backbone]] = {
    "audioflamingo3": AudioFlamingo3Backbone,
    "granite_speech": GraniteSpeechBackbone,
    "qwen2_audio": Qwen2AudioBackbone,
    "qwen2_5_omni": Qwen2_5OmniBackbone,  # a released checkpoint: only its thinker is loaded
    "qwen2_5_omni_thinker": Qwen2_5OmniBackbone,
    "qwen3_omni_moe": Qwen3OmniMoeBackbone,  # a released checkpoint: only its thinker is loaded
    "qwen3_omni_moe_thinker": Qwen3OmniMoeBackbone,
    "voxtral": VoxtralBackbone,
    "whisper": WhisperBackbone,
}


def load_backbone(model: str | Path, options: LoadOptions = LoadOptions()) -> Backbone:
    """Open the adapter that fits the model folder's config.json `model_type`."""
    import json
    import os

    # Weights come from disk only; this also keeps transformers from asking the hub for extras.
    os.environ.setdefault("HF_HUB_OFFLINE", "1")

    model_dir = resolve_model_dir(model)
    if options.device.startswith("cuda") and not torch.cuda.is_available():
        raise ModelLoadError(f"device {options.device!r} requested but CUDA is not available; use --device cpu")
    if options.dtype is not None and options.dtype not in DTYPES:
        raise ModelLoadError(f"dtype {options.dtype!r} is not supported; allowed: {', '.join(DTYPES)}")
    if options.dtype == "bf16" and options.device == "cpu" and cpu_bf16_instructions() == []:
        logging.getLogger("calm_core.backbones").warning(
            "bf16 on a CPU without AVX512-BF16 or AMX is emulated and slower than fp32 (docs/performance.md §5)"
        )
    try:
        model_type = json.loads((model_dir / "config.json").read_text())["model_type"]
    except (json.JSONDecodeError, KeyError) as e:
        raise ModelLoadError(f"{model_dir / 'config.json'}: unreadable or has no model_type ({e})") from e
    adapter = ADAPTERS.get(model_type)
    if adapter is None:
        raise ModelLoadError(
            f"{model_dir}: model_type {model_type!r} has no calm adapter; supported: {', '.join(sorted(ADAPTERS))}"
        )
    return adapter(model_dir, options)
