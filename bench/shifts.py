"""Channel shifts between the clips a classifier was fitted on and the audio it hears: rooms, distance,
background noise, codecs and cheap microphones. Pure functions on 16 kHz mono float32 clips with an
explicit random generator, used two ways that must not share parameters: the robustness bench shifts
test clips (recorded noise, room impulse responses with early reflections), and fit-time augmentation
(calm_core.audio.augment) shifts support clips with other generators (coloured noise, plain decaying tails),
so that a gain measured on the bench is not the augmentation recognising its own copy.

The effects both share live in calm_core.audio.effects and are re-exported here; the bench's own
generators (rooms with early reflections, codecs, a camera microphone, calmd's windows) are below. Nothing
on the fit path imports this module.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from scipy.signal import butter, sosfilt

from calm_core.audio.channels import apply_channel
from calm_core.audio.decode import SAMPLE_RATE
from calm_core.audio.effects import coloured_noise, convolve, gain, mix_noise, reverberate, rms, tail_rir
from calm_core.audio.telephone import band_limit


def room_rir(rng: np.random.Generator, rt60_s: float, drr_db: float, reflections: int = 12) -> np.ndarray:
    """A room impulse response: the direct path, sparse early reflections in the first 50 ms, then a
    diffuse exponentially decaying tail (60 dB in rt60_s), scaled to a direct-to-reverberant ratio."""
    n = int(rt60_s * SAMPLE_RATE)
    t = np.arange(n) / SAMPLE_RATE
    decay = np.exp(-6.9 * t / rt60_s)
    reverberant = rng.standard_normal(n) * decay
    early = rng.integers(int(0.002 * SAMPLE_RATE), int(0.05 * SAMPLE_RATE), reflections)
    reverberant[early] += rng.uniform(-0.8, 0.8, reflections) * np.sqrt(n / 50)
    reverberant[0] = 0.0
    reverberant *= 10 ** (-drr_db / 20) / np.sqrt(np.sum(reverberant**2))
    reverberant[0] = 1.0  # the direct path
    return reverberant.astype(np.float32)


def camera_mic(x: np.ndarray) -> np.ndarray:
    """A cheap camera microphone: 4th-order band-pass 250 Hz - 5 kHz and soft compression of peaks."""
    sos = butter(4, [250.0, 5000.0], btype="bandpass", fs=SAMPLE_RATE, output="sos")
    y = sosfilt(sos, x)
    level = max(float(np.max(np.abs(y))), 1e-6)
    return (np.tanh(2.0 * y / level) * level / np.tanh(2.0)).astype(np.float32)


def g711(x: np.ndarray) -> np.ndarray:
    """A G.711 mu-law telephone line (8 kHz, 300-3400 Hz), back at 16 kHz, as long as x: the `telephone`
    channel calm fit applies to support clips."""
    return apply_channel(x, "telephone").astype(np.float32)


# Samples an encoder prepends that its decoder here does not drop (AAC's priming frame; Opus's pre-skip
# is dropped by the decoder).
PRIMING = {"aac": 1024}


def codec(x: np.ndarray, name: str, bitrate: int) -> np.ndarray:
    """Encode and decode with FFmpeg's encoder `name` (libopus, aac) at bitrate, through PyAV; as long as x."""
    import av
    import soxr

    rate = 48_000 if name == "libopus" else SAMPLE_RATE
    pcm = soxr.resample(x, SAMPLE_RATE, rate).astype(np.float32) if rate != SAMPLE_RATE else x
    encoder: Any = av.CodecContext.create(name, "w")  # an audio codec context (the stubs type the base class)
    encoder.sample_rate, encoder.layout, encoder.format, encoder.bit_rate = rate, "mono", "flt", bitrate
    if name == "aac":
        encoder.format = "fltp"
    encoder.open()
    frame_size = encoder.frame_size or 1024
    packets = []
    padded = np.pad(pcm, (0, frame_size - pcm.size % frame_size))
    for start in range(0, padded.size, frame_size):
        chunk = padded[None, start : start + frame_size]
        frame = av.AudioFrame.from_ndarray(chunk, format=encoder.format.name, layout="mono")
        frame.sample_rate, frame.pts = rate, start
        packets += encoder.encode(frame)
    packets += encoder.encode(None)
    decoder: Any = av.CodecContext.create(name.replace("lib", ""), "r")
    decoder.sample_rate, decoder.layout = rate, "mono"
    if name == "libopus":
        decoder.extradata = encoder.extradata
    out = [f.to_ndarray().reshape(-1) for p in packets for f in decoder.decode(p)]
    y = np.concatenate(out).astype(np.float32) if out else np.zeros(0, np.float32)
    y = soxr.resample(y, rate, SAMPLE_RATE).astype(np.float32) if rate != SAMPLE_RATE else y
    y = y[PRIMING.get(name, 0) :]
    return np.pad(y[: x.size], (0, max(0, x.size - y.size))).astype(np.float32)


def in_window(x: np.ndarray, window_s: float, rng: np.random.Generator, floor_db: float = -60.0) -> np.ndarray:
    """x at a random offset inside a fixed window of faint room noise: what calmd's fixed windows cut."""
    n = max(int(window_s * SAMPLE_RATE), x.size)
    out = coloured_noise(rng, n, 1.0) * 10 ** (floor_db / 20)
    start = int(rng.integers(0, n - x.size + 1))
    out[start : start + x.size] += x
    return out.astype(np.float32)


__all__ = [
    "band_limit",
    "camera_mic",
    "codec",
    "coloured_noise",
    "convolve",
    "g711",
    "gain",
    "in_window",
    "mix_noise",
    "reverberate",
    "rms",
    "room_rir",
    "tail_rir",
]
