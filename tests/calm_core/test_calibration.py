"""`calm fit --positive`: the decision threshold stored in the classifier file, recomputed here by hand."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from calm_core.audio.clipsets import label_index, load_examples
from calm_core.features import FeatureStore
from calm_core.method.calibration import eer_decision, loo_log_odds
from calm_core.method.classifier import CalmClassifier, CalmConfig
from calm_core.method.detection import eer

from .test_cli import calm


def by_hand_log_odds(scores: torch.Tensor, positive: int) -> np.ndarray:
    s = scores.double().numpy()
    other = np.delete(s, positive, axis=1).max(1)
    return np.log((s[:, positive] + 1e-6) / (other + 1e-6))


@pytest.fixture(scope="module")
def cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("calibration-cache")


@pytest.fixture(scope="module")
def support(backbone, tone_sets, cache):
    examples = load_examples(tone_sets["support"])
    names, y = label_index(examples)
    feats = FeatureStore(backbone, cache).extract([e.path for e in examples], progress=False)
    return feats, torch.tensor(y), names


def fit_cli(model: Path, tone_sets, cache: Path, out: Path, *extra: str) -> dict:
    args = ["fit", "--model", str(model), "--support", str(tone_sets["support"]), "--out", str(out)]
    return json.loads(calm(*args, "--top-k", "6", "--cache-dir", str(cache), *extra).stdout)


def test_fit_positive_stores_the_eer_threshold_of_leave_one_out_scores(
    tiny_model_dir, tone_sets, cache, support, backbone, tmp_path: Path
) -> None:
    out = tmp_path / "beep.safetensors"
    summary = fit_cli(tiny_model_dir, tone_sets, cache, out, "--positive", "beep")
    stored = CalmClassifier.load(out).info["decision"]
    assert summary["decision"] == stored
    feats, y, names = support
    pos = names.index("beep")
    scores = []
    for i in range(len(y)):  # each clip scored by a classifier fitted on the other 19
        rest = torch.arange(len(y)) != i
        clf = CalmClassifier.fit(feats[rest], y[rest], names, backbone.layout, backbone.fingerprint,
                                 CalmConfig(top_k=6))  # fmt: skip
        scores.append(by_hand_log_odds(clf.scores(feats[i : i + 1]), pos)[0])
    value, threshold = eer(np.array(scores), (y == pos).numpy())
    assert stored["positive"] == ["beep"] and stored["rule"] == "eer"
    assert stored["scores_from"] == "leave-one-out support"
    assert stored["threshold"] == pytest.approx(threshold, abs=1e-9) and stored["eer"] == pytest.approx(value)
    assert (stored["n_positive"], stored["n_negative"]) == (5, 15)


def test_fit_positive_with_validation_clips_uses_their_scores(tiny_model_dir, tone_sets, cache, backbone, tmp_path):
    out = tmp_path / "beep-val.safetensors"
    fit_cli(tiny_model_dir, tone_sets, cache, out, "--positive", "beep", "--val", str(tone_sets["val"]))
    clf = CalmClassifier.load(out)
    val = load_examples(tone_sets["val"])
    _, vy = label_index(val, clf.labels)
    feats = FeatureStore(backbone, cache).extract([e.path for e in val], progress=False)
    pos = clf.labels.index("beep")
    value, threshold = eer(by_hand_log_odds(clf.scores(feats), pos), np.array(vy) == pos)
    stored = clf.info["decision"]
    assert stored["scores_from"] == "validation" and (stored["n_positive"], stored["n_negative"]) == (3, 9)
    assert stored["threshold"] == pytest.approx(threshold, abs=1e-5) and stored["eer"] == pytest.approx(value)


def test_fit_positive_that_is_not_a_class_is_refused_before_extraction(tiny_model_dir, tone_sets, tmp_path) -> None:
    args = ["fit", "--model", str(tiny_model_dir), "--support", str(tone_sets["support"])]
    proc = calm(*args, "--out", str(tmp_path / "x.safetensors"), "--positive", "spoof", "--no-cache", check=False)
    assert proc.returncode == 2 and "--positive 'spoof' is not a class" in proc.stderr
    assert not (tmp_path / "x.safetensors").exists()


def test_leave_one_out_needs_two_clips_per_class(support, backbone) -> None:
    feats, y, names = support
    keep = torch.cat([torch.nonzero(y == c).flatten()[: 1 if c == 0 else 2] for c in range(len(names))])
    with pytest.raises(ValueError, match="2 support clips in every class"):
        loo_log_odds(feats[keep], y[keep], names, backbone.layout, backbone.fingerprint, CalmConfig(), "beep")


def test_scores_that_all_tie_give_the_flag_everything_threshold() -> None:
    decision = eer_decision(np.ones(4), np.array([1, 1, 0, 0], dtype=bool), "spoof", "validation")
    assert decision["threshold"] == 1.0 and decision["eer"] == 0.5


def test_far_rule_flags_at_most_that_share_of_negatives_by_hand() -> None:
    from calm_core.method.calibration import far_threshold, parse_rule

    negatives = np.array([-3.0, -1.0, 0.5, 2.0, -2.0, 1.0, 0.0, -0.5, 3.0, -4.0])  # ten negatives
    # far=0.1 allows one false alarm: the threshold sits just above the second highest (2.0).
    t = far_threshold(negatives, 0.1)
    assert 2.0 < t <= np.nextafter(2.0, np.inf) and (negatives >= t).sum() == 1
    # far=0 flags none; far=0.25 allows two.
    assert (negatives >= far_threshold(negatives, 0.0)).sum() == 0
    assert (negatives >= far_threshold(negatives, 0.25)).sum() == 2
    scores = np.concatenate([negatives, np.array([2.5, 4.0])])
    is_positive = np.array([False] * 10 + [True, True])
    decision = eer_decision(scores, is_positive, "spoof", "validation", "far=0.1")
    assert decision["rule"] == "far=0.1" and decision["threshold"] == t
    assert parse_rule("eer") == ("eer", None) and parse_rule("far=0.01") == ("far", 0.01)
    for bad in ("far=1.5", "far=x", "fpr=0.1"):
        with pytest.raises(ValueError, match="expected eer or far=X"):
            parse_rule(bad)
