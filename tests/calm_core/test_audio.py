"""Decoding, mixing and resampling to 16 kHz mono, and the errors for what cannot be used."""

from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from calm_core.audio.decode import load_audio, prepare_clip, to_float_mono
from calm_core.errors import AudioError


def test_integer_pcm_is_scaled_to_unit_range() -> None:
    assert to_float_mono(np.array([-32768, 0, 16384], dtype=np.int16)).tolist() == [-1.0, 0.0, 0.5]
    assert to_float_mono(np.array([0, 128, 255], dtype=np.uint8)).tolist() == pytest.approx([-1.0, 0.0, 127 / 128])


def test_channels_are_averaged() -> None:
    stereo = np.array([[1.0, 0.0], [0.5, -0.5]], dtype=np.float32)
    assert to_float_mono(stereo).tolist() == [0.5, 0.0]


@pytest.mark.parametrize("rate", [8000, 22050, 44100, 48000])
def test_resampled_length_and_pitch(rate: int) -> None:
    t = np.arange(rate) / rate
    clip = prepare_clip(np.sin(2 * np.pi * 440 * t).astype(np.float32), rate)
    assert abs(clip.size - 16000) <= 2
    peak = np.argmax(np.abs(np.fft.rfft(clip))) * 16000 / clip.size
    assert abs(peak - 440) < 2


@pytest.mark.parametrize(
    "samples, rate, message",
    [
        (np.array([0.0, np.nan] * 1000, dtype=np.float32), 16000, "NaN or infinite"),
        (np.array([np.inf] * 2000, dtype=np.float32), 16000, "NaN or infinite"),
        (np.zeros(0, dtype=np.float32), 16000, "no samples"),
        (np.zeros(100, dtype=np.float32), 16000, "too short"),
        (np.zeros(2000, dtype=np.float32), 0, "sample rate must be positive"),
        (np.zeros((10, 2, 2), dtype=np.float32), 16000, "expected shape"),
        (np.array(["a"] * 2000), 16000, "unsupported sample type"),
    ],
)
def test_bad_clips_get_a_clear_error(samples: np.ndarray, rate: int, message: str) -> None:
    with pytest.raises(AudioError, match=message):
        prepare_clip(samples, rate, source="clip.wav")


def test_long_clips_are_cut_to_30_seconds() -> None:
    assert prepare_clip(np.zeros(16000 * 31, dtype=np.float32), 16000).size == 16000 * 30


@pytest.mark.parametrize("subtype", ["PCM_U8", "PCM_16", "PCM_24", "FLOAT"])
def test_wav_subtypes_and_telephone_rate_decode(tmp_path: Path, subtype: str) -> None:
    t = np.arange(8000) / 8000
    data = np.stack([0.5 * np.sin(2 * np.pi * 300 * t)] * 6, axis=1)  # 6 channels at 8 kHz
    path = tmp_path / f"x_{subtype}.wav"
    sf.write(path, data, 8000, subtype=subtype)
    clip = load_audio(path)
    assert abs(clip.size - 16000) <= 2 and 0.4 < np.abs(clip).max() < 0.6


def test_ffmpeg_formats_decode_through_pyav(tmp_path: Path) -> None:
    import av

    path = tmp_path / "tone.mp4"
    with av.open(str(path), "w") as out:
        stream = out.add_stream("aac", rate=22050)
        t = np.arange(22050) / 22050
        frame = av.AudioFrame.from_ndarray(
            (0.3 * np.sin(2 * np.pi * 440 * t)).astype(np.float32)[None], format="flt", layout="mono"
        )
        frame.sample_rate = 22050
        for packet in stream.encode(frame):
            out.mux(packet)
        for packet in stream.encode(None):
            out.mux(packet)
    clip = load_audio(path)
    assert 15000 < clip.size < 17500


@pytest.mark.parametrize(
    "content, message", [(b"", "empty"), (b"RIFF\x00\x00garbage" * 10, "not a readable audio file")]
)
def test_corrupt_files_name_the_file(tmp_path: Path, content: bytes, message: str) -> None:
    path = tmp_path / "bad.wav"
    path.write_bytes(content)
    with pytest.raises(AudioError, match=message) as err:
        load_audio(path)
    assert "bad.wav" in str(err.value)


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(AudioError, match="no such audio file"):
        load_audio(tmp_path / "none.wav")
