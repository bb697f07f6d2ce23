"""What every clip goes through before the model, the same way at fit time and when classifying, so
that a sound gives the same features whether it came as a trimmed support file, a padded file or a
stretch of a live stream.

`sound`: trim the clip to the sound (drop the leading and trailing stretches more than TRIM_DB below its
loudest 20 ms frame, keeping a short margin) and bring the sound to a fixed level (the RMS of its loudest
frames at TARGET_DBFS, peaks kept below full scale). Silence padding, a fixed window around a short sound
and the microphone's gain then stop changing the features. `none`: the clip unchanged (classifiers
fitted before conditioning existed).
"""

from __future__ import annotations

from typing import Literal, get_args

import numpy as np

from .audio import SAMPLE_RATE

Conditioning = Literal["none", "sound"]
CONDITIONINGS: tuple[str, ...] = get_args(Conditioning)
DEFAULT_CONDITIONING: Conditioning = "sound"

FRAME = SAMPLE_RATE // 50  # 20 ms
TRIM_DB = 35.0  # frames this far below the loudest frame count as the silence around the sound
MARGIN_S = 0.1  # kept on each side of the sound (onsets and decays below the threshold)
MIN_KEEP_S = 0.5  # a shorter sound keeps this much around its centre, where the clip allows
TARGET_DBFS = -20.0
PEAK_LIMIT = 0.99
SILENT_DBFS = -90.0  # a clip whose loudest frame is below this is left as it is


def frame_levels(clip: np.ndarray) -> np.ndarray:
    """dBFS of each whole 20 ms frame: (n_frames,)."""
    n = clip.size // FRAME
    energy = np.mean(np.square(clip[: n * FRAME].reshape(n, FRAME), dtype=np.float64), axis=1)
    return 10 * np.log10(energy + 1e-20)


def sound_bounds(clip: np.ndarray) -> tuple[int, int]:
    """Sample range [start, end) of the sound in the clip, margins included."""
    levels = frame_levels(clip)
    if levels.size == 0 or levels.max() < SILENT_DBFS:
        return 0, clip.size
    loud = np.flatnonzero(levels >= levels.max() - TRIM_DB)
    margin = int(MARGIN_S * SAMPLE_RATE)
    start = max(0, int(loud[0]) * FRAME - margin)
    end = min(clip.size, (int(loud[-1]) + 1) * FRAME + margin)
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
