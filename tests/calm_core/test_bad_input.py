"""Bad input never crashes and never passes silently: property tests for the decoder and a fuzz run of
the classifier loader."""

import io
import struct
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from calm_core.audio.decode import MAX_SECONDS, load_audio
from calm_core.errors import AudioError, ClassifierFileError
from calm_core.method.classifier import CalmClassifier

from .test_classifier import fit


def wav_bytes(samples: np.ndarray, rate: int = 16000, subtype: str = "PCM_16") -> bytes:
    buf = io.BytesIO()
    sf.write(buf, samples, rate, subtype=subtype, format="WAV")
    return buf.getvalue()


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.binary(min_size=0, max_size=4096))
def test_arbitrary_bytes_decode_or_fail_with_audio_error(tmp_path: Path, data: bytes) -> None:
    path = tmp_path / "x.wav"
    path.write_bytes(data)
    try:
        clip = load_audio(path)
    except AudioError as e:
        assert "x.wav" in str(e)
        return
    assert clip.dtype == np.float32 and np.isfinite(clip).all()


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(cut=st.integers(min_value=1, max_value=3000), flip=st.integers(min_value=0, max_value=43))
def test_truncated_and_mangled_wav_headers(tmp_path: Path, cut: int, flip: int) -> None:
    good = wav_bytes(np.sin(np.arange(16000) / 10).astype(np.float32) * 0.5)
    mangled = bytearray(good[: len(good) - cut])
    mangled[flip] ^= 0xFF
    path = tmp_path / "m.wav"
    path.write_bytes(bytes(mangled))
    try:
        clip = load_audio(path)
    except AudioError:
        return
    assert np.isfinite(clip).all() and clip.size >= 1600


def test_wrong_data_size_in_header_is_tolerated(tmp_path: Path) -> None:
    good = bytearray(wav_bytes(np.zeros(16000, dtype=np.float32) + 0.1))
    struct.pack_into("<I", good, 40, 10**9)  # data chunk claims 1 GB
    path = tmp_path / "odd.wav"
    path.write_bytes(bytes(good))
    assert load_audio(path).size == 16000


def test_nan_in_a_float_wav_is_refused(tmp_path: Path) -> None:
    samples = np.zeros(16000, dtype=np.float32)
    samples[100] = np.nan
    path = tmp_path / "nan.wav"
    sf.write(path, samples, 16000, subtype="FLOAT")
    with pytest.raises(AudioError, match="NaN"):
        load_audio(path)


def test_dc_offset_and_clipping_classify_normally(backbone) -> None:
    t = np.arange(16000) / 16000
    dc = (0.8 + 0.05 * np.sin(2 * np.pi * 300 * t)).astype(np.float32)
    clipped = np.clip(3.0 * np.sin(2 * np.pi * 300 * t), -1, 1).astype(np.float32)
    feats = backbone.head_activations([dc, clipped])
    assert torch.isfinite(feats).all()


def test_huge_file_decodes_only_the_window(tmp_path: Path) -> None:
    import resource

    path = tmp_path / "long.flac"
    with sf.SoundFile(path, "w", 16000, 1, subtype="PCM_16") as f:  # two hours of noise
        block = (np.random.default_rng(0).standard_normal(16000 * 60) * 0.1).astype(np.float32)
        for _ in range(120):
            f.write(block)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    clip = load_audio(path)
    grown_mb = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024
    assert clip.size == int(MAX_SECONDS * 16000)
    assert grown_mb < 200  # the whole file would be 440 MB as float32


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.data())
def test_fuzzed_classifier_files_load_or_are_refused(tmp_path: Path, data: st.DataObject) -> None:
    original = fit().save(tmp_path / "c.safetensors").read_bytes()
    blob = bytearray(original)
    for _ in range(data.draw(st.integers(1, 8))):
        pos = data.draw(st.integers(0, len(blob) - 1))
        blob[pos] = data.draw(st.integers(0, 255))
    if data.draw(st.booleans()):
        blob = blob[: data.draw(st.integers(0, len(blob)))]
    path = tmp_path / "fuzzed.safetensors"
    path.write_bytes(bytes(blob))
    try:
        clf = CalmClassifier.load(path)
    except ClassifierFileError:
        return
    # whatever loads passed every check: usable, finite, weights normalised
    assert torch.isfinite(clf.prototypes).all() and torch.allclose(
        clf.weights.sum(0), torch.ones(len(clf.labels)), atol=1e-4
    )
