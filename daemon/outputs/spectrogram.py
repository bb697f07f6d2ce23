"""The picture of a saved clip: a log-mel spectrogram as a PNG (time left to right, low pitch at the bottom).

numpy for the spectrogram and matplotlib's image writer (no figure, no GUI backend) for the colours and the PNG:
about 20 ms for a 5 s clip on a busy 2-core CPU. The clip recorder draws it on the heartbeat thread, never the model's.
"""

from __future__ import annotations

import io
from functools import lru_cache

import numpy as np

SAMPLE_RATE = 16_000
N_FFT = 512
HOP = 256  # 62.5 columns a second: a 30 s clip is 1875 pixels wide
N_MELS = 96  # the picture's height in pixels
FMIN, FMAX = 40.0, 8_000.0
DYNAMIC_RANGE_DB = 80.0  # quieter than this below the clip's loudest cell is drawn as silence
COLORMAP = "magma"


def _mel(hz: np.ndarray) -> np.ndarray:
    return 2595.0 * np.log10(1.0 + hz / 700.0)


def _hz(mel: np.ndarray) -> np.ndarray:
    return 700.0 * (10.0 ** (mel / 2595.0) - 1.0)


@lru_cache(maxsize=1)
def mel_filterbank() -> np.ndarray:
    """Triangular filters on the mel scale: (N_MELS, N_FFT // 2 + 1)."""
    bins = np.linspace(0.0, SAMPLE_RATE / 2, N_FFT // 2 + 1)
    edges = _hz(np.linspace(_mel(np.array(FMIN)), _mel(np.array(FMAX)), N_MELS + 2))
    lower, centre, upper = edges[:-2, None], edges[1:-1, None], edges[2:, None]
    rising = (bins[None, :] - lower) / (centre - lower)
    falling = (upper - bins[None, :]) / (upper - centre)
    return np.maximum(0.0, np.minimum(rising, falling)).astype(np.float32)


def log_mel(samples: np.ndarray) -> np.ndarray:
    """Power in dB relative to the loudest cell, floored at -DYNAMIC_RANGE_DB: (N_MELS, frames)."""
    x = np.asarray(samples, dtype=np.float32)
    if x.size < N_FFT:
        x = np.pad(x, (0, N_FFT - x.size))
    n_frames = 1 + (x.size - N_FFT) // HOP
    frames = np.lib.stride_tricks.sliding_window_view(x, N_FFT)[::HOP][:n_frames]  # (frames, N_FFT)
    power = np.abs(np.fft.rfft(frames * np.hanning(N_FFT).astype(np.float32), axis=1)) ** 2  # (frames, bins)
    mel = mel_filterbank() @ power.T  # (N_MELS, frames)
    db = 10.0 * np.log10(np.maximum(mel, 1e-12))
    return np.maximum(db - db.max(), -DYNAMIC_RANGE_DB)


def spectrogram_png(samples: np.ndarray) -> bytes:
    """The PNG of a 16 kHz mono clip's log-mel spectrogram."""
    from matplotlib import image  # Agg-only writer: no figure, no GUI backend, safe off the main thread

    out = io.BytesIO()
    db = log_mel(samples)[::-1]  # low frequencies at the bottom
    image.imsave(out, db, cmap=COLORMAP, vmin=-DYNAMIC_RANGE_DB, vmax=0.0, format="png")
    return out.getvalue()
