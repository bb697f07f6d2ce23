"""The threshold `calm fit --positive` stores is the one calmd's per-call verdicts decide with: the call
aggregator fed labels whose mean log-odds sit just either side of it."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

from calm_core.messages.events import CallEvent, LabelEvent, Scored
from calm_core.method.classifier import CalmClassifier
from calmd.outputs.calls import CallAggregator, decision_policy, segment_log_odds
from calmd.outputs.metrics import Metrics
from calmd.outputs.sinks import StreamInfo

from .conftest import ENV


@pytest.fixture(scope="module")
def detector(tiny_model_dir: Path, tone_sets: dict[str, Path], tmp_path_factory) -> CalmClassifier:
    out = tmp_path_factory.mktemp("detector") / "beep.calm.safetensors"
    subprocess.run(
        [sys.executable, "-m", "calm_core.cli", "-q", "fit", "--model", str(tiny_model_dir), "--support",
         str(tone_sets["support"]), "--out", str(out), "--top-k", "6", "--no-cache", "--positive", "beep"],
        check=True, capture_output=True, env=ENV, timeout=300,
    )  # fmt: skip
    return CalmClassifier.load(out)


def label(stream: str, seq: int, log_odds: float) -> LabelEvent:
    """A segment whose beep score over the best other class is e^log_odds (the other two classes lower)."""
    r = math.exp(log_odds)
    beep, other = r / (1 + r), 1 / (1 + r)
    top = sorted([Scored("beep", beep), Scored("hum", other), Scored("siren", 0.0)], key=lambda s: -s.score)
    return LabelEvent(
        stream=stream, seq=seq, start_s=seq, end_s=seq + 1, start_utc="", end_utc="", label=top[0].label,
        best=top[0].label, score=top[0].score, margin=top[0].score - top[1].score, top=top, unknown=False,
        classifier="beep", fingerprint="f", exit_layer=1, latency_ms=1.0,
    )  # fmt: skip


def test_policy_takes_the_stored_threshold(detector: CalmClassifier) -> None:
    stored = detector.info["decision"]
    assert isinstance(stored, dict) and stored["positive"] == ["beep"]
    policy = decision_policy(detector.labels, detector.info, "beep", detector.fingerprint.digest)
    assert (policy.positive, policy.threshold, policy.source) == ("beep", stored["threshold"], "classifier")
    # [calls] threshold in the config still wins
    assert decision_policy(detector.labels, detector.info, "beep", "f", threshold=0.5).source == "config"


def test_call_verdicts_are_decided_at_the_stored_threshold(detector: CalmClassifier) -> None:
    policy = decision_policy(detector.labels, detector.info, "beep", detector.fingerprint.digest)
    t = policy.threshold
    published: list[CallEvent] = []
    sink = CallAggregator(published.append, lambda: policy, Metrics())
    calls = {"above": (t + 0.3, t - 0.2), "below": (t + 0.2, t - 0.3)}  # means t + 0.05 and t - 0.05
    for call, segments in calls.items():
        info = StreamInfo(stream=f"as-{call}", call=call, leg="in", protocol="audiosocket", legs=("in",))
        sink.stream_opened(info)
        for seq, x in enumerate(segments):
            sink.label(label(info.stream, seq, x), info)
        sink.stream_ended(info, audio_s=2.0, error=None)
    finals = {e.call: e for e in published if e.final}
    for call, decision in (("above", "positive"), ("below", "negative")):
        final = finals[call]
        assert final.threshold == t and final.threshold_source == "classifier" and final.positive == "beep"
        assert final.segments == 2 and final.decision == decision
        assert final.score == pytest.approx(sum(calls[call]) / 2, abs=1e-3)
    assert json.dumps(finals["above"].to_json())  # serialisable as published


def test_a_group_policy_scores_the_best_member_against_the_best_outsider() -> None:
    labels = ["bonafide", "spoof/classic", "neural"]
    info = {"decision": {"positive": ["spoof", "neural"], "threshold": 0.5}}
    policy = decision_policy(labels, info, "calls", "f")
    assert policy.group == ("spoof", "neural") and policy.positive == "spoof+neural"
    assert (policy.threshold, policy.source) == (0.5, "classifier")
    # A config naming a different group does not take the stored threshold, which was set for another one.
    assert decision_policy(labels, info, "calls", "f", positive="neural").source == "default"
    with pytest.raises(ValueError, match="'robot' is not a class"):
        decision_policy(labels, info, "calls", "f", positive=["robot"])
    top = [Scored("bonafide", 0.2), Scored("neural", 0.5), Scored("spoof", 0.1)]
    event = LabelEvent(
        stream="s", seq=0, start_s=0, end_s=1, start_utc="", end_utc="", label="neural", best="neural", score=0.5,
        margin=0.3, top=top, unknown=False, classifier="calls", fingerprint="f", exit_layer=1, latency_ms=1.0,
    )  # fmt: skip
    assert segment_log_odds(event, policy.group) == pytest.approx(math.log(0.500001 / 0.200001))
    assert segment_log_odds(event, ("spoof",)) == pytest.approx(math.log(0.100001 / 0.500001))


def test_a_file_from_before_groups_stores_one_name_and_still_decides() -> None:
    info = {"decision": {"positive": "beep", "threshold": 1.25}}
    policy = decision_policy(["beep", "hum"], info, "beep", "f")
    assert (policy.group, policy.threshold, policy.source) == (("beep",), 1.25, "classifier")
