"""Per-call verdicts: a sink that turns the labels of a call's legs into calm.call.<call-id> messages.

Each labelled segment of a scored leg adds its log-odds of the positive group (one class, e.g. spoof, or
several: spoof and a new kind of attack taught as a class of its own),
    x = ln((s_pos + EPS) / (s_other + EPS)),  s_pos the group's best CALM score, s_other the best outside it
(calm_core.method.detection.log_odds_ratio, the score `calm fit --positive` and `calm eval` use too),
and the call's score is the mean of x over its scored segments. A running update follows every segment;
the final verdict follows the last leg's hangup, once its last segment is labelled.

The decision is `score >= threshold`. The threshold and positive class come, in this order, from the
config ([calls] threshold / positive), from the classifier file's info["decision"] = {"positive": ...,
"threshold": ...} (same log-odds scale), or default to DEFAULT_THRESHOLD (0: the positive class out-scores
every other on average) and a class named "spoof".
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from calm_core.messages.events import CallEvent, CallLeg, LabelEvent, utc_iso
from calm_core.method.detection import log_odds_ratio
from calm_core.method.subclasses import as_group, group_members, parent_of

from .metrics import Metrics
from .sinks import Sink, StreamInfo

log = logging.getLogger("calmd.calls")

DEFAULT_THRESHOLD = 0.0
DEFAULT_POSITIVE = "spoof"


@dataclass(frozen=True)
class Policy:
    group: tuple[str, ...]  # the positive group's classes
    threshold: float
    source: str  # "classifier" | "config" | "default"
    classifier: str
    fingerprint: str

    @property
    def positive(self) -> str:
        """The group as one name, as calm.call messages carry it: `spoof`, or `spoof+neural`."""
        return "+".join(self.group)


def decision_policy(
    labels: list[str],
    info: dict[str, object],
    classifier: str,
    fingerprint: str,
    positive: str | list[str] | None = None,
    threshold: float | None = None,
) -> Policy:
    """The positive group and threshold for a classifier; ValueError when a name in the group is not one of
    its classes (or the group takes them all)."""
    stored = info.get("decision") if isinstance(info.get("decision"), dict) else {}
    assert isinstance(stored, dict)
    group = as_group(positive) or as_group(stored.get("positive")) or (DEFAULT_POSITIVE,)
    try:
        members = group_members(labels, list(group))
    except ValueError as e:
        raise ValueError(f"calls.positive for classifier {classifier!r}: {e}; set [calls] positive") from None
    classes = tuple(dict.fromkeys(parent_of(labels[i]) for i in members))  # what labels and their top name
    if threshold is not None:
        return Policy(classes, float(threshold), "config", classifier, fingerprint)
    value = stored.get("threshold")
    same = set(as_group(stored.get("positive")) or group) == set(group)
    if isinstance(value, (int, float)) and math.isfinite(value) and same:
        return Policy(classes, float(value), "classifier", classifier, fingerprint)
    return Policy(classes, DEFAULT_THRESHOLD, "default", classifier, fingerprint)


def segment_log_odds(event: LabelEvent, positive: tuple[str, ...] | str) -> float:
    """log_odds_ratio of the positive group's best score over the best score outside it, from the label's top
    scores."""
    group = set(as_group(positive))
    s_pos = 0.0
    s_other = 0.0
    for scored in event.top:
        if scored.label in group:
            s_pos = max(s_pos, scored.score)
        else:
            s_other = max(s_other, scored.score)
    return float(log_odds_ratio(s_pos, s_other))


@dataclass
class _Leg:
    stream: str
    scored: bool
    segments: int = 0
    total: float = 0.0
    audio_s: float | None = None  # set when the leg ends

    def view(self, leg: str) -> CallLeg:
        score = round(self.total / self.segments, 4) if self.segments else None
        audio = None if self.audio_s is None else round(self.audio_s, 3)
        return CallLeg(leg, self.stream, self.scored, self.segments, score, audio)


@dataclass
class _Call:
    protocol: str
    started: float  # wall clock
    expected: tuple[str, ...]
    legs: dict[str, _Leg] = field(default_factory=dict)
    seq: int = 0
    error: str | None = None


class CallAggregator(Sink):
    """Publishes calm.call.<call-id>; `policy` is asked each time, so a SIGHUP reload takes effect."""

    def __init__(self, publish: Callable[[Any], object], policy: Callable[[], Policy], metrics: Metrics):
        self.publish = publish
        self.policy = policy
        self.metrics = metrics
        self.calls: dict[str, _Call] = {}
        self.lock = threading.Lock()

    def stream_opened(self, info: StreamInfo) -> None:
        with self.lock:
            call = self.calls.setdefault(info.call, _Call(info.protocol, time.time(), info.legs or (info.leg,)))
            call.legs[info.leg] = _Leg(info.stream, info.scored)

    def label(self, event: LabelEvent, info: StreamInfo | None) -> None:
        if info is None:
            return
        policy = self.policy()
        with self.lock:
            call = self.calls.get(info.call)
            if call is None or info.leg not in call.legs:
                return
            leg = call.legs[info.leg]
            leg.segments += 1
            leg.total += segment_log_odds(event, policy.group)
            message = self._message(info.call, call, policy, final=False)
        self.publish(message)

    def stream_ended(self, info: StreamInfo, audio_s: float, error: str | None) -> None:
        policy = self.policy()
        with self.lock:
            call = self.calls.get(info.call)
            if call is None or info.leg not in call.legs:
                return
            call.legs[info.leg].audio_s = audio_s
            if error and call.error is None:
                call.error = f"{info.leg}: {error}"
            if not all(name in call.legs and call.legs[name].audio_s is not None for name in call.expected):
                return
            del self.calls[info.call]
            message = self._message(info.call, call, policy, final=True)
        self.metrics.call_verdicts.labels(call.protocol, message.decision).inc()
        log.info(
            "call %s: %s (score %s over %d segment(s), threshold %.3f)",
            info.call, message.decision, message.score, message.segments, message.threshold,
        )  # fmt: skip
        self.publish(message)

    def _message(self, call_id: str, call: _Call, policy: Policy, final: bool) -> CallEvent:
        scored = [leg for leg in call.legs.values() if leg.scored]
        segments = sum(leg.segments for leg in scored)
        score = sum(leg.total for leg in scored) / segments if segments else None
        decision = "none" if score is None else ("positive" if score >= policy.threshold else "negative")
        now = time.time()
        seq = call.seq
        call.seq += 1
        return CallEvent(
            call=call_id,
            protocol=call.protocol,
            seq=seq,
            final=final,
            started_utc=utc_iso(call.started),
            time_utc=utc_iso(now),
            duration_s=round(max(0.0, now - call.started), 3),
            legs=[leg.view(name) for name, leg in call.legs.items()],
            segments=segments,
            score=None if score is None else round(score, 4),
            positive=policy.positive,
            threshold=policy.threshold,
            threshold_source=policy.source,
            decision=decision,
            classifier=policy.classifier,
            fingerprint=policy.fingerprint,
            error=call.error,
        )
