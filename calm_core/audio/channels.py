"""Transmission channels applied to clips before feature extraction, so support clips sound like the audio
the classifier will hear (e.g. call audio arrives band-limited and mu-law coded)."""

from __future__ import annotations

import numpy as np

from .decode import SAMPLE_RATE

CHANNELS = ("none", "telephone")


def apply_channel(audio: np.ndarray, channel: str) -> np.ndarray:
    """`telephone`: 8 kHz, 300-3400 Hz, G.711 mu-law and faint line noise (fixed seed: the same clip always
    gives the same features), back at 16 kHz. `none`: the clip unchanged."""
    if channel == "none":
        return audio
    if channel == "telephone":
        from .telephone import telephone_channel

        line = telephone_channel(audio, SAMPLE_RATE, np.random.default_rng(0))
        # Resampling there and back can move the length by a sample: keep the clip's own.
        return np.pad(line[: audio.size], (0, max(0, audio.size - line.size)))
    raise ValueError(f"channel {channel!r} is not known; allowed: {', '.join(CHANNELS)}")
