"""Classes that are not one blob: sub-classes with prototypes of their own, and a detector's positive group."""

import math
from pathlib import Path

import numpy as np
import pytest
import torch

from calm_core.evaluation.metrics import detection, evaluate
from calm_core.method.classifier import CalmClassifier, group_members, parent_of
from calm_core.method.detection import log_odds

from .test_classifier import FP, LAYOUT, SPARSE, synthetic

# Three clusters of features: two kinds of spoof far apart, and bonafide.
NAMES = ["bonafide", "spoof/classic", "spoof/neural"]


def fitted() -> tuple[CalmClassifier, torch.Tensor, torch.Tensor]:
    feats, labels = synthetic(6, n_classes=3)
    return CalmClassifier.fit(feats, labels, NAMES, LAYOUT, FP, SPARSE), feats, labels


def test_a_label_with_a_slash_is_a_sub_class_of_the_part_before_it() -> None:
    assert parent_of("spoof/neural") == "spoof" and parent_of("glass") == "glass"
    assert parent_of("spoof/neural/v2") == "spoof"


def test_a_group_takes_a_class_with_all_its_sub_classes() -> None:
    labels = ["bonafide", "spoof/classic", "spoof/neural", "alarm"]
    assert group_members(labels, ["spoof"]) == [1, 2]
    assert group_members(labels, "spoof/neural") == [2]
    assert group_members(labels, ["alarm", "spoof/classic"]) == [1, 3]


@pytest.mark.parametrize(
    ("group", "message"),
    [(["robot"], "'robot' is not a class"), ([], "empty"), (["bonafide", "spoof"], "every class")],
)
def test_a_bad_group_is_refused_naming_it(group: list[str], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        group_members(["bonafide", "spoof/classic", "spoof/neural"], group)


def test_group_log_odds_is_the_best_member_over_the_best_outsider() -> None:
    scores = np.array([[0.5, 0.2, 0.3], [0.1, 0.6, 0.3], [0.2, 0.2, 0.2]])
    # group {1, 2} against class 0: max(0.2, 0.3) / 0.5, max(0.6, 0.3) / 0.1, 0.2 / 0.2
    want = [math.log(0.300001 / 0.500001), math.log(0.600001 / 0.100001), 0.0]
    assert log_odds(scores, [1, 2]) == pytest.approx(want)
    assert log_odds(scores, 1) == pytest.approx(log_odds(scores, [1]))  # one index as before
    with pytest.raises(ValueError, match="leave one out"):
        log_odds(scores, [0, 1, 2])


def test_class_scores_are_the_best_sub_class_and_predictions_name_the_class() -> None:
    clf, feats, labels = fitted()
    assert clf.labels == NAMES and clf.classes == ["bonafide", "spoof"]
    units = clf.scores(feats)
    folded = clf.class_scores(feats)
    assert torch.equal(folded[:, 0], units[:, 0])
    assert torch.equal(folded[:, 1], torch.maximum(units[:, 1], units[:, 2]))
    preds = clf.predict(feats)
    for pred, y, row in zip(preds, labels.tolist(), units):
        assert pred.label == parent_of(NAMES[y]) and pred.sub == NAMES[y]  # the clusters are easy
        assert set(pred.scores) == {"bonafide", "spoof"}
        assert pred.scores["spoof"] == pytest.approx(float(row[1:].max()))


def test_sub_classes_survive_the_file(tmp_path: Path) -> None:
    clf, feats, _ = fitted()
    loaded = CalmClassifier.load(clf.save(tmp_path / "c.safetensors"))
    assert loaded.classes == ["bonafide", "spoof"]
    assert [p.sub for p in loaded.predict(feats)] == [p.sub for p in clf.predict(feats)]


def test_eval_and_detection_count_in_classes() -> None:
    clf, feats, labels = fitted()
    y = [clf.class_index(NAMES[i]) for i in labels.tolist()]
    assert sorted(set(y)) == [0, 1] and clf.class_index("spoof") == 1
    result = evaluate(clf, feats, y)
    assert result["labels"] == ["bonafide", "spoof"] and result["calm"]["accuracy"] == 1.0
    det = detection(clf, feats, y, ["spoof"])
    assert det["n_positive"] == 12 and det["calm"]["eer"] == 0.0
    with pytest.raises(ValueError, match="not a class"):
        clf.class_index("spoof/robot")


def test_a_classifier_needs_two_classes_not_two_sub_classes() -> None:
    feats, labels = synthetic(4, n_classes=2)
    with pytest.raises(ValueError, match="at least 2 classes"):
        CalmClassifier.fit(feats, labels, ["spoof/a", "spoof/b"], LAYOUT, FP, SPARSE)


def two_kinds_of_spoof(n_old: int = 8, n_new: int = 4, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """bonafide around A; spoof half around B and half around C = 2A - B, so spoof's mean sits on A: one
    prototype for spoof cannot tell it from bonafide in the informative heads, two can."""
    g = torch.Generator().manual_seed(seed)
    a = torch.randn(LAYOUT.n_heads, LAYOUT.head_dim, generator=torch.Generator().manual_seed(1))
    b = a + 2.0 * torch.randn(LAYOUT.n_heads, LAYOUT.head_dim, generator=torch.Generator().manual_seed(2))
    centres = torch.stack([a, b, 2 * a - b])
    kinds = torch.tensor([0] * 8 + [1] * n_old + [2] * n_new)
    feats = torch.randn(len(kinds), LAYOUT.n_layers, LAYOUT.n_heads, LAYOUT.head_dim, generator=g)
    feats[:, 2] = 3 * centres[kinds] + 0.3 * feats[:, 2]
    return feats, (kinds > 0).long()


def test_auto_split_gives_a_two_kind_class_two_prototypes() -> None:
    from dataclasses import replace

    feats, labels = two_kinds_of_spoof()
    names = ["bonafide", "spoof"]
    one = CalmClassifier.fit(feats, labels, names, LAYOUT, FP, SPARSE)
    two = CalmClassifier.fit(feats, labels, names, LAYOUT, FP, replace(SPARSE, split="auto"))
    assert one.labels == names
    assert two.labels == ["bonafide", "spoof/1", "spoof/2"] and two.classes == names
    split = two.info["split"]
    assert split["classes"] == {"spoof": ["spoof/1", "spoof/2"]} and split["loo_correct"][1] > split["loo_correct"][0]
    # the new clusters are the two kinds (which one is /1 is k-means' choice)
    subs = two.support_labels[8:]
    assert len(set(subs[:8].tolist())) == 1 and len(set(subs[8:].tolist())) == 1 and subs[0] != subs[-1]
    test, truth = two_kinds_of_spoof(seed=5)
    right_one = sum(p.label == names[y] for p, y in zip(one.predict(test), truth.tolist()))
    right_two = sum(p.label == names[y] for p, y in zip(two.predict(test), truth.tolist()))
    assert right_two == len(truth) and right_two > right_one


def test_auto_split_leaves_a_one_kind_class_whole() -> None:
    from dataclasses import replace

    feats, labels = synthetic(6, n_classes=3)
    clf = CalmClassifier.fit(feats, labels, ["a", "b", "c"], LAYOUT, FP, replace(SPARSE, split="auto"))
    assert clf.labels == ["a", "b", "c"] and clf.info["split"]["classes"] == {}


def test_a_stored_group_reads_as_names_whether_one_name_or_a_list() -> None:
    from calm_core.method.subclasses import as_group

    assert as_group("spoof") == ("spoof",) and as_group(["spoof", "neural"]) == ("spoof", "neural")
    assert as_group(None) == () and as_group("") == () and as_group([]) == ()
    with pytest.raises(ValueError, match="a class name or a list of them"):
        as_group(3)
