"""Per-stream detections: labels in, debounced start/end edges out, under per-label rules.

A label is *heard* when it is not `unknown` and its score reaches the label's min_score; anything else
(an abstention, a score below the bar) counts as silence for every label. An event of a label starts once
it has been heard confirm_hits times within confirm_window_s of stream time (between the starts of the
first and last of those segments), and its start time is the first confirming segment's start. One event
is active per stream: a confirmed other label ends it; otherwise it ends when it has not been heard for
end_after_s of stream time. DetectionTracker is pure (no clock, no I/O: the service feeds stream times);
Detections holds one per stream and publishes their edges as EdgeEvents, an end carrying its saved clip.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal

from calm_core.messages.events import EdgeEvent, Event, utc_iso

from ..config import UNKNOWN, EventsSection

MAX_SEGMENTS_KEPT = 500  # per event, for the clip's sidecar: a long event keeps its first ones


@dataclass(frozen=True)
class Rule:
    min_score: float = 0.0
    confirm_hits: int = 1
    confirm_window_s: float = 10.0


def rules_of(events: EventsSection) -> dict[str, Rule]:
    """The rule of each label named in [events.labels], its unset keys taken from [events]."""
    out = {}
    for name, r in events.labels.items():
        out[name] = Rule(
            events.min_score if r.min_score is None else r.min_score,
            events.confirm_hits if r.confirm_hits is None else r.confirm_hits,
            events.confirm_window_s if r.confirm_window_s is None else r.confirm_window_s,
        )
    return out


def check_rule_labels(events: EventsSection, labels: list[str], classifier: str) -> None:
    """ValueError naming a label with a rule that the classifier cannot answer."""
    missing = [name for name in events.labels if name not in labels]
    if missing:
        raise ValueError(
            f"events.labels: {', '.join(repr(m) for m in missing)} not among the labels of classifier "
            f"{classifier} ({', '.join(labels)})"
        )


@dataclass(frozen=True)
class Heard:
    start_s: float
    end_s: float
    score: float
    top: tuple[tuple[str, float], ...] = ()  # the classes the model was torn between, best first, with scores


@dataclass(frozen=True)
class Edge:
    kind: Literal["start", "end"]
    label: str
    time_s: float  # start: the first confirming segment's start; end: the last heard segment's end
    start_s: float  # the event's start
    score: float  # best score of the label in the event so far
    hits: int  # segments of the label heard in the event so far
    segments: tuple[Heard, ...] = ()  # those segments (at most MAX_SEGMENTS_KEPT)


@dataclass
class _Active:
    label: str
    segments: list[Heard]  # the first MAX_SEGMENTS_KEPT heard
    last: Heard
    hits: int
    score: float

    @classmethod
    def confirmed(cls, label: str, hits: list[Heard]) -> _Active:
        return cls(label, hits[:MAX_SEGMENTS_KEPT], hits[-1], len(hits), max(h.score for h in hits))

    def add(self, heard: Heard) -> None:
        if len(self.segments) < MAX_SEGMENTS_KEPT:
            self.segments.append(heard)
        self.last = heard
        self.hits += 1
        self.score = max(self.score, heard.score)

    def edge(self, kind: Literal["start", "end"]) -> Edge:
        start_s = self.segments[0].start_s
        time_s = start_s if kind == "start" else self.last.end_s
        return Edge(kind, self.label, time_s, start_s, self.score, self.hits, tuple(self.segments))


@dataclass
class DetectionTracker:
    """One stream's detections."""

    end_after_s: float
    default: Rule = Rule()
    rules: dict[str, Rule] = field(default_factory=dict)
    active: _Active | None = None
    pending: dict[str, deque[Heard]] = field(default_factory=dict)  # heard, not yet confirmed; oldest first

    @classmethod
    def from_config(cls, events: EventsSection) -> DetectionTracker:
        default = Rule(events.min_score, events.confirm_hits, events.confirm_window_s)
        return cls(events.end_after_s, default, rules_of(events))

    def rule(self, label: str) -> Rule:
        return self.rules.get(label, self.default)

    def label(
        self, label: str, score: float, start_s: float, end_s: float, top: tuple[tuple[str, float], ...] = ()
    ) -> list[Edge]:
        """A classified segment; returns the edges it causes (an end, a start, both, or none)."""
        if label == UNKNOWN or score < self.rule(label).min_score:
            return []
        heard = Heard(start_s, end_s, score, top)
        if self.active is not None and self.active.label == label:
            self.active.add(heard)
            return []
        rule = self.rule(label)
        hits = self.pending.setdefault(label, deque())
        hits.append(heard)
        while start_s - hits[0].start_s > rule.confirm_window_s:
            hits.popleft()
        if len(hits) < rule.confirm_hits:
            return []
        del self.pending[label]
        edges = self.end()
        self.active = _Active.confirmed(label, list(hits))
        return [*edges, self.active.edge("start")]

    def expire(self, audio_s: float) -> list[Edge]:
        """The stream has delivered audio up to audio_s: end the event not heard for end_after_s."""
        if self.active is not None and audio_s - self.active.last.end_s > self.end_after_s:
            return self.end()
        return []

    def end(self) -> list[Edge]:
        """End the active event now (another label took over, or the stream ended)."""
        if self.active is None:
            return []
        edge = self.active.edge("end")
        self.active = None
        return [edge]


SaveClip = Callable[[str, "Edge", float], "str | None"]  # (stream, end edge, wall clock of stream time 0)


class Detections:
    """Every stream's tracker, and the publishing of its edges (called from the model worker only)."""

    def __init__(self, events: EventsSection, emit: Callable[[Event], None], save_clip: SaveClip | None):
        self.events = events
        self.emit = emit
        self.save_clip = save_clip
        self.trackers: dict[str, DetectionTracker] = {}
        self.seq: dict[str, int] = {}  # per stream, from 0

    def label(
        self, stream: str, t0_wall: float, label: str, score: float, start_s: float, end_s: float,
        top: tuple[tuple[str, float], ...] = (),
    ) -> None:  # fmt: skip
        tracker = self.trackers.get(stream)
        if tracker is None:
            tracker = self.trackers[stream] = DetectionTracker.from_config(self.events)
        self._publish(stream, t0_wall, tracker.label(label, score, start_s, end_s, top))

    def expire(self, stream: str, t0_wall: float, audio_s: float, ended: bool) -> None:
        """The stream has delivered audio up to audio_s; ended: it will deliver no more."""
        tracker = self.trackers.get(stream)
        if tracker is not None and tracker.active is not None:
            self._publish(stream, t0_wall, tracker.end() if ended else tracker.expire(audio_s))

    def close(self, stream: str, t0_wall: float) -> None:
        """A stream leaves for good (a call leg, after its last label): an open event ends with it."""
        tracker = self.trackers.pop(stream, None)
        if tracker is not None:
            self._publish(stream, t0_wall, tracker.end())
        self.seq.pop(stream, None)

    def _publish(self, stream: str, t0_wall: float, edges: list[Edge]) -> None:
        for e in edges:
            clip = self.save_clip(stream, e, t0_wall) if self.save_clip is not None and e.kind == "end" else None
            seq = self.seq.get(stream, 0)
            self.seq[stream] = seq + 1
            self.emit(
                EdgeEvent(stream, seq, e.kind, e.label, round(e.time_s, 3), utc_iso(t0_wall + e.time_s),
                          round(e.start_s, 3), e.score, e.hits, clip)
            )  # fmt: skip
