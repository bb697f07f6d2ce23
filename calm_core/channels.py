"""Moved to calm_core.preprocess (channels and preprocessing); these names stay importable from here."""

from .preprocess.channels import CHANNELS, apply_channel
from .preprocess.preprocessing import Preprocessing

__all__ = ["CHANNELS", "Preprocessing", "apply_channel"]
