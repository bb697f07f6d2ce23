"""Consumers of what the pipeline produces, beside the ZeroMQ publisher: they hear every published
message, the audio as it arrives, labels with their stream's call info, and stream lifecycles.

The pipeline calls every sink from the thread that produced the thing: the model worker (labels, edges,
ended streams), the heartbeat (status), a source or listener thread (audio, opened streams). A sink guards
its own state and returns quickly: it runs inside the pipeline.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from calm_core.messages.events import Event, LabelEvent


@dataclass(frozen=True)
class StreamInfo:
    """A stream a listener opened: one leg of one call."""

    stream: str  # the stream id, unique while the call lasts
    call: str  # the call id (safe for topics and stream ids)
    leg: str  # e.g. "in" (AudioSocket), "inbound"/"outbound" (Twilio), "caller"/"callee" (audio fork)
    protocol: str  # the listener: "audiosocket", "twilio", "audiofork"
    scored: bool = True  # whether this leg counts towards the call's verdict
    legs: tuple[str, ...] = ()  # every leg of the call, known when it connects


class Sink:
    """Base with no-op hooks; override what you consume."""

    def stream_opened(self, info: StreamInfo) -> None:
        """A listener opened a stream (before its first audio)."""

    def label(self, event: LabelEvent, info: StreamInfo | None) -> None:
        """A segment was classified; info is None for configured streams."""

    def stream_ended(self, info: StreamInfo, audio_s: float, error: str | None) -> None:
        """A listener stream ended and every one of its segments has been labelled or counted as lost."""

    def event(self, event: Event) -> None:
        """A message calmd has just published on ZeroMQ (label, edge, status or call verdict)."""

    def audio(self, stream: str, chunk: np.ndarray, end_s: float) -> None:
        """16 kHz mono float32 audio as a stream delivers it; end_s: its end in stream time (seconds)."""
