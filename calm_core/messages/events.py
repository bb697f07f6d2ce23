"""The messages calmd publishes: small typed objects, serialised and parsed in one place.

Every ZeroMQ message is two frames: the topic (UTF-8) and one JSON object. Topics:
calm.label.<stream> (LabelEvent), calm.event.<stream> (EdgeEvent), calm.status (StatusEvent),
calm.call.<call-id> (CallEvent: a running verdict after each segment of a call, and a final one at hangup).
The JSON Schemas in calm_core/messages/schemas/ document each message; tests validate every message.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from typing import Any, ClassVar

__all__ = ["CALL_TOPIC", "EVENT_TOPIC", "LABEL_TOPIC", "STATUS_TOPIC", "CallEvent", "CallLeg", "EdgeEvent", "Event",
           "LabelEvent", "Scored", "StatusEvent", "StreamStatus", "decode", "encode", "utc_iso"]  # fmt: skip

LABEL_TOPIC = "calm.label."
EVENT_TOPIC = "calm.event."
STATUS_TOPIC = "calm.status"
CALL_TOPIC = "calm.call."


def utc_iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


@dataclass(frozen=True)
class Scored:
    label: str
    score: float


@dataclass(frozen=True)
class LabelEvent:
    """One classified segment."""

    SCHEMA: ClassVar[str] = "calm.label/1"
    stream: str
    seq: int  # per stream, from 0, +1 per label: a gap means messages were lost
    start_s: float  # segment start in stream time (seconds since the stream first delivered audio)
    end_s: float
    start_utc: str
    end_utc: str
    label: str  # "unknown" when the classifier abstains
    best: str  # best class even when abstaining
    score: float
    margin: float
    top: list[Scored]
    unknown: bool
    classifier: str
    fingerprint: str
    exit_layer: int
    latency_ms: float  # from segment end to publish

    @property
    def topic(self) -> str:
        return LABEL_TOPIC + self.stream

    def to_json(self) -> dict[str, Any]:
        return {"schema": self.SCHEMA, **asdict(self)}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> LabelEvent:
        _check_schema(data, cls.SCHEMA)
        fields = {k: v for k, v in data.items() if k != "schema"}
        fields["top"] = [Scored(**t) for t in fields["top"]]
        return cls(**fields)


@dataclass(frozen=True)
class EdgeEvent:
    """Debounced label changes: `start` once a label is confirmed, `end` after it has been absent a while."""

    SCHEMA: ClassVar[str] = "calm.event/2"  # /2: start_s, score, hits, clip
    stream: str
    seq: int
    kind: str  # "start" | "end"
    label: str
    time_s: float  # start: the first confirming segment's start; end: the end of the last segment heard
    time_utc: str
    start_s: float  # the event's start in stream time (equal to time_s on `start`)
    score: float  # the label's best score in the event so far (on `start`: over the confirming segments)
    hits: int  # segments of this label heard in the event so far
    # on `end`: the saved clip, relative to [clips] dir with "/" separators, e.g.
    # "front-door/20261124T064001.123Z_glass-break.flac"; None when clips are off or it was not saved
    clip: str | None = None

    @property
    def topic(self) -> str:
        return EVENT_TOPIC + self.stream

    def to_json(self) -> dict[str, Any]:
        return {"schema": self.SCHEMA, **asdict(self)}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> EdgeEvent:
        _check_schema(data, cls.SCHEMA)
        return cls(**{k: v for k, v in data.items() if k != "schema"})


@dataclass(frozen=True)
class StreamStatus:
    state: str  # connecting | live | backoff | failed | finished | stopped
    segments: int
    dropped: int
    failed: int
    unclassified: int  # never classified because calmd stopped first (past the drain bound): last status only
    reconnects: int
    audio_s: float
    rtf: float | None  # model seconds per audio second for this stream's segments
    last_error: str | None


@dataclass(frozen=True)
class StatusEvent:
    """Heartbeat: a quiet room still sends these; a dead daemon does not."""

    SCHEMA: ClassVar[str] = "calm.status/3"  # /2: streams.*.unclassified; /3: instance
    seq: int
    instance: str  # which calmd (publish.instance): keys the last-value cache of calm-proxy
    time_utc: str
    uptime_s: float
    queue_depth: int
    classifier: str
    fingerprint: str
    exit_layer: int
    streams: dict[str, StreamStatus] = field(default_factory=dict)
    error: str | None = None

    topic: ClassVar[str] = STATUS_TOPIC

    def to_json(self) -> dict[str, Any]:
        return {"schema": self.SCHEMA, **asdict(self)}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> StatusEvent:
        _check_schema(data, cls.SCHEMA)
        fields = {k: v for k, v in data.items() if k != "schema"}
        fields["streams"] = {k: StreamStatus(**v) for k, v in fields["streams"].items()}
        return cls(**fields)


@dataclass(frozen=True)
class CallLeg:
    leg: str
    stream: str
    scored: bool  # counts towards the call's score
    segments: int  # segments labelled on this leg
    score: float | None  # mean log-odds of the positive class over them; None before the first
    audio_s: float | None  # audio received on this leg; None until the leg has ended


@dataclass(frozen=True)
class CallEvent:
    """The verdict on one call: the mean per-segment log-odds of the positive class over its scored legs."""

    SCHEMA: ClassVar[str] = "calm.call/1"
    call: str
    protocol: str
    seq: int  # per call, from 0
    final: bool  # false: a running update after a segment; true: the verdict at hangup (the last message)
    started_utc: str
    time_utc: str
    duration_s: float  # wall time from the first leg's connection to this message
    legs: list[CallLeg]
    segments: int  # scored segments
    score: float | None  # mean log-odds of `positive` over scored segments; None before the first
    positive: str  # the class the score is about (e.g. "spoof")
    threshold: float
    threshold_source: str  # "classifier" | "config" | "default"
    decision: str  # "positive" (score >= threshold), "negative", or "none" (no scored segment yet)
    classifier: str
    fingerprint: str
    error: str | None = None  # a leg ended by bad input or a peer error

    @property
    def topic(self) -> str:
        return CALL_TOPIC + self.call

    def to_json(self) -> dict[str, Any]:
        return {"schema": self.SCHEMA, **asdict(self)}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> CallEvent:
        _check_schema(data, cls.SCHEMA)
        fields = {k: v for k, v in data.items() if k != "schema"}
        fields["legs"] = [CallLeg(**leg) for leg in fields["legs"]]
        return cls(**fields)


Event = LabelEvent | EdgeEvent | StatusEvent | CallEvent


def encode(event: Event) -> list[bytes]:
    return [event.topic.encode(), json.dumps(event.to_json(), separators=(",", ":")).encode()]


def decode(frames: list[bytes]) -> Event:
    """Parse a two-frame message into its typed event; ValueError for anything else."""
    if len(frames) != 2:
        raise ValueError(f"expected 2 frames [topic, json], got {len(frames)}")
    data = json.loads(frames[1])
    schema = data.get("schema", "") if isinstance(data, dict) else ""
    for cls in (LabelEvent, EdgeEvent, StatusEvent, CallEvent):
        if schema == cls.SCHEMA:
            return cls.from_json(data)  # type: ignore[attr-defined,no-any-return]
    raise ValueError(f"unknown message schema {schema!r}")


def _check_schema(data: dict[str, Any], expected: str) -> None:
    if data.get("schema") != expected:
        raise ValueError(f"schema is {data.get('schema')!r}, expected {expected!r}")
