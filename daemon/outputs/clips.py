"""Detection clips: each stream's recent audio in a ring, and when an event ends, its audio (pre-roll +
event + post-roll) written under [clips] dir with a JSON sidecar and a spectrogram picture, within an age
limit and a disk quota.

Layout: <dir>/<stream id>/<event start, UTC>_<label>.<flac|wav|ogg> and the same name with .json and .png.
A clip is encoded in memory first, so its exact size is known before anything on disk changes: the oldest clips
are deleted to make room, then it is written to a temporary file and renamed, so the quota is never
exceeded and a reader never sees half a clip. Clips past max_age_days go when a clip is written and at
every calm.status (each publish.heartbeat_s), so they go on time also when no event comes. The picture is
drawn at the next calm.status too, on the heartbeat thread (the model worker only hands the samples over and
never waits for it); it is written only if it fits under the quota, and goes with its clip.
"""

from __future__ import annotations

import io
import json
import logging
import os
import re
import shutil
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import soundfile as sf

from calm_core.messages.events import Event, StatusEvent, utc_iso

from ..config import ClipsSection, ConfigError
from .detections import Edge
from .metrics import Metrics
from .sinks import Sink, StreamInfo
from .spectrogram import spectrogram_png

log = logging.getLogger("calmd.clips")

SAMPLE_RATE = 16_000
SIDECAR_SCHEMA = "calm.clip/1"
FORMATS = {"flac": ("FLAC", "PCM_16"), "wav": ("WAV", "PCM_16"), "ogg": ("OGG", "OPUS")}
# How far the end of an event may lag behind the newest audio (queue and model latency) and still find its
# audio in the ring; a stream that runs further ahead (a file read faster than real time) loses the clip.
LAG_S = 30.0
SUFFIXES = (".json", ".png", ".flac", ".wav", ".ogg")  # what the recorder writes and counts
DRAW_QUEUE = 16  # pictures waiting for the next status (each holds its clip's samples); past it, the oldest goes
_UNSAFE = re.compile(r"[^A-Za-z0-9_.-]+")


class AudioRing:
    """A stream's most recent audio, addressed by sample index since the stream's first sample."""

    def __init__(self, capacity: int):
        self.capacity = capacity
        self.chunks: deque[np.ndarray] = deque()
        self.start = 0  # sample index of chunks[0][0]
        self.total = 0  # samples received
        self.lock = threading.Lock()

    def append(self, chunk: np.ndarray) -> None:
        with self.lock:
            self.chunks.append(np.array(chunk, dtype=np.float32, copy=True))
            self.total += chunk.size
            while self.chunks and self.total - self.start - self.chunks[0].size >= self.capacity:
                self.start += self.chunks.popleft().size

    def read(self, a: int, b: int) -> tuple[int, np.ndarray]:
        """Samples [a, b), clamped to what is still held: (index of the first one returned, samples)."""
        with self.lock:
            a, b = max(a, self.start), min(b, self.total)
            if a >= b:
                return a, np.zeros(0, np.float32)
            held = np.concatenate(list(self.chunks))
        return a, held[a - self.start : b - self.start]


@dataclass(frozen=True)
class _Stored:
    stem: Path  # the clip's path without its suffix
    files: tuple[Path, ...]  # the clip, its sidecar and its picture (any may be missing)
    size: int
    mtime: float


class ClipRecorder(Sink):
    """Keeps each stream's recent audio and saves the clip of each ended event (see detections.Detections)."""

    def __init__(
        self,
        cfg: ClipsSection,
        end_after_s: float,
        metrics: Metrics,
        classifier: Callable[[], tuple[str, str]],  # the name and fingerprint of the classifier now serving
        clock: Callable[[], float] = time.time,
    ):
        self.cfg = cfg
        self.classifier = classifier
        self.clock = clock  # wall clock: the age of the clips written from now on
        self.dir = cfg.dir
        self.metrics = metrics
        self.format, self.subtype = FORMATS[cfg.format]
        if self.subtype not in sf.available_subtypes(self.format):
            raise ConfigError(
                f"clips.format {cfg.format!r}: this libsndfile cannot write {self.format}/{self.subtype}; "
                f"use one of {', '.join(f for f, (c, t) in FORMATS.items() if t in sf.available_subtypes(c))}"
            )
        self.capacity = int((cfg.max_clip_s + end_after_s + LAG_S) * SAMPLE_RATE)
        self.rings: dict[str, AudioRing] = {}
        self.rings_lock = threading.Lock()
        self._prepare_dir()
        # what is stored, by stem: scanned once, then kept up to date (a scan per clip costs ~70 ms per
        # thousand clips); files others add under dir are counted from the next start
        self.stored = self._scan()
        self.stored_lock = threading.Lock()  # the worker saves clips, the heartbeat thread expires them
        self.metrics.clips_bytes.set(sum(s.size for s in self.stored.values()))
        self.unpictured: deque[tuple[Path, np.ndarray]] = deque()  # saved clips whose picture is still to draw
        self.unpictured_lock = threading.Lock()

    def _prepare_dir(self) -> None:
        """Create the folder and prove it is writable: ConfigError naming it otherwise (at start-up)."""
        try:
            self.dir.mkdir(parents=True, exist_ok=True)
            probe = self.dir / f".probe-{os.getpid()}.tmp"
            probe.write_bytes(b"")
            probe.unlink()
        except OSError as e:
            raise ConfigError(f"clips.dir {str(self.dir)!r}: cannot write clips there ({e.strerror or e})") from None
        for stale in self.dir.glob("*/.*.tmp"):  # a clip whose writer died before the rename
            stale.unlink(missing_ok=True)

    # ---- audio -----------------------------------------------------------------------------------
    def audio(self, stream: str, chunk: np.ndarray, end_s: float) -> None:
        ring = self.rings.get(stream)
        if ring is None:
            with self.rings_lock:
                ring = self.rings.setdefault(stream, AudioRing(self.capacity))
        ring.append(chunk)

    def stream_ended(self, info: StreamInfo, audio_s: float, error: str | None) -> None:
        with self.rings_lock:
            self.rings.pop(info.stream, None)

    def event(self, event: Event) -> None:
        if isinstance(event, StatusEvent):  # from the heartbeat thread, every publish.heartbeat_s
            self.draw_pictures()
            with self.stored_lock:
                self._expire(list(self.stored.values()))

    # ---- saving ----------------------------------------------------------------------------------
    def save(self, stream: str, edge: Edge, t0_wall: float) -> str | None:
        """Write the clip of an ended event; its path relative to dir, or None (counted and logged)."""
        ring = self.rings.get(stream)
        if ring is None:
            self._refused("audio", f"{stream}: no audio buffered for the {edge.label} event")
            return None
        # [start - pre_roll, end + post_roll], its last max_clip_s when longer; the ring may hold less
        full_a = max(0, round((edge.start_s - self.cfg.pre_roll_s) * SAMPLE_RATE))
        want_b = round((edge.time_s + self.cfg.post_roll_s) * SAMPLE_RATE)
        first, samples = ring.read(max(full_a, want_b - round(self.cfg.max_clip_s * SAMPLE_RATE)), want_b)
        if samples.size == 0:
            self._refused("audio", f"{stream}: the audio of the {edge.label} event is no longer buffered")
            return None
        clip_start_s, clip_end_s = first / SAMPLE_RATE, (first + samples.size) / SAMPLE_RATE
        stamp = utc_iso(t0_wall + edge.start_s).replace("-", "").replace(":", "")  # 20261124T064001.123Z
        name = f"{stream_folder(stream)}/{stamp}_{_safe(edge.label)}"
        classifier, fingerprint = self.classifier()
        try:
            audio = io.BytesIO()
            sf.write(audio, samples, SAMPLE_RATE, format=self.format, subtype=self.subtype)
            sidecar = {
                "schema": SIDECAR_SCHEMA,
                "stream": stream,
                "label": edge.label,
                "score": edge.score,
                "hits": edge.hits,
                "segments": [
                    {"start_s": h.start_s, "end_s": h.end_s, "score": h.score, "top": _top(h.top)}
                    for h in edge.segments
                ],
                # what the model was torn between in the event's best segment
                "top": _top(max(edge.segments, key=lambda h: h.score).top) if edge.segments else [],
                "start_s": edge.start_s,
                "end_s": edge.time_s,
                "start_utc": utc_iso(t0_wall + edge.start_s),
                "end_utc": utc_iso(t0_wall + edge.time_s),
                "clip_start_s": clip_start_s,
                "clip_end_s": clip_end_s,
                "clip_start_utc": utc_iso(t0_wall + clip_start_s),
                "truncated": first > full_a,  # longer than max_clip_s, or its start had left the ring
                "classifier": classifier,
                "fingerprint": fingerprint,
                "format": self.cfg.format,
                "sample_rate": SAMPLE_RATE,
                "samples": int(samples.size),
            }
            with self.stored_lock:
                saved = self._store(name, audio.getvalue(), sidecar)
        except (OSError, sf.SoundFileError) as e:
            self._refused("error", f"{stream}: writing the clip of the {edge.label} event failed: {e}")
            return None
        if saved is not None:
            with self.unpictured_lock:
                if len(self.unpictured) >= DRAW_QUEUE:
                    skipped, _ = self.unpictured.popleft()
                    self._refused("spectrogram", f"{skipped}: no picture, {DRAW_QUEUE} newer clips wait for theirs")
                self.unpictured.append((self.dir / saved, samples))
        return saved

    def draw_pictures(self) -> None:
        """Draw the pictures of the clips saved since the last call (the heartbeat thread's work)."""
        while True:
            with self.unpictured_lock:
                if not self.unpictured:
                    return
                clip, samples = self.unpictured.popleft()
            self._draw(clip, samples)

    def _draw(self, clip: Path, samples: np.ndarray) -> None:
        """The clip's spectrogram beside it, if the clip is still there and the picture fits under the quota."""
        try:
            png = spectrogram_png(samples)
        except (ValueError, MemoryError) as e:
            self._refused("spectrogram", f"{clip}: drawing its spectrogram failed: {e}")
            return
        path = clip.with_suffix(".png")
        with self.stored_lock:
            entry = self.stored.get(clip.with_suffix(""))
            if entry is None:  # deleted by retention meanwhile
                return
            used = sum(s.size for s in self.stored.values())
            if used + len(png) > self.cfg.max_total_mb * 1e6:
                self._refused("spectrogram", f"{path}: no room under clips.max_total_mb; the clip has no picture")
                return
            try:
                _write_atomic(path, png)
            except OSError as e:
                self._refused("spectrogram", f"{path}: cannot write the picture: {e}")
                return
            self.stored[entry.stem] = replace(entry, files=(*entry.files, path), size=entry.size + len(png))
            self.metrics.clips_bytes.set(used + len(png))

    def _store(self, name: str, audio: bytes, sidecar: dict[str, Any]) -> str | None:
        quota = int(self.cfg.max_total_mb * 1e6)
        stored = sorted(self.stored.values(), key=lambda s: (s.mtime, s.stem))  # oldest first
        clip = self.dir / f"{name}.{self.cfg.format}"
        for n in range(1, 1000):  # two events of one label starting in the same millisecond
            if not clip.exists():
                break
            clip = self.dir / f"{name}-{n}.{self.cfg.format}"
        sidecar["clip"] = clip.name
        meta = (json.dumps(sidecar, indent=1) + "\n").encode()
        size = len(audio) + len(meta)
        if size > quota:
            self._refused("quota", f"{clip}: {size} bytes alone exceed clips.max_total_mb")
            return None
        stored = self._expire(stored)
        used = sum(s.size for s in stored)
        for old in stored:  # oldest first
            if used + size <= quota:
                break
            if self._delete(old, "quota"):
                used -= old.size
        if used + size > quota:
            self._refused("quota", f"{clip}: no room under clips.max_total_mb ({used} bytes in use)")
            return None
        free = shutil.disk_usage(self.dir).free
        if free - size < self.cfg.min_free_mb * 1e6:
            self._refused("disk", f"{clip}: would leave {free - size} bytes free, under clips.min_free_mb")
            return None
        clip.parent.mkdir(exist_ok=True)
        _write_atomic(clip, audio)
        try:
            _write_atomic(clip.with_suffix(".json"), meta)
        except OSError:
            clip.unlink(missing_ok=True)  # no clip without its sidecar
            raise
        stem = clip.with_suffix("")
        self.stored[stem] = _Stored(stem, (clip, clip.with_suffix(".json")), size, self.clock())
        self.metrics.clips_saved.inc()
        self.metrics.clips_bytes.set(used + size)
        log.info("saved %s (%.1f s, %d bytes)", clip, sidecar["samples"] / SAMPLE_RATE, size)
        return clip.relative_to(self.dir).as_posix()

    def _expire(self, stored: list[_Stored]) -> list[_Stored]:
        """Delete the clips past max_age_days; the others, and any that could not be deleted, are returned."""
        if self.cfg.max_age_days is None:
            return stored
        cutoff = self.clock() - self.cfg.max_age_days * 86_400
        return [s for s in stored if s.mtime >= cutoff or not self._delete(s, "age")]

    def _scan(self) -> dict[Path, _Stored]:
        """Clips, sidecars and pictures under dir by stem (one without its clip counts too), aged by mtime."""
        found: dict[Path, list[tuple[Path, os.stat_result]]] = {}
        for path in self.dir.glob("*/*"):
            if path.name.startswith(".") or path.suffix not in SUFFIXES:
                continue
            try:
                found.setdefault(path.with_suffix(""), []).append((path, path.stat()))
            except FileNotFoundError:  # deleted meanwhile
                continue
        stored = {}
        for stem, files in found.items():
            # aged by the clip's own file (its picture is written later), else by the sidecar's or picture's
            by_kind = sorted(files, key=lambda f: (f[0].suffix == ".png", f[0].suffix == ".json"))
            size, mtime = sum(st.st_size for _, st in files), by_kind[0][1].st_mtime
            stored[stem] = _Stored(stem, tuple(p for p, _ in files), size, mtime)
        return stored

    def _delete(self, old: _Stored, reason: str) -> bool:
        try:
            for path in old.files:
                path.unlink(missing_ok=True)
        except OSError as e:
            log.error("cannot delete %s (%s): %s", old.stem, reason, e)
            return False
        self.stored.pop(old.stem, None)
        self.metrics.clips_bytes.set(sum(s.size for s in self.stored.values()))
        self.metrics.clips_deleted.labels(reason).inc()
        log.info("deleted %s (%s)", old.stem, reason)
        return True

    def _refused(self, reason: str, message: str) -> None:
        self.metrics.clips_refused.labels(reason).inc()
        log.warning("clip not saved: %s", message)


def stream_folder(stream: str) -> str:
    """The folder of a stream's clips, one per stream id ([A-Za-z0-9_.-]): the id itself, except that an id
    starting with "." (".", "..", a hidden folder) gets a "~", which no id contains, in front."""
    return f"~{stream}" if stream.startswith(".") else stream


def _safe(name: str) -> str:
    """A file name part from a label or stream id: anything but [A-Za-z0-9_.-] becomes '-'."""
    return _UNSAFE.sub("-", name).strip(".") or "-"


def _write_atomic(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError:
        tmp.unlink(missing_ok=True)
        raise


def _top(top: tuple[tuple[str, float], ...]) -> list[dict[str, Any]]:
    return [{"label": label, "score": score} for label, score in top]
