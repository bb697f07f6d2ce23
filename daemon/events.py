"""calmd's messages, kept importable from here: they live in calm_core.messages.events."""

from calm_core.messages.events import (
    CALL_TOPIC,
    EVENT_TOPIC,
    LABEL_TOPIC,
    STATUS_TOPIC,
    CallEvent,
    CallLeg,
    EdgeEvent,
    Event,
    LabelEvent,
    Scored,
    StatusEvent,
    StreamStatus,
    decode,
    encode,
    utc_iso,
)

__all__ = [
    "CALL_TOPIC",
    "EVENT_TOPIC",
    "LABEL_TOPIC",
    "STATUS_TOPIC",
    "CallEvent",
    "CallLeg",
    "EdgeEvent",
    "Event",
    "LabelEvent",
    "Scored",
    "StatusEvent",
    "StreamStatus",
    "decode",
    "encode",
    "utc_iso",
]
