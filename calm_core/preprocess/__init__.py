"""What a clip goes through before the model: the transmission channel, an augmentation copy and the
conditioning, the same at fit time and in calmd (channels, effects, augment, preprocessing)."""

from .channels import CHANNELS, apply_channel
from .preprocessing import Preprocessing

__all__ = ["CHANNELS", "Preprocessing", "apply_channel"]
