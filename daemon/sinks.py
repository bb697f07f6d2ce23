"""Consumers of what the pipeline produces, beside the ZeroMQ publisher: they hear labels and stream lifecycles.

The pipeline calls every sink from the model worker's thread (labels, ended streams) or a listener's thread
(opened streams); a sink guards its own state.
"""

from __future__ import annotations

from dataclasses import dataclass

from .events import LabelEvent


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
