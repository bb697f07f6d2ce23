"""Channel shifts (bench test conditions) and fit-time augmentation copies, measured against their settings."""

import numpy as np
import pytest

from calm_core.audio.augment import augment, recipe_channels
from calm_core.audio.channels import apply_channel
from calm_core.audio.conditioning import sound_level
from calm_core.audio.preprocessing import Preprocessing
from calm_core.testing import tone, voiced

from . import bench_module

shifts = bench_module("shifts")

SR = 16_000


def test_noise_is_mixed_at_the_requested_snr() -> None:
    rng = np.random.default_rng(0)
    clip, noise = voiced(150.0, 2.0), shifts.coloured_noise(rng, 5 * SR, 1.0)
    for snr in (0.0, 10.0, 20.0):
        mixed = shifts.mix_noise(clip, noise, snr, np.random.default_rng(1))
        added = mixed - clip
        assert 20 * np.log10(sound_level(clip) / shifts.rms(added)) == pytest.approx(snr, abs=1e-3)


def test_room_impulse_response_has_the_requested_direct_to_reverberant_ratio() -> None:
    for drr in (-5.0, 0.0, 6.0):
        for make in (shifts.room_rir, shifts.tail_rir):
            rir = make(np.random.default_rng(2), 0.6, drr)
            assert rir[0] == 1.0 and rir.size == int(0.6 * SR)
            assert 10 * np.log10(1.0 / np.sum(rir[1:] ** 2)) == pytest.approx(drr, abs=1e-3)


def test_coloured_noise_slopes_down_by_its_exponent() -> None:
    noise = shifts.coloured_noise(np.random.default_rng(3), 16 * SR, 2.0)
    power = np.abs(np.fft.rfft(noise)) ** 2
    f = np.fft.rfftfreq(noise.size, 1 / SR)
    low, high = power[(f > 200) & (f < 400)].mean(), power[(f > 3200) & (f < 6400)].mean()
    assert 10 * np.log10(low / high) == pytest.approx(10 * np.log10((3200 * 6400) / (200 * 400)) / 1, abs=2.5)


@pytest.mark.parametrize(("name", "bitrate"), [("libopus", 12_000), ("aac", 24_000)])
def test_codecs_keep_length_alignment_and_most_of_the_signal(name: str, bitrate: int) -> None:
    clip = voiced(180.0, 1.5)
    out = shifts.codec(clip, name, bitrate)
    assert out.size == clip.size
    assert np.corrcoef(clip, out)[0, 1] > 0.9  # aligned: AAC's priming frame and Opus' pre-skip are dropped


def test_the_g711_shift_is_the_telephone_channel() -> None:
    clip = voiced(160.0, 1.0)
    assert np.array_equal(shifts.g711(clip), apply_channel(clip, "telephone"))


def test_camera_microphone_removes_low_and_high_frequencies() -> None:
    for freq, kept in ((60.0, False), (1000.0, True), (7500.0, False)):
        out = shifts.camera_mic(tone(freq, 1.0, noise=0.0))
        ratio = shifts.rms(out[SR // 4 :]) / shifts.rms(tone(freq, 1.0, noise=0.0)[SR // 4 :])
        assert (ratio > 0.5) if kept else (ratio < 0.2), (freq, ratio)


def test_a_window_holds_the_clip_once_over_a_faint_floor() -> None:
    clip = tone(440.0, 1.0, noise=0.0)
    out = shifts.in_window(clip, 4.0, np.random.default_rng(4))
    assert out.size == 4 * SR
    start = int(np.argmax(np.correlate(out, clip, "valid")))
    assert np.abs(out[start : start + clip.size] - clip).max() < 1e-2


def test_augmented_copies_are_fixed_by_the_clip_and_differ_between_copies() -> None:
    clip = voiced(200.0, 1.0)
    channels = recipe_channels("channels")
    assert channels == ("aug:room:0", "aug:noise:1", "aug:band:2", "aug:far:3")
    copies = [augment(clip, c) for c in channels]
    assert all(np.array_equal(c, augment(clip, ch)) for c, ch in zip(copies, channels))  # deterministic
    assert all(c.size == clip.size and not np.allclose(c, clip) for c in copies)
    other = augment(voiced(200.0, 1.0, seed=5), "aug:noise:1") - voiced(200.0, 1.0, seed=5)
    assert not np.allclose(other, copies[1] - clip)  # each clip draws its own parameters


def test_unknown_recipe_and_copy_name_the_choices() -> None:
    with pytest.raises(ValueError, match="augmentation 'reverb' is not known; allowed: none, channels"):
        recipe_channels("reverb")
    with pytest.raises(ValueError, match=r"aug:<room\|noise"):
        augment(tone(440.0, 0.5), "aug:echo:0")


def test_preprocessing_cache_keys_keep_the_old_ones_and_name_everything_else() -> None:
    assert Preprocessing().cache_key == "none" and Preprocessing("telephone").cache_key == "telephone"
    keys = [p.cache_key for p in Preprocessing("none", "sound").copies("channels")]
    assert keys == ["none|cond=sound/2"] + [f"none|{c}|cond=sound/2" for c in recipe_channels("channels")]
    with pytest.raises(ValueError, match="conditioning 'x' is not known"):
        Preprocessing(conditioning="x")
