"""Audio-language model adapters, one file per model family (base: what they share; registry: which one
opens a model folder)."""

from .base import Backbone, HeadLayout, LoadOptions, resolve_model_dir
from .registry import ADAPTERS, load_backbone

__all__ = ["ADAPTERS", "Backbone", "HeadLayout", "LoadOptions", "load_backbone", "resolve_model_dir"]
