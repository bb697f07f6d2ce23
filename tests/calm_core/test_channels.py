"""The telephone channel before feature extraction: what the features are computed from, and the cache."""

from pathlib import Path

import numpy as np
import pytest
import torch

from calm_core.audio.channels import apply_channel
from calm_core.audio.decode import load_audio
from calm_core.backbones import load_backbone
from calm_core.features import FeatureStore


def test_telephone_channel_band_limits_and_is_repeatable(tone_sets) -> None:
    clip = load_audio(sorted((tone_sets["support"] / "siren").glob("*.wav"))[0])  # 2.6 kHz tone
    line = apply_channel(clip, "telephone")
    assert line.shape == clip.shape and np.array_equal(line, apply_channel(clip, "telephone"))
    noise = np.random.default_rng(1).normal(0, 0.1, 16_000).astype(np.float32)
    spectrum = np.abs(np.fft.rfft(apply_channel(noise, "telephone"))) ** 2
    freqs = np.fft.rfftfreq(16_000, 1 / 16_000)
    assert spectrum[freqs > 3600].sum() < 1e-3 * spectrum.sum()  # nothing left above the band
    assert np.array_equal(apply_channel(clip, "none"), clip)
    with pytest.raises(ValueError, match="allowed: none, telephone"):
        apply_channel(clip, "radio")


def test_feature_store_extracts_from_the_channel_and_caches_apart(tiny_model_dir: Path, tone_sets, tmp_path) -> None:
    backbone = load_backbone(tiny_model_dir)
    paths = sorted((tone_sets["support"] / "beep").glob("*.wav"))[:2]
    plain = FeatureStore(backbone, tmp_path, channel="none").extract(paths, progress=False)
    phone_store = FeatureStore(backbone, tmp_path, channel="telephone")
    phone = phone_store.extract(paths, progress=False)
    assert phone_store.misses == 2  # not served from the plain entries
    want = backbone.head_activations([apply_channel(load_audio(p), "telephone") for p in paths])
    assert torch.allclose(phone, want, atol=1e-5) and not torch.allclose(phone, plain, atol=1e-3)
    again = FeatureStore(backbone, tmp_path, channel="telephone")
    assert torch.equal(again.extract(paths, progress=False), phone) and again.hits == 2
