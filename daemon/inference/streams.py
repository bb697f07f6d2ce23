"""The stream registry: every stream calmd hears, its segmenter and counters, and the streams that ended lately.

Configured streams live as long as calmd; a listener opens one stream per call leg and the registry retires
it once it has ended and every one of its segments is accounted for. calm.status reads its counters.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from calm_core.messages.events import StreamStatus

from ..capture.segmenter import Segmenter
from ..config import StreamSection, VadSection
from ..outputs.metrics import Metrics
from ..outputs.sinks import StreamInfo

ENDED_KEEP_S = 60.0  # an ended listener stream stays in calm.status this long (its last state and error)
ENDED_KEEP_MAX = 200


@dataclass
class StreamStats:
    state: str = "connecting"
    segments: int = 0
    dropped: int = 0
    failed: int = 0
    unclassified: int = 0  # cut but never classified because calmd stopped (see Service.stop)
    audio_s: float = 0.0
    model_s: float = 0.0
    last_error: str | None = None
    t0_wall: float | None = None  # wall clock of the stream's first sample
    seq: int = 0
    info: StreamInfo | None = None  # set for streams a listener opened (one per call leg); None: configured

    @property
    def accounted(self) -> int:
        """Segments whose fate is known: labelled, dropped, failed or unclassified."""
        return self.seq + self.dropped + self.failed + self.unclassified

    def status(self, reconnects: int) -> StreamStatus:
        return StreamStatus(
            state=self.state,
            segments=self.segments,
            dropped=self.dropped,
            failed=self.failed,
            unclassified=self.unclassified,
            reconnects=reconnects,
            audio_s=round(self.audio_s, 3),
            rtf=round(self.model_s / self.audio_s, 4) if self.audio_s > 0 else None,
            last_error=self.last_error,
        )


class StreamRegistry:
    """Counters and segmenters by stream id. The lock guards the dictionaries and the counters that
    several threads bump (sources, listeners, the worker and the heartbeat all touch them)."""

    def __init__(self, configured: list[StreamSection], vad: VadSection, metrics: Metrics):
        self.vad = vad
        self.metrics = metrics
        self.lock = threading.Lock()
        self.stats = {s.id: StreamStats() for s in configured}
        self.segmenters = {s.id: Segmenter(s.id, vad) for s in configured}
        self.ended: dict[str, tuple[float, StreamStatus]] = {}  # listener streams retired lately

    def open(self, info: StreamInfo) -> None:
        """Register a listener's stream; ValueError when the id is taken by a configured or running one."""
        with self.lock:
            if info.stream in self.stats:
                raise ValueError(f"stream id {info.stream!r} is already in use")
            self.ended.pop(info.stream, None)
            self.stats[info.stream] = StreamStats(info=info)
            self.segmenters[info.stream] = Segmenter(info.stream, self.vad)

    def metric_stream(self, stream: str) -> str:
        """The stream label on Prometheus series: call streams are counted under their protocol, since
        a series per call id would grow without bound."""
        stats = self.stats.get(stream)
        return stream if stats is None or stats.info is None else stats.info.protocol

    def count(self, stream: str, counter: str, n: int = 1) -> None:
        """Add n to one of a stream's segment counters (segments, dropped, failed, unclassified) and
        to its Prometheus counter of the same name."""
        with self.lock:
            stats = self.stats[stream]
            setattr(stats, counter, getattr(stats, counter) + n)
        getattr(self.metrics, counter).labels(self.metric_stream(stream)).inc(n)

    def retire_ended(self, on_retired: Callable[[str, StreamStats], None]) -> None:
        """Drop listener streams that have ended and whose every segment is accounted for, calling
        on_retired(stream, stats) for each first; forget ended streams past their time in calm.status."""
        now = time.monotonic()
        for sid, stats in list(self.stats.items()):
            if stats.info is None or stats.state not in ("finished", "failed") or stats.accounted < stats.segments:
                continue
            on_retired(sid, stats)
            with self.lock:
                self.stats.pop(sid, None)
                self.segmenters.pop(sid, None)
                self.ended[sid] = (now, stats.status(reconnects=0))
        for sid, (at, _) in list(self.ended.items()):
            if now - at > ENDED_KEEP_S or len(self.ended) > ENDED_KEEP_MAX:
                self.ended.pop(sid, None)

    def statuses(self, reconnects: dict[str, int]) -> dict[str, StreamStatus]:
        """Every current stream's status, then the lately ended ones."""
        streams = {sid: st.status(reconnects.get(sid, 0)) for sid, st in list(self.stats.items())}
        for sid, (_, ended) in list(self.ended.items()):
            streams.setdefault(sid, ended)
        return streams

    def unclassified(self) -> int:
        return sum(s.unclassified for s in list(self.stats.values()))


class StreamHandle:
    """What a listener holds for one call leg: feed it 16 kHz mono float32, end it once."""

    def __init__(self, sink: Callable[[np.ndarray], None], on_state: Callable[[str, str | None], Any]):
        self._sink = sink
        self._on_state = on_state
        self.live = False
        self.ended = False

    def feed(self, chunk: np.ndarray) -> None:
        if not self.live:
            self.live = True
            self._on_state("live", None)
        if chunk.size:
            self._sink(chunk)

    def end(self, error: str | None = None) -> None:
        """Hang up: whatever is open in the segmenter is cut and queued; error marks the stream failed."""
        if self.ended:
            return
        self.ended = True
        self._on_state("failed" if error else "finished", error)
