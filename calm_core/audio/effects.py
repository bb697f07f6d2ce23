"""Sound effects on 16 kHz mono float32 clips with an explicit random generator: gain, rooms, noise.

Fit-time augmentation (calm_core.audio.augment) draws its copies with these; the robustness bench's test
shifts (bench/shifts.py) build on them with generators of their own.
"""

from __future__ import annotations

import numpy as np
from scipy.signal import fftconvolve

from .conditioning import sound_level
from .decode import SAMPLE_RATE


def rms(x: np.ndarray) -> float:
    return float(np.sqrt(np.mean(np.square(x, dtype=np.float64)) + 1e-20))


def gain(x: np.ndarray, db: float) -> np.ndarray:
    return (x * 10 ** (db / 20)).astype(np.float32)


def convolve(x: np.ndarray, rir: np.ndarray) -> np.ndarray:
    """x through a room: the wet signal, as long as x (the tail past its end is cut, as a window would)."""
    return fftconvolve(x, rir)[: x.size].astype(np.float32)


def tail_rir(rng: np.random.Generator, rt60_s: float, drr_db: float) -> np.ndarray:
    """The augmentation's room: the direct path and a smooth decaying noise tail, no discrete reflections."""
    n = int(rt60_s * SAMPLE_RATE)
    tail = rng.standard_normal(n) * np.exp(-6.9 * np.arange(n) / (rt60_s * SAMPLE_RATE))
    tail[0] = 0.0
    tail *= 10 ** (-drr_db / 20) / np.sqrt(np.sum(tail**2))
    tail[0] = 1.0
    return tail.astype(np.float32)


def reverberate(x: np.ndarray, rir: np.ndarray) -> np.ndarray:
    """Through the room at the level of its direct path (a far source is quieter: see gain)."""
    return convolve(x, rir)


def mix_noise(x: np.ndarray, noise: np.ndarray, snr_db: float, rng: np.random.Generator) -> np.ndarray:
    """x plus a random stretch of noise (looped if short) at snr_db below the sound's active level."""
    if noise.size < x.size:
        noise = np.tile(noise, x.size // noise.size + 1)
    start = int(rng.integers(0, noise.size - x.size + 1))
    part = noise[start : start + x.size].astype(np.float64)
    part *= sound_level(x) / (rms(part) * 10 ** (snr_db / 20))
    return (x + part).astype(np.float32)


def coloured_noise(rng: np.random.Generator, n: int, exponent: float) -> np.ndarray:
    """Noise with a 1/f**exponent power spectrum (0 white, 1 pink, 2 brown), unit RMS."""
    spectrum = rng.standard_normal(n // 2 + 1) + 1j * rng.standard_normal(n // 2 + 1)
    f = np.fft.rfftfreq(n, 1 / SAMPLE_RATE)
    spectrum *= 1 / np.maximum(f, 20.0) ** (exponent / 2)
    noise = np.fft.irfft(spectrum, n)
    return (noise / rms(noise)).astype(np.float32)
