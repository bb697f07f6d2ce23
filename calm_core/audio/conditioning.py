"""What every clip goes through before the model, the same way at fit time and when classifying, so
that a sound gives the same features whether it came as a trimmed support file, a padded file or a
stretch of a live stream.

`sound`: trim the clip to the sound (drop the leading and trailing 20 ms frames more than TRIM_DB below
its loudest frame or within FLOOR_CLEARANCE_DB of its noise floor, then place the edges to the sample)
and bring the sound to a fixed level (the RMS of its loudest frames at TARGET_DBFS, peaks kept below
full scale). Silence padding, a fixed window around a short sound
and the microphone's gain then stop changing the features. `none`: the clip unchanged (classifiers
fitted before conditioning existed).
"""

from __future__ import annotations

from typing import Literal, get_args

import numpy as np

from .decode import SAMPLE_RATE

Conditioning = Literal["none", "sound"]
CONDITIONINGS: tuple[str, ...] = get_args(Conditioning)
DEFAULT_CONDITIONING: Conditioning = "sound"
# Bumped whenever `sound` changes what it returns: cached features of conditioned clips carry it.
VERSION = 2

FRAME = SAMPLE_RATE // 50  # 20 ms
TRIM_DB = 40.0  # frames this far below the loudest frame count as the silence around the sound
EDGE_WINDOW = SAMPLE_RATE // 500  # 2 ms
EDGE_DB = 20.0  # the sound's first and last samples: those reaching this far below its loudest frame
FLOOR_CLEARANCE_DB = 10.0  # and this far above the clip's quietest tenth of frames
MARGIN_S = 0.0  # kept on each side: none, so that the same sound padded differently gives the same clip
MIN_KEEP_S = 0.5  # a shorter sound keeps this much around its centre, where the clip allows
TARGET_DBFS = -20.0
PEAK_LIMIT = 0.99
SILENT_DBFS = -90.0  # a clip whose loudest frame is below this is left as it is


def frame_levels(clip: np.ndarray) -> np.ndarray:
    """dBFS of each 20 ms frame, the last partial frame included: (ceil(n / FRAME),)."""
    n = -(-clip.size // FRAME)
    padded = np.zeros(n * FRAME, dtype=np.float64)
    padded[: clip.size] = clip
    energy = np.sum(np.square(padded.reshape(n, FRAME)), axis=1)
    counts = np.full(n, FRAME, dtype=np.float64)
    if clip.size % FRAME:
        counts[-1] = clip.size % FRAME
    return 10 * np.log10(energy / counts + 1e-20)


def sound_bounds(clip: np.ndarray) -> tuple[int, int]:
    """Sample range [start, end) of the sound in the clip.

    Frames find the sound; its first and last samples are then found to the sample (the first and last
    whose magnitude reaches the threshold's level), so that where the frame grid falls does not matter."""
    levels = frame_levels(clip)
    if levels.size == 0 or levels.max() < SILENT_DBFS:
        return 0, clip.size
    # Within TRIM_DB of the loudest frame, and clear of the clip's own noise floor (its quietest frames) where
    # it has one: a faint sound over a floor less than TRIM_DB below it still loses the floor around it.
    # Digital silence (padding) is no noise floor: only frames with some signal estimate it.
    heard = levels[levels >= SILENT_DBFS]
    floor = float(np.percentile(heard, 10))
    threshold = max(levels.max() - TRIM_DB, min(floor + FLOOR_CLEARANCE_DB, levels.max() - 20.0))
    loud = np.flatnonzero(levels >= threshold)
    first, last = int(loud[0]) * FRAME, min(clip.size, (int(loud[-1]) + 1) * FRAME)
    # To the sample: the first and last samples reaching a level set by the loudest frame alone (not by
    # the floor, which differs with what surrounds the sound), searched within a frame of each edge.
    # A sample reaching the level, with the 2 ms after it (the onset) or before it (the end) at that level
    # on average: a noise floor's peaks reach it now and then, but not for 2 ms.
    level = 10 ** (max(threshold, levels.max() - EDGE_DB) / 20)
    energy = np.concatenate([[0.0], np.cumsum(np.square(clip, dtype=np.float64))])
    i = np.arange(clip.size)
    ahead = (energy[np.minimum(i + EDGE_WINDOW, clip.size)] - energy[i]) / np.minimum(EDGE_WINDOW, clip.size - i)
    behind = (energy[i + 1] - energy[np.maximum(i + 1 - EDGE_WINDOW, 0)]) / np.minimum(EDGE_WINDOW, i + 1)
    loud_sample = np.abs(clip) >= level
    onset, offset = loud_sample & (ahead >= level**2), loud_sample & (behind >= level**2)
    head = np.flatnonzero(onset[max(0, first - FRAME) : first + FRAME])
    tail = np.flatnonzero(offset[max(0, last - FRAME) : last + FRAME])
    start = max(0, first - FRAME) + int(head[0]) if head.size else first
    end = max(0, last - FRAME) + int(tail[-1]) + 1 if tail.size else last
    margin = int(MARGIN_S * SAMPLE_RATE)
    start, end = max(0, start - margin), min(clip.size, end + margin)
    short = int(MIN_KEEP_S * SAMPLE_RATE) - (end - start)
    if short > 0:  # widen around the sound, shifting the window back inside the clip at either edge
        start = max(0, start - short // 2)
        end = min(clip.size, start + int(MIN_KEEP_S * SAMPLE_RATE))
        start = max(0, end - int(MIN_KEEP_S * SAMPLE_RATE))
    return start, end


def sound_level(clip: np.ndarray) -> float:
    """RMS of the loudest half of the clip's 20 ms frames (the whole clip when shorter than two frames)."""
    n = clip.size // FRAME
    if n < 2:
        return float(np.sqrt(np.mean(np.square(clip, dtype=np.float64)) + 1e-20))
    energy = np.sort(np.mean(np.square(clip[: n * FRAME].reshape(n, FRAME), dtype=np.float64), axis=1))
    return float(np.sqrt(np.mean(energy[n // 2 :]) + 1e-20))


def condition(clip: np.ndarray, mode: str) -> np.ndarray:
    """The clip as the model should hear it under `mode` (see the module docstring)."""
    if mode == "none":
        return clip
    if mode != "sound":
        raise ValueError(f"conditioning {mode!r} is not known; allowed: {', '.join(CONDITIONINGS)}")
    start, end = sound_bounds(clip)
    sound = clip[start:end]
    level = sound_level(sound)
    if 20 * np.log10(level) < SILENT_DBFS:
        return np.ascontiguousarray(sound, dtype=np.float32)
    scale = 10 ** (TARGET_DBFS / 20) / level
    peak = float(np.max(np.abs(sound))) * scale
    if peak > PEAK_LIMIT:
        scale *= PEAK_LIMIT / peak
    return np.ascontiguousarray(sound * scale, dtype=np.float32)
