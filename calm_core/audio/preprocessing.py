"""Preprocessing: what a clip goes through before the model, the same at fit time, in `calm classify` and
in calmd, and the key its features are cached under."""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np

from .augment import augment, recipe_channels
from .channels import CHANNELS, apply_channel
from .conditioning import CONDITIONINGS, condition
from .conditioning import VERSION as CONDITIONING_VERSION


@dataclass(frozen=True)
class Preprocessing:
    """Everything a clip goes through before the model, in order: the transmission channel (support clips
    made to sound like call audio), an augmentation copy (calm_core.audio.augment; None: the clip itself), and
    the conditioning (calm_core.audio.conditioning). Features are cached under cache_key."""

    channel: str = "none"
    conditioning: str = "none"
    copy: str | None = None

    def __post_init__(self) -> None:
        if self.channel not in CHANNELS:
            raise ValueError(f"channel {self.channel!r} is not known; allowed: {', '.join(CHANNELS)}")
        if self.conditioning not in CONDITIONINGS:
            raise ValueError(f"conditioning {self.conditioning!r} is not known; allowed: {', '.join(CONDITIONINGS)}")

    def apply(self, audio: np.ndarray) -> np.ndarray:
        clip = apply_channel(audio, self.channel)
        if self.copy is not None:
            clip = augment(clip, self.copy)
        return condition(clip, self.conditioning)

    @property
    def cache_key(self) -> str:
        """'none' for the clip as it is (the key features had before conditioning existed)."""
        parts = [self.channel]
        if self.copy is not None:
            parts.append(self.copy)
        if self.conditioning != "none":
            parts.append(f"cond={self.conditioning}/{CONDITIONING_VERSION}")
        return "|".join(parts)

    def copies(self, recipe: str) -> list[Preprocessing]:
        """This preprocessing for the clip itself, then for each of an augmentation recipe's copies."""
        return [self] + [replace(self, copy=c) for c in recipe_channels(recipe)]

    @classmethod
    def of(cls, info: dict[str, object]) -> Preprocessing:
        """What a classifier's clips went through, from its info (files from before conditioning: none)."""
        return cls(str(info.get("channel", "none")), str(info.get("conditioning", "none")))
