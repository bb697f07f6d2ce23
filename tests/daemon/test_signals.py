"""SIGHUP reloads (or refuses) the classifier without dropping streams; SIGTERM exits cleanly within the bound."""

import shutil
import signal
import time
from pathlib import Path

import torch

from calm_core.classifier import CalmClassifier, CalmConfig
from calm_core.features import FeatureStore
from calm_core.fingerprint import Fingerprint
from calmd.client import Subscriber
from calmd.events import LabelEvent, StatusEvent

from .conftest import endpoint_of, write_config


def fit_variant(backbone, tone_sets, out: Path, fingerprint: Fingerprint | None = None, **config) -> Path:
    from calm_core.data import label_index, load_examples

    examples = load_examples(tone_sets["support"])
    labels, y = label_index(examples)
    feats = FeatureStore(backbone).extract([e.path for e in examples], progress=False)
    clf = CalmClassifier.fit(
        feats, torch.tensor(y), labels, backbone.layout, fingerprint or backbone.fingerprint, CalmConfig(**config)
    )
    return clf.save(out)


def next_matching(sub: Subscriber, predicate, timeout: float):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        event = sub.receive(timeout_s=0.2)
        if event is not None and predicate(event):
            return event
    return None


def test_sighup_refuses_bad_files_and_swaps_in_good_ones(
    tmp_path: Path, tiny_model_dir, classifier_file, backbone, tone_sets, scene_wav, daemon_factory
) -> None:
    live = tmp_path / "live.calm.safetensors"
    shutil.copy(classifier_file, live)
    config = write_config(
        tmp_path / "calmd.toml", tiny_model_dir, live,
        f'[[streams]]\nid = "room"\ntype = "file"\npath = "{scene_wav}"\nloop = true\nrealtime = false\n',
    )  # fmt: skip
    original = CalmClassifier.load(classifier_file)
    shallow = fit_variant(backbone, tone_sets, tmp_path / "shallow.safetensors", top_k=4, max_layer=1)
    foreign = Fingerprint({**backbone.fingerprint.components, "weights": "0" * 64})
    mismatched = fit_variant(backbone, tone_sets, tmp_path / "foreign.safetensors", fingerprint=foreign, top_k=4)
    is_label = lambda e: isinstance(e, LabelEvent)  # noqa: E731
    with Subscriber(endpoint_of(config)) as sub:
        daemon = daemon_factory(config)
        first = next_matching(sub, is_label, 60)
        assert first is not None and first.exit_layer == original.exit_layer

        for bad, reason in ((b"not a classifier", "not a calm classifier file"), (mismatched, "other features")):
            if isinstance(bad, Path):
                shutil.copy(bad, live)
            else:
                live.write_bytes(bad)
            daemon.proc.send_signal(signal.SIGHUP)
            # the refusal stays in every heartbeat until a reload succeeds: wait for this one's reason
            status = next_matching(sub, lambda e, r=reason: isinstance(e, StatusEvent) and r in (e.error or ""), 20)
            assert status is not None and status.error.startswith("reload refused"), daemon.stop()[1][-3000:]
            label = next_matching(sub, is_label, 20)
            assert label is not None and label.fingerprint == original.fingerprint.digest
            assert label.exit_layer == original.exit_layer  # the old classifier is still serving

        shutil.copy(shallow, live)
        daemon.proc.send_signal(signal.SIGHUP)
        swapped = next_matching(sub, lambda e: is_label(e) and e.exit_layer <= 1, 30)
        status = next_matching(sub, lambda e: isinstance(e, StatusEvent), 10)
        code, log = daemon.stop()
    assert swapped is not None, log
    assert status is not None and status.error is None and status.streams["room"].state == "live"
    assert code == 0


def test_sigterm_drains_and_exits_within_bound(
    tmp_path: Path, tiny_model_dir, classifier_file, scene_wav, daemon_factory
):
    config = write_config(
        tmp_path / "calmd.toml", tiny_model_dir, classifier_file,
        f'[[streams]]\nid = "room"\ntype = "file"\npath = "{scene_wav}"\nloop = true\nrealtime = false\n',
        extra="[inference]\ndrain_timeout_s = 3.0\nqueue_size = 8\n",
    )  # fmt: skip
    with Subscriber(endpoint_of(config)) as sub:
        daemon = daemon_factory(config)
        assert next_matching(sub, lambda e: isinstance(e, LabelEvent), 60) is not None
        t = time.monotonic()
        daemon.proc.send_signal(signal.SIGTERM)
        code, log = daemon.stop(timeout=15)
        elapsed = time.monotonic() - t
        last = next_matching(sub, lambda e: isinstance(e, StatusEvent) and e.streams["room"].state == "stopped", 5)
    assert code == 0, log
    assert elapsed < 3.0 + 2.0
    assert last is not None
