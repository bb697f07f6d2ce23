"""The segmenter: VAD boundaries, pre-roll, hangover, max-length cuts with overlap, fixed windows."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from calm_core.testing import voiced
from calmd.capture.segmenter import Segmenter
from calmd.config import VadSection

SR = 16000
SILENCE = np.zeros(SR, dtype=np.float32)


def run(seg: Segmenter, audio: np.ndarray, chunk: int = 1600):
    out = []
    for i in range(0, audio.size, chunk):
        out += list(seg.feed(audio[i : i + chunk]))
    return out + list(seg.flush())


def test_one_sound_one_segment_with_pre_roll_and_hangover() -> None:
    audio = np.concatenate([SILENCE, voiced(140.0, 1.0), SILENCE])
    (segment,) = run(Segmenter("s", VadSection(aggressiveness=1, pre_roll_ms=300, hangover_ms=300)), audio)
    assert abs(segment.start_s - 0.7) <= 0.06  # 1.0 s minus the 300 ms pre-roll
    assert 2.0 <= segment.end_s <= 2.0 + 0.3 + 0.3
    assert segment.samples.size == round((segment.end_s - segment.start_s) * SR)
    # the samples are the stream's own samples at those times
    start = round(segment.start_s * SR)
    assert np.array_equal(segment.samples, audio[start : start + segment.samples.size])


def test_silence_gives_nothing_and_short_blips_are_counted() -> None:
    seg = Segmenter("s", VadSection(min_segment_s=1.0, hangover_ms=90, pre_roll_ms=0))
    assert run(seg, np.concatenate([SILENCE, voiced(140.0, 0.3), SILENCE])) == []
    assert seg.too_short == 1


def test_long_sound_is_cut_at_max_length_with_overlap() -> None:
    audio = np.concatenate([voiced(140.0, 5.0), SILENCE])
    segments = run(Segmenter("s", VadSection(max_segment_s=2.0, overlap_s=0.5, pre_roll_ms=0)), audio)
    assert len(segments) >= 3
    for a, b in zip(segments, segments[1:3]):
        assert abs(a.samples.size / SR - 2.0) < 0.031
        assert abs(b.start_s - (a.end_s - 0.5)) < 1e-9


def test_energy_gate_silences_quiet_sound() -> None:
    quiet = voiced(140.0, 1.0) * 0.001  # about -70 dBFS
    gated = Segmenter("s", VadSection(energy_gate_dbfs=-40, aggressiveness=0))
    assert run(gated, np.concatenate([SILENCE, quiet, SILENCE])) == []


def test_fixed_windows_without_vad() -> None:
    audio = np.random.default_rng(0).standard_normal(5 * SR).astype(np.float32) * 0.1
    segments = run(Segmenter("s", VadSection(mode="none", window_s=2.0, hop_s=1.0, min_segment_s=0.5)), audio)
    assert [s.start_s for s in segments][:4] == [0.0, 1.0, 2.0, 3.0]
    assert all(s.samples.size == 2 * SR for s in segments[:4])
    assert np.array_equal(segments[1].samples, audio[SR : 3 * SR])


@settings(max_examples=25, deadline=None)
@given(chunk=st.integers(min_value=1, max_value=8000), frame_ms=st.sampled_from([10, 20, 30]))
def test_chunking_never_changes_the_segments(chunk: int, frame_ms: int) -> None:
    audio = np.concatenate([SILENCE[:8000], voiced(200.0, 0.8), SILENCE, voiced(300.0, 0.6), SILENCE[:4000]])
    cfg = VadSection(frame_ms=frame_ms, min_segment_s=0.2)
    reference = run(Segmenter("s", cfg), audio, chunk=audio.size)
    got = run(Segmenter("s", cfg), audio, chunk=chunk)
    assert [(s.start_s, s.samples.size) for s in got] == [(s.start_s, s.samples.size) for s in reference]
    assert all(0 <= s.start_s and s.end_s <= audio.size / SR + 1e-9 for s in got)


def test_energy_mode_finds_tones_webrtcvad_is_not_made_for() -> None:
    from calm_core.testing import tone

    rng = np.random.default_rng(0)
    floor = lambda s: (rng.standard_normal(int(s * SR)) * 10 ** (-65 / 20)).astype(np.float32)  # noqa: E731
    beep = lambda s: (tone(2000.0, s, noise=0.0) * 0.05).astype(np.float32)  # about -29 dBFS  # noqa: E731
    silence = np.zeros(SR, np.float32)  # digital silence first: padding, not a floor to measure against
    audio = np.concatenate([silence, floor(1.0), beep(0.8), floor(1.5), beep(1.2), floor(1.0)])
    vad = VadSection(mode="energy", frame_ms=20, pre_roll_ms=100, hangover_ms=200)
    segments = run(Segmenter("s", vad), audio)
    assert [round(s.start_s, 2) for s in segments] == [1.9, 4.2]  # onsets 2.0 and 4.3 s, minus the pre-roll
    for segment, (onset, length) in zip(segments, [(2.0, 0.8), (4.3, 1.2)]):
        assert onset + length <= segment.end_s <= onset + length + 0.2 + 0.03  # hangover + the frame that ends it


def test_energy_mode_floor_follows_a_louder_background_slowly() -> None:
    from calmd.capture.segmenter import NoiseFloor

    floor = NoiseFloor(above_db=12.0, rise_db_per_frame=0.06)  # 3 dB/s at 20 ms frames
    assert floor.active(-40.0)  # 20 dB over the starting floor of -60 dBFS
    steps = [floor.active(-40.0) for _ in range(200)]  # 4 s of a steady -40 dBFS background
    assert steps[100] and not steps[-1]  # still active after 2 s (floor -48), not after 4 s (floor -40)
    assert floor.floor == pytest.approx(-60.0 + 201 * 0.06)
    assert not floor.active(-55.0) and floor.floor == -55.0  # falls at once
    assert not floor.active(-200.0) and floor.floor == -55.0  # digital silence: neither active nor a floor
