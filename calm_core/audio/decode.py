"""Audio in: decode files, mix to mono, resample to 16 kHz, and refuse what cannot be classified."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import soundfile as sf
import soxr

from ..errors import AudioError

SAMPLE_RATE = 16_000
MIN_SECONDS = 0.1
MAX_SECONDS = 30.0

log = logging.getLogger(__name__)


def to_float_mono(samples: np.ndarray, *, source: str = "audio") -> np.ndarray:
    """Integer or float samples, (n,) or (n, channels), to float32 mono in [-1, 1]."""
    a = np.asarray(samples)
    if a.ndim == 2:
        if a.shape[1] == 0:
            raise AudioError(f"{source}: has 0 channels")
    elif a.ndim != 1:
        raise AudioError(f"{source}: expected shape (samples,) or (samples, channels), got {a.shape}")
    if a.dtype.kind == "i":
        a = a.astype(np.float32) / float(-np.iinfo(a.dtype).min)
    elif a.dtype.kind == "u":
        info = np.iinfo(a.dtype)
        half = (info.max + 1) / 2.0
        a = (a.astype(np.float32) - half) / half
    elif a.dtype.kind == "f":
        a = a.astype(np.float32, copy=False)
    else:
        raise AudioError(f"{source}: unsupported sample type {a.dtype}; allowed: integer or float PCM")
    if not np.isfinite(a).all():
        bad = int((~np.isfinite(a)).sum())
        raise AudioError(f"{source}: {bad} samples are NaN or infinite")
    if a.ndim == 2:
        a = a.mean(axis=1, dtype=np.float32)
    return a


def prepare_clip(
    samples: np.ndarray,
    sample_rate: int,
    *,
    source: str = "audio",
    min_seconds: float = MIN_SECONDS,
    max_seconds: float = MAX_SECONDS,
) -> np.ndarray:
    """Validate and convert any PCM clip to 16 kHz mono float32, at most max_seconds long."""
    if sample_rate <= 0:
        raise AudioError(f"{source}: sample rate must be positive, got {sample_rate}")
    mono = to_float_mono(samples, source=source)
    if mono.size == 0:
        raise AudioError(f"{source}: contains no samples")
    if sample_rate != SAMPLE_RATE:
        mono = soxr.resample(mono, sample_rate, SAMPLE_RATE, quality="HQ").astype(np.float32, copy=False)
    seconds = mono.size / SAMPLE_RATE
    if seconds < min_seconds:
        raise AudioError(f"{source}: {seconds:.3f} s is too short; clips must be at least {min_seconds} s")
    limit = int(max_seconds * SAMPLE_RATE)
    if mono.size > limit:
        log.warning(
            "%s: %.1f s is longer than %.0f s; using the first %.0f s", source, seconds, max_seconds, max_seconds
        )
        mono = mono[:limit]
    return np.ascontiguousarray(mono)


def decode_file(path: str | Path, max_seconds: float | None = None) -> tuple[np.ndarray, int]:
    """Decode any file libsndfile or FFmpeg (through PyAV) can read: (samples (n, ch), rate).

    With max_seconds only that much is decoded, so a two-hour recording costs no more than
    the window that is used.
    """
    path = Path(path)
    if not path.is_file():
        raise AudioError(f"{path}: no such audio file")
    if path.stat().st_size == 0:
        raise AudioError(f"{path}: file is empty (0 bytes)")
    try:
        with sf.SoundFile(str(path)) as f:
            frames = -1 if max_seconds is None else int(max_seconds * f.samplerate) + 1
            data = f.read(frames=frames, dtype="float32", always_2d=True)
            return data, int(f.samplerate)
    except sf.LibsndfileError as sf_error:
        import av

        try:
            return _decode_with_av(path, max_seconds)
        except (av.FFmpegError, OSError, ValueError) as av_error:
            raise AudioError(
                f"{path}: not a readable audio file (libsndfile: {sf_error}; FFmpeg: {av_error})"
            ) from av_error


def _decode_with_av(path: Path, max_seconds: float | None = None) -> tuple[np.ndarray, int]:
    import av

    with av.open(str(path)) as container:
        streams = container.streams.audio
        if not streams:
            raise AudioError(f"{path}: has no audio stream")
        stream = streams[0]
        context = stream.codec_context
        rate = int(context.sample_rate or 0) if context is not None else 0
        if rate <= 0:
            raise AudioError(f"{path}: audio stream has no usable codec or sample rate")
        resampler = av.AudioResampler(format="flt", layout="mono", rate=rate)
        chunks, total = [], 0
        limit = None if max_seconds is None else int(max_seconds * resampler.rate) + 1
        for frame in container.decode(stream):
            for out in resampler.resample(frame):
                chunks.append(out.to_ndarray().reshape(-1))
                total += chunks[-1].size
            if limit is not None and total >= limit:
                break
        for out in resampler.resample(None):
            chunks.append(out.to_ndarray().reshape(-1))
        rate = int(resampler.rate)
    if not chunks:
        raise AudioError(f"{path}: audio stream decoded to no samples")
    return np.concatenate(chunks)[:, None], rate


def load_audio(path: str | Path, *, min_seconds: float = MIN_SECONDS, max_seconds: float = MAX_SECONDS) -> np.ndarray:
    """Decode a file (at most max_seconds of it, plus one sample to tell that it was longer) to a
    validated 16 kHz mono float32 clip."""
    data, rate = decode_file(path, max_seconds)
    return prepare_clip(data, rate, source=str(path), min_seconds=min_seconds, max_seconds=max_seconds)
