"""Audio-language model adapters, one file per model family, keyed by config.json `model_type`."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from .audioflamingo3 import AudioFlamingo3Backbone
from .base import Backbone, HeadLayout, LoadOptions, load_backbone, resolve_model_dir
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

__all__ = ["ADAPTERS", "Backbone", "HeadLayout", "LoadOptions", "load_backbone", "resolve_model_dir"]
