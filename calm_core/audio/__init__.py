"""Audio in and every step a clip takes before the model, the same at fit time, in `calm classify` and in
calmd: decoding to 16 kHz mono (decode), labelled clip sets (clipsets), the transmission channel
(channels, telephone), augmentation copies (effects, augment), conditioning, and Preprocessing, which
chains them and names the cache key."""

from .channels import CHANNELS, apply_channel
from .decode import SAMPLE_RATE, decode_file, load_audio, prepare_clip, to_float_mono
from .preprocessing import Preprocessing

__all__ = [
    "CHANNELS",
    "SAMPLE_RATE",
    "Preprocessing",
    "apply_channel",
    "decode_file",
    "load_audio",
    "prepare_clip",
    "to_float_mono",
]
