"""The MQTT topics calm-mqtt publishes and the Home Assistant discovery configs that point at them.

Pure functions of the prefixes and the stream id: no connection, no state; the README's topic table is this.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from importlib import metadata
from typing import Any

try:
    __version__ = metadata.version("calm-audio")
except metadata.PackageNotFoundError:  # run from a source tree that was never installed
    __version__ = "unknown"

ONLINE, OFFLINE = "online", "offline"


def slug(text: str) -> str:
    """An id Home Assistant accepts in discovery topics and unique ids: [a-zA-Z0-9_-]."""
    return re.sub(r"[^A-Za-z0-9_-]", "_", text)


def stream_slug(stream: str) -> str:
    """A stream id as a slug, one per stream: "door.front" and "door_front" both slug to door_front, so a
    stream whose id changes in slugging gets a short hash of its id too (door_front_1c2a4e9b)."""
    readable = slug(stream)
    if readable == stream:
        return stream
    return f"{readable}_{hashlib.sha256(stream.encode()).hexdigest()[:8]}"


@dataclass(frozen=True)
class Topics:
    prefix: str = "calm"
    discovery_prefix: str = "homeassistant"

    @property
    def bridge_availability(self) -> str:
        return f"{self.prefix}/bridge/availability"  # retained online/offline; offline is the last will

    @property
    def status(self) -> str:
        return f"{self.prefix}/status"  # retained: the last calm.status of each calmd, keyed by instance

    def call(self, call: str) -> str:
        return f"{self.prefix}/calls/{call}"

    def label(self, stream: str) -> str:
        return f"{self.prefix}/{stream}/label"  # retained: the last calm.label of the stream

    def event(self, stream: str) -> str:
        return f"{self.prefix}/{stream}/event"  # not retained: each calm.event (start/end) once

    def state(self, stream: str) -> str:
        return f"{self.prefix}/{stream}/state"  # retained: the stream's part of the last calm.status

    def detected(self, stream: str) -> str:
        return f"{self.prefix}/{stream}/detected"  # retained: ON while an event is open, with its labels

    def available(self, stream: str) -> str:
        return f"{self.prefix}/{stream}/available"  # retained online/offline: calmd is reporting the stream

    def stream_states(self, stream: str) -> list[str]:
        """Every retained topic of a stream (cleared when the stream turns out to be a call leg)."""
        return [self.label(stream), self.state(stream), self.detected(stream), self.available(stream)]

    def config(self, component: str, stream: str, key: str) -> str:
        return f"{self.discovery_prefix}/{component}/{self.node_id(stream)}/{key}/config"

    def node_id(self, stream: str) -> str:
        return f"{slug(self.prefix)}_{stream_slug(stream)}"


def discovery_configs(topics: Topics, stream: str) -> dict[str, dict[str, Any]]:
    """Home Assistant MQTT discovery: one device per stream, its entities reading the topics above.

    Every entity is available while both the bridge and the stream are ("all"): a dead bridge (its
    last will) or a stream calmd no longer reports greys them out instead of showing stale values.
    """
    node = topics.node_id(stream)
    common: dict[str, Any] = {
        "device": {
            "identifiers": [node],
            "name": f"calm {stream}",
            "manufacturer": "calm",
            "model": "CALM audio classifier stream",
            "sw_version": __version__,
        },
        "origin": {"name": "calm-mqtt", "sw_version": __version__},
        "availability": [
            {"topic": topics.bridge_availability, "payload_available": ONLINE, "payload_not_available": OFFLINE},
            {"topic": topics.available(stream), "payload_available": ONLINE, "payload_not_available": OFFLINE},
        ],
        "availability_mode": "all",
    }
    label, event = topics.label(stream), topics.event(stream)
    entities: dict[str, tuple[str, dict[str, Any]]] = {
        "label": ("sensor", {
            "name": "Label", "icon": "mdi:ear-hearing",
            "state_topic": label, "value_template": "{{ value_json.label }}",
            "json_attributes_topic": label,
        }),
        "score": ("sensor", {
            "name": "Score", "icon": "mdi:gauge", "state_class": "measurement",
            "state_topic": label, "value_template": "{{ value_json.score }}", "suggested_display_precision": 3,
        }),
        "event": ("event", {
            "name": "Sound event", "event_types": ["start", "end"],
            # HA's event entity needs `event_type`; every field of the message (label, clip...) becomes an attribute
            "state_topic": event, "value_template": "{{ dict(value_json, event_type=value_json.kind) | to_json }}",
        }),
        "detected": ("binary_sensor", {
            "name": "Sound detected", "device_class": "sound", "payload_on": "ON", "payload_off": "OFF",
            "state_topic": topics.detected(stream), "value_template": "{{ value_json.state }}",
            "json_attributes_topic": topics.detected(stream),
        }),
        "state": ("sensor", {
            "name": "Stream state", "icon": "mdi:access-point-network", "entity_category": "diagnostic",
            "state_topic": topics.state(stream), "value_template": "{{ value_json.state }}",
            "json_attributes_topic": topics.state(stream),
        }),
    }  # fmt: skip
    return {
        topics.config(component, stream, key): {**fields, "unique_id": f"{node}_{key}", **common}
        for key, (component, fields) in entities.items()
    }
