"""Fit-time channel augmentation: copies of each support clip as other rooms, distances, noises and lines
would deliver it, so that prototypes and head reliability cover the channels the classifier will hear.

A recipe is a fixed list of named shifts; each copy's random parameters are drawn from a generator
seeded by the clip's content and the copy's index, so the same clip always gives the same copies (their
features are cached like any clip's, under the copy's channel name). The generators differ on purpose
from the robustness bench's test shifts (bench/robustness.py): coloured noise instead of recorded
backgrounds, smooth decaying tails instead of rooms with early reflections.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable

import numpy as np

from . import effects
from .channels import apply_channel
from .decode import SAMPLE_RATE
from .telephone import band_limit

Shift = Callable[[np.ndarray, np.random.Generator], np.ndarray]


def _room(x: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    return effects.reverberate(x, effects.tail_rir(rng, rt60_s=rng.uniform(0.3, 1.0), drr_db=rng.uniform(-4.0, 8.0)))


def _noise(x: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    noise = effects.coloured_noise(rng, x.size, exponent=rng.uniform(0.0, 2.0))
    return effects.mix_noise(x, noise, snr_db=rng.uniform(5.0, 20.0), rng=rng)


def _band(x: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    return band_limit(x, SAMPLE_RATE, low_hz=rng.uniform(100.0, 400.0), high_hz=rng.uniform(3400.0, 7000.0))


def _far(x: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    return _noise(_room(effects.gain(x, rng.uniform(-30.0, -10.0)), rng), rng)


def _line(x: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    # A G.711 mu-law telephone line: the `telephone` channel calm fit applies to support clips.
    return apply_channel(x, "telephone").astype(np.float32)


SHIFTS: dict[str, Shift] = {"room": _room, "noise": _noise, "band": _band, "far": _far, "line": _line}
# Recipe name -> the shifts of its copies, one copy each.
RECIPES: dict[str, tuple[str, ...]] = {
    "none": (),
    "channels": ("room", "noise", "band", "far"),
    "channels+line": ("room", "noise", "band", "far", "line"),
}
# Off by default: on the development sets it gains out of domain and costs in domain (docs/robustness.md).
DEFAULT_RECIPE = "none"
SUGGESTED_RECIPE = "channels"


def recipe_channels(recipe: str) -> tuple[str, ...]:
    """The channel names of a recipe's copies (`aug:room:0`, ...), in order; ValueError for an unknown recipe."""
    if recipe not in RECIPES:
        raise ValueError(f"augmentation {recipe!r} is not known; allowed: {', '.join(RECIPES)}")
    return tuple(f"aug:{name}:{i}" for i, name in enumerate(RECIPES[recipe]))


def augment(clip: np.ndarray, channel: str) -> np.ndarray:
    """The copy of clip named by channel (`aug:<shift>:<index>`): deterministic for the clip's content."""
    try:
        _, name, index = channel.split(":")
        shift = SHIFTS[name]
    except (ValueError, KeyError) as e:
        raise ValueError(f"augmentation channel {channel!r} is not aug:<{'|'.join(SHIFTS)}>:<index>") from e
    digest = hashlib.sha256(np.ascontiguousarray(clip, dtype=np.float32).tobytes()).digest()
    rng = np.random.default_rng([int.from_bytes(digest[:8], "little"), int(index)])
    return shift(clip, rng)
