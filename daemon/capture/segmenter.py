"""Cut a 16 kHz mono stream into segments: voice activity (webrtcvad) or sound activity (energy above
the tracked noise floor), with pre-roll and hangover; or fixed windows."""

from __future__ import annotations

from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..config import VadSection

SAMPLE_RATE = 16_000


@dataclass(frozen=True)
class Segment:
    stream: str
    start_s: float  # stream time
    samples: np.ndarray  # float32, 16 kHz mono

    @property
    def end_s(self) -> float:
        return self.start_s + self.samples.size / SAMPLE_RATE


def frame_dbfs(frame: np.ndarray) -> float:
    rms = float(np.sqrt(np.mean(np.square(frame, dtype=np.float64)))) if frame.size else 0.0
    return 20.0 * np.log10(max(rms, 1e-10))


class NoiseFloor:
    """Sound activity for sounds a voice detector is not made for: a frame is active when its level is
    above_db over the noise floor. The floor follows quieter frames at once and rises by at most
    rise_db_per_frame (so a long sound does not become the floor within a few seconds). Digital silence
    (below SILENCE_DBFS: padding, a muted input) is never active and is not a noise floor to follow."""

    SILENCE_DBFS = -90.0

    def __init__(self, above_db: float, rise_db_per_frame: float, start_dbfs: float = -60.0):
        self.above_db = above_db
        self.rise = rise_db_per_frame
        self.floor = start_dbfs

    def active(self, level_dbfs: float) -> bool:
        if level_dbfs < self.SILENCE_DBFS:
            return False
        self.floor = min(level_dbfs, self.floor + self.rise)
        return level_dbfs >= self.floor + self.above_db


class Segmenter:
    """Feed audio in any chunk sizes; get whole segments back in order.

    VAD mode: a segment opens at the first voiced frame (with pre_roll_ms of audio before it),
    stays open while frames are voiced or within hangover_ms of the last voiced one, and is
    cut at max_segment_s (the next one starts overlap_s earlier). Segments shorter than
    min_segment_s are dropped and counted. Mode "none": fixed windows of window_s every hop_s.
    """

    def __init__(self, stream: str, vad: VadSection):
        self.stream = stream
        self.cfg = vad
        self.frame = SAMPLE_RATE * vad.frame_ms // 1000
        self._pending = np.zeros(0, dtype=np.float32)
        self._t = 0  # samples consumed into frames
        self._pre: deque[np.ndarray] = deque(maxlen=max(0, vad.pre_roll_ms // vad.frame_ms))
        self._open: list[np.ndarray] = []
        self._open_start = 0
        self._silence = 0  # frames since the last voiced one
        self.too_short = 0
        self._vad: Any = None
        if vad.mode == "webrtc":
            import webrtcvad

            self._vad = webrtcvad.Vad(vad.aggressiveness)
        elif vad.mode == "energy":
            self._vad = NoiseFloor(vad.energy_above_floor_db, vad.floor_rise_db_per_s * vad.frame_ms / 1000)
        self._window = int(vad.window_s * SAMPLE_RATE)
        self._hop = int(vad.hop_s * SAMPLE_RATE)
        self._buf = np.zeros(0, dtype=np.float32)  # mode none
        self._buf_start = 0

    def feed(self, samples: np.ndarray) -> Iterator[Segment]:
        if self._vad is None:
            yield from self._windows(samples)
            return
        data = np.concatenate([self._pending, samples.astype(np.float32, copy=False)])
        n = data.size // self.frame * self.frame
        self._pending = data[n:]
        for i in range(0, n, self.frame):
            yield from self._step(data[i : i + self.frame])

    def flush(self) -> Iterator[Segment]:
        """End of stream: close whatever is open."""
        if self._vad is None:
            if self._buf.size >= int(self.cfg.min_segment_s * SAMPLE_RATE):
                yield Segment(self.stream, self._buf_start / SAMPLE_RATE, self._buf.copy())
            self._buf = np.zeros(0, dtype=np.float32)
            return
        if self._open:
            yield from self._close()

    def _voiced(self, frame: np.ndarray) -> bool:
        gate = self.cfg.energy_gate_dbfs
        if gate is not None and frame_dbfs(frame) < gate:
            return False
        assert self._vad is not None
        if isinstance(self._vad, NoiseFloor):
            return self._vad.active(frame_dbfs(frame))
        pcm = (np.clip(frame, -1.0, 1.0) * 32767).astype("<i2").tobytes()
        return bool(self._vad.is_speech(pcm, SAMPLE_RATE))

    def _step(self, frame: np.ndarray) -> Iterator[Segment]:
        start = self._t
        self._t += frame.size
        voiced = self._voiced(frame)
        if not self._open:
            if voiced:
                self._open = list(self._pre) + [frame]
                self._open_start = start - sum(f.size for f in self._pre)
                self._pre.clear()
                self._silence = 0
            else:
                self._pre.append(frame)
            return
        self._open.append(frame)
        self._silence = 0 if voiced else self._silence + 1
        if self._silence * self.cfg.frame_ms > self.cfg.hangover_ms:
            # Trim trailing silence beyond the hangover.
            yield from self._close()
            return
        if sum(f.size for f in self._open) >= int(self.cfg.max_segment_s * SAMPLE_RATE):
            yield from self._cut()

    def _close(self) -> Iterator[Segment]:
        samples = np.concatenate(self._open)
        self._open = []
        if samples.size < int(self.cfg.min_segment_s * SAMPLE_RATE):
            self.too_short += 1
            return
        yield Segment(self.stream, self._open_start / SAMPLE_RATE, samples)

    def _cut(self) -> Iterator[Segment]:
        samples = np.concatenate(self._open)
        yield Segment(self.stream, self._open_start / SAMPLE_RATE, samples)
        keep = int(self.cfg.overlap_s * SAMPLE_RATE)
        self._open = [samples[samples.size - keep :]] if keep else []
        self._open_start += samples.size - keep
        if not self._open:
            self._silence = 0
            # Sound goes on: the next frame opens a new segment if it is voiced.

    def _windows(self, samples: np.ndarray) -> Iterator[Segment]:
        self._buf = np.concatenate([self._buf, samples.astype(np.float32, copy=False)])
        while self._buf.size >= self._window:
            window = self._buf[: self._window].copy()
            yield Segment(self.stream, self._buf_start / SAMPLE_RATE, window)
            self._buf = self._buf[self._hop :]
            self._buf_start += self._hop
