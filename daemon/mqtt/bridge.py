"""From calmd's typed messages to MQTT topics: which stream gets a Home Assistant device, what is retained.

A stream gets its discovery configs the first time the bridge sees it, in a label, an event or a calm.status.
Call legs are streams too, but short-lived: once a call verdict names a stream as one of its legs, the
device and the retained states made for it are deleted (empty retained payloads) and its labels and events
are published without retain from then on, so the broker does not collect one device per call.
"""

from __future__ import annotations

import json
import logging
from dataclasses import asdict, dataclass, field
from typing import Any, Protocol

from calm_core.messages.events import CallEvent, EdgeEvent, Event, LabelEvent, StatusEvent

from .config import BridgeConfig
from .topics import OFFLINE, ONLINE, Topics, discovery_configs

log = logging.getLogger("calm.mqtt")


class Broker(Protocol):
    def state(self, topic: str, payload: bytes) -> None: ...
    def message(self, topic: str, payload: bytes) -> None: ...


def dumps(data: dict[str, Any]) -> bytes:
    return json.dumps(data, separators=(",", ":")).encode()


@dataclass
class StreamTrack:
    last_seen: float  # monotonic time calmd last reported the stream (status, label or event)
    online: bool = False
    active: list[str] = field(default_factory=list)  # labels of the events open now
    configs: list[str] = field(default_factory=list)  # discovery topics published for it


class Bridge:
    def __init__(self, cfg: BridgeConfig, broker: Broker):
        self.cfg = cfg
        self.broker = broker
        self.topics = Topics(cfg.topics.prefix, cfg.discovery.prefix)
        self.streams: dict[str, StreamTrack] = {}
        self.call_legs: dict[str, float] = {}  # stream -> when a call verdict last named it
        self.statuses: dict[str, tuple[float, dict[str, Any]]] = {}  # instance -> (arrival, calm.status JSON)
        self.handled = 0

    def handle(self, event: Event, now: float) -> None:
        self.handled += 1
        if isinstance(event, LabelEvent):
            self._seen(event.stream, now)
            self._send(event.stream, self.topics.label(event.stream), dumps(event.to_json()), state=True)
        elif isinstance(event, EdgeEvent):
            self._seen(event.stream, now)
            self._edge(event)
        elif isinstance(event, StatusEvent):
            self._status(event, now)
        elif isinstance(event, CallEvent):
            for leg in event.legs:
                self._call_leg(leg.stream, now)
            self.broker.message(self.topics.call(event.call), dumps(event.to_json()))

    def tick(self, now: float) -> None:
        """Streams calmd has not reported for stale_after_s go offline (their calmd stopped or lost them);
        call legs that long over are forgotten, so memory does not grow with the number of calls."""
        stale_s = self.cfg.topics.stale_after_s
        for stream, track in self.streams.items():
            if track.online and now - track.last_seen > stale_s:
                track.online = False
                log.info("stream %s: not reported for %g s, marked offline", stream, stale_s)
                self.broker.state(self.topics.available(stream), OFFLINE.encode())
        for stream in [s for s, at in self.call_legs.items() if now - at > stale_s]:
            leg = self.streams.get(stream)
            if leg is None or now - leg.last_seen > stale_s:
                del self.call_legs[stream]
                self.streams.pop(stream, None)

    # ---- per message kind ---------------------------------------------------------------------------
    def _edge(self, event: EdgeEvent) -> None:
        stream = event.stream
        self._send(stream, self.topics.event(stream), dumps(event.to_json()), state=False)
        track = self.streams[stream]
        if event.kind == "start" and event.label not in track.active:
            track.active.append(event.label)
        elif event.kind == "end" and event.label in track.active:
            track.active.remove(event.label)
        detected = {"state": "ON" if track.active else "OFF", "labels": track.active, "time_utc": event.time_utc}
        self._send(stream, self.topics.detected(stream), dumps(detected), state=True)

    def _status(self, event: StatusEvent, now: float) -> None:
        for stream, status in event.streams.items():
            self._seen(stream, now)
            state = {"instance": event.instance, "time_utc": event.time_utc, **asdict(status)}
            self._send(stream, self.topics.state(stream), dumps(state), state=True)
        self.statuses[event.instance] = (now, event.to_json())
        max_age = self.cfg.topics.status_max_age_s
        current = {name: data for name, (at, data) in self.statuses.items() if now - at <= max_age}
        self.statuses = {name: entry for name, entry in self.statuses.items() if name in current}
        self.broker.state(self.topics.status, dumps(current))

    # ---- streams ------------------------------------------------------------------------------------
    def _seen(self, stream: str, now: float) -> None:
        track = self.streams.get(stream)
        if track is None:
            track = self.streams[stream] = StreamTrack(now)
            if stream not in self.call_legs and self.cfg.discovery.wants(stream):
                for topic, config in discovery_configs(self.topics, stream).items():
                    self.broker.state(topic, dumps(config))
                    track.configs.append(topic)
                log.info("stream %s: Home Assistant discovery published (%d entities)", stream, len(track.configs))
            if stream not in self.call_legs:
                detected: dict[str, Any] = {"state": "OFF", "labels": [], "time_utc": None}
                self.broker.state(self.topics.detected(stream), dumps(detected))
        track.last_seen = now
        if not track.online and stream not in self.call_legs:
            track.online = True
            self.broker.state(self.topics.available(stream), ONLINE.encode())

    def _send(self, stream: str, topic: str, payload: bytes, *, state: bool) -> None:
        if state and stream not in self.call_legs:
            self.broker.state(topic, payload)
        else:
            self.broker.message(topic, payload)

    def _call_leg(self, stream: str, now: float) -> None:
        known = stream in self.call_legs
        self.call_legs[stream] = now
        track = self.streams.get(stream)
        if known or track is None:
            return
        for topic in track.configs + self.topics.stream_states(stream):
            self.broker.state(topic, b"")  # deletes the retained message; Home Assistant removes the entity
        track.configs.clear()
        track.online = False
        log.info("stream %s is a call leg: its device and retained states are removed", stream)
