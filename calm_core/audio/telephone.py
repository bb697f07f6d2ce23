"""A G.711 telephone line in numpy: 8 kHz, 300-3400 Hz, mu-law companding.

mu-law follows ITU-T G.711 as Sun's reference g711.c implements it (and Python's deprecated
audioop did): 16-bit linear PCM is cut to 14 bits, biased by 33 and coded as a sign bit, a
3-bit segment (the power of two) and 4 mantissa bits, all inverted.
"""

from __future__ import annotations

import numpy as np
import soxr

LINE_RATE = 8_000
BAND_HZ = (300.0, 3400.0)
_SEGMENT_ENDS = np.array([0x3F, 0x7F, 0xFF, 0x1FF, 0x3FF, 0x7FF, 0xFFF, 0x1FFF])  # on the biased 14-bit magnitude
_CLIP = 8159  # the largest 14-bit magnitude before the bias of 33
_BIAS = 0x84  # 33 << 2: the bias on the 16-bit scale


def _decode_table() -> np.ndarray:
    u = ~np.arange(256) & 0xFF
    magnitude = (((u & 0x0F) << 3) + _BIAS) << ((u & 0x70) >> 4)
    return np.where(u & 0x80, _BIAS - magnitude, magnitude - _BIAS).astype(np.int16)


MULAW_TABLE = _decode_table()  # (256,) code -> 16-bit linear


def mulaw_encode(pcm: np.ndarray) -> np.ndarray:
    """16-bit linear PCM (int16) to 8-bit mu-law codes (uint8)."""
    x = pcm.astype(np.int32) >> 2
    mask = np.where(x < 0, 0x7F, 0xFF)
    magnitude = np.minimum(np.abs(x), _CLIP) + (_BIAS >> 2)
    segment = np.searchsorted(_SEGMENT_ENDS, magnitude)  # first segment whose end is >= magnitude; 8 = overflow
    mantissa = (magnitude >> np.minimum(segment + 1, 8)) & 0x0F
    code = np.where(segment >= 8, 0x7F, (segment << 4) | mantissa)
    return (code ^ mask).astype(np.uint8)


def mulaw_decode(codes: np.ndarray) -> np.ndarray:
    """8-bit mu-law codes to 16-bit linear PCM (int16)."""
    return MULAW_TABLE[np.asarray(codes, dtype=np.uint8)]


def band_limit(audio: np.ndarray, rate: int, low_hz: float, high_hz: float, edge_hz: float = 100.0) -> np.ndarray:
    """Zero-phase band-pass in the frequency domain with raised-cosine edges edge_hz wide outside the band.

    The clip is zero-padded to twice its length so the filter does not wrap its end onto its start."""
    n = 2 * audio.size
    spectrum = np.fft.rfft(audio, n)
    freqs = np.fft.rfftfreq(n, 1.0 / rate)
    gain = np.ones_like(freqs)
    below = np.clip((low_hz - freqs) / edge_hz, 0.0, 1.0)  # 0 in the band, 1 at edge_hz below it
    above = np.clip((freqs - high_hz) / edge_hz, 0.0, 1.0)
    gain *= 0.5 * (1 + np.cos(np.pi * below)) * 0.5 * (1 + np.cos(np.pi * above))
    return np.fft.irfft(spectrum * gain, n)[: audio.size].astype(np.float32)


def telephone_channel(audio: np.ndarray, rate: int, rng: np.random.Generator, noise_db: float = -55.0) -> np.ndarray:
    """A clip as heard at the far end of a G.711 call, returned at the clip's own rate.

    Line noise at noise_db below the speech peak goes in before the filter and the codec: a real
    line is never digitally silent, and synthetic speech otherwise would be, between words."""
    narrow = soxr.resample(audio, rate, LINE_RATE, quality="HQ")
    narrow = 0.5 * narrow / max(1e-6, float(np.abs(narrow).max()))  # -6 dBFS peak: the codec does not clip
    narrow = narrow + rng.normal(0.0, 0.5 * 10 ** (noise_db / 20), narrow.size)
    narrow = band_limit(narrow, LINE_RATE, *BAND_HZ)
    pcm = np.clip(np.round(narrow * 32767), -32768, 32767).astype(np.int16)
    line = mulaw_decode(mulaw_encode(pcm)).astype(np.float32) / 32768
    return soxr.resample(line, LINE_RATE, rate, quality="HQ").astype(np.float32, copy=False)
