"""Per-stream detections: labels in, debounced start/end edges out, under per-label rules.

A label is *heard* when it is not `unknown` and its score reaches the label's min_score; anything else
(an abstention, a score below the bar) counts as silence for every label. An event of a label starts once
it has been heard confirm_hits times within confirm_window_s of stream time (between the starts of the
first and last of those segments), and its start time is the first confirming segment's start. One event
is active per stream: a confirmed other label ends it; otherwise it ends when it has not been heard for
end_after_s of stream time. Pure: no clock, no I/O; the service feeds stream times.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from typing import Literal

from .config import UNKNOWN, EventsSection


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
class Edge:
    kind: Literal["start", "end"]
    label: str
    time_s: float  # start: the first confirming segment's start; end: the last heard segment's end
    start_s: float  # the event's start
    score: float  # best score of the label in the event so far
    hits: int  # segments of the label heard in the event so far


@dataclass
class _Active:
    label: str
    start_s: float
    last_seen_s: float
    score: float
    hits: int

    def edge(self, kind: Literal["start", "end"]) -> Edge:
        return Edge(kind, self.label, self.start_s if kind == "start" else self.last_seen_s, self.start_s,
                    self.score, self.hits)  # fmt: skip


@dataclass
class DetectionTracker:
    """One stream's detections."""

    end_after_s: float
    default: Rule = Rule()
    rules: dict[str, Rule] = field(default_factory=dict)
    active: _Active | None = None
    # heard but not yet confirmed: label -> (segment start, score) of recent hits, oldest first
    pending: dict[str, deque[tuple[float, float]]] = field(default_factory=dict)

    @classmethod
    def from_config(cls, events: EventsSection) -> DetectionTracker:
        default = Rule(events.min_score, events.confirm_hits, events.confirm_window_s)
        return cls(events.end_after_s, default, rules_of(events))

    def rule(self, label: str) -> Rule:
        return self.rules.get(label, self.default)

    def label(self, label: str, score: float, start_s: float, end_s: float) -> list[Edge]:
        """A classified segment; returns the edges it causes (an end, a start, both, or none)."""
        if label == UNKNOWN or score < self.rule(label).min_score:
            return []
        active = self.active
        if active is not None and active.label == label:
            active.last_seen_s = end_s
            active.score = max(active.score, score)
            active.hits += 1
            return []
        rule = self.rule(label)
        hits = self.pending.setdefault(label, deque())
        hits.append((start_s, score))
        while hits and start_s - hits[0][0] > rule.confirm_window_s:
            hits.popleft()
        if len(hits) < rule.confirm_hits:
            return []
        del self.pending[label]
        edges = self.end()
        self.active = _Active(label, hits[0][0], end_s, max(s for _, s in hits), len(hits))
        return [*edges, self.active.edge("start")]

    def expire(self, audio_s: float) -> list[Edge]:
        """The stream has delivered audio up to audio_s: end the event not heard for end_after_s."""
        if self.active is not None and audio_s - self.active.last_seen_s > self.end_after_s:
            return self.end()
        return []

    def end(self) -> list[Edge]:
        """End the active event now (another label took over, or the stream ended)."""
        if self.active is None:
            return []
        edge = self.active.edge("end")
        self.active = None
        return [edge]
