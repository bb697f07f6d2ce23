"""Conditioning: a sound gives the same model input whether it arrives trimmed, padded or at another gain."""

import numpy as np
import pytest

from calm_core.audio.conditioning import MARGIN_S, TARGET_DBFS, condition, sound_bounds, sound_level
from calm_core.testing import tone

SR = 16_000


def padded(clip: np.ndarray, before_s: float, after_s: float, floor: float = 0.0) -> np.ndarray:
    rng = np.random.default_rng(3)
    pad = lambda s: (rng.standard_normal(int(s * SR)) * floor).astype(np.float32)  # noqa: E731
    return np.concatenate([pad(before_s), clip, pad(after_s)])


def test_bounds_are_the_sound_plus_its_margins() -> None:
    clip = padded(tone(440.0, 1.0, noise=0.0), 0.6, 0.9)  # the tone covers 0.6 s .. 1.6 s
    start, end = sound_bounds(clip)
    assert start == int((0.6 - MARGIN_S) * SR) and end == int((1.6 + MARGIN_S) * SR)


def test_silence_and_a_noise_floor_around_the_sound_are_trimmed_away() -> None:
    sound = tone(700.0, 1.2, noise=0.0)
    inner = padded(sound, MARGIN_S, MARGIN_S)  # the sound with exactly its margins of silence
    for clip in (padded(sound, 1.0, 2.0), padded(sound, 0.4, 0.2, floor=1e-4)):  # -80 dBFS floor
        out, ref = condition(clip, "sound"), condition(inner, "sound")
        assert out.size == ref.size
        assert np.abs(out - ref).max() < 2e-3  # the floor left in the margins, nothing else


def test_the_level_is_fixed_whatever_the_gain() -> None:
    sound = tone(300.0, 1.0, noise=0.0)
    quiet, loud = condition(sound * 0.001, "sound"), condition(sound * 0.9, "sound")
    assert np.allclose(quiet, loud, atol=1e-5)
    assert 20 * np.log10(sound_level(loud)) == pytest.approx(TARGET_DBFS, abs=0.01)


def test_peaks_stay_below_full_scale() -> None:
    clicks = np.zeros(SR, np.float32)
    clicks[::1600] = 1.0  # sparse clicks: their level is low, their peaks high
    out = condition(clicks, "sound")
    assert np.max(np.abs(out)) <= 0.99 + 1e-6


def test_silence_is_left_as_it_is_and_none_changes_nothing() -> None:
    silent = np.zeros(SR, np.float32)
    assert np.array_equal(condition(silent, "sound"), silent)
    clip = tone(440.0, 0.5)
    assert condition(clip, "none") is clip


def test_a_short_sound_keeps_half_a_second() -> None:
    clip = padded(tone(440.0, 0.05, noise=0.0), 1.0, 1.0)
    start, end = sound_bounds(clip)
    assert end - start == SR // 2 and start < SR < end


def test_unknown_conditioning_names_the_choices() -> None:
    with pytest.raises(ValueError, match="'loud' is not known; allowed: none, sound"):
        condition(tone(440.0, 0.5), "loud")


def test_digital_silence_around_a_sound_does_not_move_its_edges() -> None:
    # A decaying tone: where its tail is cut depends on the noise floor; zeros (padding) are not one.
    t = np.arange(SR) / SR
    rng = np.random.default_rng(4)
    clip = (np.sin(2 * np.pi * 440 * t) * np.exp(-4 * t) * 0.5 + rng.standard_normal(SR) * 1e-4).astype(np.float32)
    padded = np.concatenate([clip, np.zeros(3 * SR, np.float32)])
    assert sound_bounds(padded) == sound_bounds(clip)
    assert np.array_equal(condition(padded, "sound"), condition(clip, "sound"))
