"""Per-label rules: debounced edges computed by hand from labels and stream times."""

import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from calm_core.fingerprint import file_sha256
from calm_core.messages.client import Subscriber
from calm_core.messages.events import EdgeEvent, Event, LabelEvent, StatusEvent
from calm_core.method.classifier import CalmClassifier
from calmd.config import ConfigError, EventsSection, parse_config
from calmd.outputs.detections import Detections, DetectionTracker, check_rule_labels, rules_of

from .conftest import ENV, endpoint_of, write_config
from .test_signals import fit_variant, next_matching


def tracker(**events) -> DetectionTracker:
    return DetectionTracker.from_config(EventsSection(enabled=True, **events))


def edges(t: DetectionTracker, *labels: tuple[str, float, float, float]) -> list[tuple]:
    """Feed (label, score, start_s, end_s) in order; every edge as (kind, label, time_s, score, hits)."""
    out = []
    for label, score, start, end in labels:
        out += [(e.kind, e.label, e.time_s, e.score, e.hits) for e in t.label(label, score, start, end)]
    return out


def test_defaults_start_on_the_first_label_and_another_label_takes_over() -> None:
    t = tracker(end_after_s=3.0)
    got = edges(t, ("dog", 0.6, 1.0, 2.0), ("dog", 0.9, 2.0, 3.0), ("cat", 0.5, 3.0, 4.0))
    assert got == [("start", "dog", 1.0, 0.6, 1), ("end", "dog", 3.0, 0.9, 2), ("start", "cat", 3.0, 0.5, 1)]


def test_unknown_is_not_heard_and_ends_nothing() -> None:
    t = tracker(end_after_s=3.0)
    got = edges(t, ("dog", 0.6, 1.0, 2.0), ("unknown", 0.99, 2.0, 3.0), ("dog", 0.7, 3.0, 4.0))
    assert got == [("start", "dog", 1.0, 0.6, 1)]
    assert t.expire(7.0) == []  # last heard at 4.0: 3.0 s of silence is not more than end_after_s
    [end] = t.expire(7.01)
    assert (end.kind, end.time_s, end.start_s, end.score, end.hits) == ("end", 4.0, 1.0, 0.7, 2)


def test_confirm_hits_within_the_window_start_at_the_first_confirming_segment() -> None:
    t = tracker(confirm_hits=3, confirm_window_s=5.0)
    # hits at 0, 6 (0 falls out of the window: 6 - 0 > 5), 8, 10: confirmed by 6, 8, 10 (10 - 6 <= 5)
    got = edges(t, ("dog", 0.5, 0.0, 1.0), ("dog", 0.6, 6.0, 7.0), ("dog", 0.8, 8.0, 9.0))
    assert got == []
    got = edges(t, ("dog", 0.7, 10.0, 11.0))
    assert got == [("start", "dog", 6.0, 0.8, 3)]  # score: the best of the confirming segments


def test_hits_of_other_labels_in_between_do_not_reset_the_count() -> None:
    t = tracker(confirm_hits=2, confirm_window_s=5.0)
    got = edges(t, ("dog", 0.5, 0.0, 1.0), ("cat", 0.5, 1.0, 2.0), ("dog", 0.5, 2.0, 3.0), ("cat", 0.9, 3.0, 4.0))
    # cat's second hit confirms it and takes over from dog (last heard at 3.0)
    assert got == [("start", "dog", 0.0, 0.5, 2), ("end", "dog", 3.0, 0.5, 2), ("start", "cat", 1.0, 0.9, 2)]


def test_an_unconfirmed_other_label_does_not_end_the_event() -> None:
    t = tracker(end_after_s=10.0, confirm_hits=2, confirm_window_s=2.0)
    got = edges(t, ("dog", 0.5, 0.0, 1.0), ("dog", 0.5, 1.0, 2.0), ("cat", 0.9, 2.0, 3.0), ("cat", 0.9, 5.0, 6.0))
    assert got == [("start", "dog", 0.0, 0.5, 2)]  # the cats are 3 s apart: never two within 2 s
    assert t.active is not None and t.active.label == "dog"


def test_a_score_below_min_score_counts_as_not_heard() -> None:
    t = tracker(min_score=0.5, end_after_s=2.0)
    got = edges(t, ("dog", 0.49, 0.0, 1.0), ("dog", 0.5, 1.0, 2.0), ("cat", 0.3, 2.0, 3.0), ("dog", 0.2, 3.0, 4.0))
    assert got == [("start", "dog", 1.0, 0.5, 1)]  # the weak cat ends nothing; the weak dog extends nothing
    [end] = t.expire(4.01)
    assert (end.time_s, end.hits) == (2.0, 1)


def test_per_label_overrides_inherit_unset_keys() -> None:
    events = EventsSection(
        enabled=True, min_score=0.3, confirm_hits=1, confirm_window_s=4.0,
        labels={"glass-break": {"min_score": 0.8, "confirm_hits": 2}},
    )  # fmt: skip
    rules = rules_of(events)
    assert (rules["glass-break"].min_score, rules["glass-break"].confirm_hits) == (0.8, 2)
    assert rules["glass-break"].confirm_window_s == 4.0
    t = DetectionTracker.from_config(events)
    got = edges(
        t,
        ("glass-break", 0.79, 0.0, 1.0),  # below its own bar
        ("glass-break", 0.85, 1.0, 2.0),
        ("dog", 0.35, 2.0, 3.0),  # dog: the default rule, one hit over 0.3 starts it
        ("glass-break", 0.95, 4.0, 5.0),  # the second glass-break hit within 4 s: confirmed
    )
    assert got == [("start", "dog", 2.0, 0.35, 1), ("end", "dog", 3.0, 0.35, 1), ("start", "glass-break", 1.0, 0.95, 2)]


def test_end_keeps_the_segments_heard() -> None:
    t = tracker(confirm_hits=2)
    t.label("dog", 0.6, 1.0, 2.0)
    t.label("dog", 0.7, 2.0, 3.0)
    t.label("dog", 0.8, 3.5, 4.0)
    [end] = t.end()
    assert [(h.start_s, h.end_s, h.score) for h in end.segments] == [(1.0, 2.0, 0.6), (2.0, 3.0, 0.7), (3.5, 4.0, 0.8)]
    assert t.end() == []


def test_detections_publish_numbered_edge_events_with_the_clip_on_end() -> None:
    sent: list[Event] = []
    saved: list[tuple] = []

    def save(stream, edge, t0):
        saved.append((stream, edge.kind, edge.label, t0))
        return f"{stream}/clip.flac"

    d = Detections(EventsSection(enabled=True, end_after_s=1.0), sent.append, save)
    d.label("s", 1_700_000_000.0, "dog", 0.6, 1.0, 2.0)
    d.expire("s", 1_700_000_000.0, 3.5, ended=False)
    d.label("s", 1_700_000_000.0, "cat", 0.6, 4.0, 5.0)
    d.close("s", 1_700_000_000.0)
    assert all(isinstance(e, EdgeEvent) for e in sent)
    got = [(e.seq, e.kind, e.label, e.time_s, e.start_s, e.clip) for e in sent]  # type: ignore[union-attr]
    assert got == [
        (0, "start", "dog", 1.0, 1.0, None),
        (1, "end", "dog", 2.0, 1.0, "s/clip.flac"),
        (2, "start", "cat", 4.0, 4.0, None),
        (3, "end", "cat", 5.0, 4.0, "s/clip.flac"),
    ]
    assert sent[0].time_utc == "2023-11-14T22:13:21.000Z"  # type: ignore[union-attr]
    assert saved == [("s", "end", "dog", 1_700_000_000.0), ("s", "end", "cat", 1_700_000_000.0)]
    assert d.seq == {} and d.trackers == {}  # a closed stream leaves nothing behind


def base_config(**events) -> dict:
    return {
        "model": {"path": "m", "classifier": "c.safetensors"},
        "streams": [{"id": "s", "type": "file", "path": "a.wav"}],
        "events": {"enabled": True, **events},
    }


@pytest.mark.parametrize(
    ("events", "message"),
    [
        ({"min_score": 1.5}, "events.min_score: Input should be less than or equal to 1"),
        ({"confirm_hits": 0}, "events.confirm_hits: Input should be greater than or equal to 1"),
        ({"confirm_window_s": 0}, "events.confirm_window_s: Input should be greater than 0"),
        ({"labels": {"dog": {"confirm_hits": 101}}}, "events.labels.dog.confirm_hits"),
        ({"labels": {"dog": {"min_score": 0.5, "hits": 2}}}, "events.labels.dog.hits: unknown key"),
        ({"labels": {"unknown": {"min_score": 0.5}}}, "'unknown' cannot have a rule"),
    ],
)
def test_bad_rules_are_refused_naming_the_key(events: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message.replace(".", r"\.").replace("(", r"\(")):
        parse_config(base_config(**events), "calmd.toml")


def test_rule_labels_are_checked_against_the_classifier() -> None:
    events = parse_config(base_config(labels={"glass-break": {"min_score": 0.8}, "dog": {}})).events
    check_rule_labels(events, ["dog", "glass-break"], "home")
    with pytest.raises(ValueError, match=r"'glass-break' not among the labels of classifier home \(dog, cat\)"):
        check_rule_labels(events, ["dog", "cat"], "home")


def tone_config(tmp_path: Path, model: Path, classifier: Path, scene: Path, rules: str) -> Path:
    return write_config(
        tmp_path / "calmd.toml", model, classifier,
        f'[[streams]]\nid = "room"\ntype = "file"\npath = "{scene}"\nloop = true\nrealtime = false\n',
        extra=f"[events]\nenabled = true\n{rules}",
    )  # fmt: skip


def test_calmd_refuses_to_start_with_a_rule_for_a_label_the_classifier_lacks(
    tmp_path: Path, tiny_model_dir, classifier_file, scene_wav
) -> None:
    rules = '[events.labels."glass-break"]\nmin_score = 0.8\n[events.labels.siren]\nconfirm_hits = 2\n'
    config = tone_config(tmp_path, tiny_model_dir, classifier_file, scene_wav, rules)
    proc = subprocess.run(
        [sys.executable, "-m", "calmd", "--config", str(config)], capture_output=True, text=True, env=ENV, timeout=300
    )
    assert proc.returncode == 2, proc.stderr
    labels = ", ".join(CalmClassifier.load(classifier_file).labels)
    assert f"events.labels: 'glass-break' not among the labels of classifier tones ({labels})" in proc.stderr


def test_sighup_refuses_a_classifier_without_a_label_that_has_a_rule(
    tmp_path: Path, tiny_model_dir, classifier_file, backbone, tone_sets, scene_wav, daemon_factory
) -> None:
    support = tmp_path / "no-siren"
    for name in ("hum", "beep", "whistle"):
        shutil.copytree(tone_sets["support"] / name, support / name)
    without_siren = fit_variant(backbone, {"support": support}, tmp_path / "no-siren.safetensors", top_k=4)
    live = tmp_path / "live.calm.safetensors"
    shutil.copy(classifier_file, live)
    config = tone_config(tmp_path, tiny_model_dir, live, scene_wav, "[events.labels.siren]\nmin_score = 0.5\n")
    original = file_sha256(classifier_file)  # the fingerprint labels carry: the classifier file's sha256
    is_label = lambda e: isinstance(e, LabelEvent)  # noqa: E731
    with Subscriber(endpoint_of(config)) as sub:
        daemon = daemon_factory(config)
        assert next_matching(sub, is_label, 180) is not None, daemon.stop()[1][-3000:]
        shutil.copy(without_siren, live)
        daemon.proc.send_signal(signal.SIGHUP)
        refused = lambda e: isinstance(e, StatusEvent) and "'siren' not among the labels" in (e.error or "")  # noqa: E731
        status = next_matching(sub, refused, 60)
        label = next_matching(sub, is_label, 60)
        code, log = daemon.stop()
    assert status is not None and status.error.startswith("reload refused"), log[-3000:]
    labels = ", ".join(CalmClassifier.load(without_siren).labels)
    assert f"'siren' not among the labels of classifier live ({labels})" in status.error
    assert label is not None and label.fingerprint == original  # the old classifier is still serving
    assert code == 0, log[-3000:]


def test_an_event_open_when_calmd_stops_ends_with_its_clip_before_the_last_status(
    tmp_path: Path, tiny_model_dir, classifier_file, scene_wav, daemon_factory
) -> None:
    # The file is read faster than the model labels it: at SIGTERM the queue is longer than the drain bound
    # allows, so the worker leaves with segments queued, and the event open then must still end (a consumer
    # such as Home Assistant's binary sensor would show it open for ever). end_after_s outlasts the test.
    clips = tmp_path / "clips"
    config = write_config(
        tmp_path / "calmd.toml", tiny_model_dir, classifier_file,
        f'[[streams]]\nid = "room"\ntype = "file"\npath = "{scene_wav}"\nloop = true\nrealtime = false\n',
        extra=(
            "[inference]\nbatch_size = 1\nqueue_size = 100\ndrain_timeout_s = 0.05\n"
            "[events]\nenabled = true\nend_after_s = 600\n"
            f'[clips]\nenabled = true\ndir = "{clips}"\npre_roll_s = 0.5\npost_roll_s = 0.5\nmin_free_mb = 0\n'
        ),
    )  # fmt: skip
    with Subscriber(endpoint_of(config), events=True) as sub:
        daemon = daemon_factory(config)
        edges: list[EdgeEvent] = []

        def until(done):  # every edge on the way is kept
            return next_matching(sub, lambda e: edges.append(e) if isinstance(e, EdgeEvent) else done(e), 300)

        assert next_matching(sub, lambda e: isinstance(e, EdgeEvent) and e.kind == "start", 300), daemon.log()
        assert until(lambda e: isinstance(e, StatusEvent) and e.queue_depth >= 50), daemon.log()
        code, log = daemon.stop()
        # the last status, after every other message, shows the stream stopped
        assert until(lambda e: isinstance(e, StatusEvent) and e.streams["room"].state == "stopped"), log[-3000:]
    assert code == 0 and "drain bound of" in log, log[-3000:]
    *_, start, end = edges
    assert (start.kind, end.kind) == ("start", "end"), edges[-2:]
    assert (end.stream, end.seq, end.label, end.start_s) == ("room", start.seq + 1, start.label, start.start_s)
    assert end.clip is not None and (clips / end.clip).is_file()
