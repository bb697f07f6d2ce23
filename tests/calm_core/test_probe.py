"""combiner probe: logistic regression over every head up to CALM's exit layer, scored, stored and loaded."""

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from sklearn.linear_model import LogisticRegression

from calm_core.errors import ClassifierFileError
from calm_core.method import calm
from calm_core.method.classifier import CalmClassifier, CalmConfig

from .test_classifier import FP, LAYOUT, SPARSE, synthetic

PROBE = replace(SPARSE, combiner="probe")


@pytest.mark.parametrize("n_classes", [2, 3])
def test_probe_scores_are_scikit_learns_probabilities_on_the_heads_up_to_the_exit(n_classes: int) -> None:
    feats, labels = synthetic(6, n_classes=n_classes)
    names = ["a", "b", "c"][:n_classes]
    clf = CalmClassifier.fit(feats, labels, names, LAYOUT, FP, PROBE)
    vote = CalmClassifier.fit(feats, labels, names, LAYOUT, FP, SPARSE)
    assert clf.exit_layer == vote.exit_layer == 2  # the informative layer: the probe does not read deeper
    assert clf.probe is not None
    assert clf.probe.heads.tolist() == list(range((clf.exit_layer + 1) * LAYOUT.n_heads))
    test, _ = synthetic(4, n_classes=n_classes, seed=7)
    # the same regression, by scikit-learn itself on the same inputs
    x = calm.l2_normalize(feats[:, :3].reshape(len(feats), -1, LAYOUT.head_dim)).flatten(1).double().numpy()
    xt = calm.l2_normalize(test[:, :3].reshape(len(test), -1, LAYOUT.head_dim)).flatten(1).double().numpy()
    want = LogisticRegression(C=1.0, max_iter=1000).fit(x, labels.numpy()).predict_proba(xt)
    got = clf.scores(test[:, : clf.exit_layer + 1]).numpy()  # early exit: layers up to the exit only
    assert np.allclose(got, want, atol=1e-5)


def test_a_probe_classifier_survives_the_file_and_a_vote_file_has_no_probe(tmp_path: Path) -> None:
    feats, labels = synthetic(6)
    clf = CalmClassifier.fit(feats, labels, ["a", "b", "c"], LAYOUT, FP, PROBE)
    loaded = CalmClassifier.load(clf.save(tmp_path / "p.safetensors"))
    assert loaded.config.combiner == "probe" and loaded.probe is not None
    assert torch.equal(loaded.scores(feats), clf.scores(feats))
    assert CalmClassifier.load(CalmClassifier.fit(feats, labels, ["a", "b", "c"], LAYOUT, FP, SPARSE).save(
        tmp_path / "v.safetensors")).probe is None  # fmt: skip


def test_a_file_whose_probe_does_not_fit_is_refused(tmp_path: Path) -> None:
    from safetensors.torch import load_file, save_file

    feats, labels = synthetic(6)
    path = CalmClassifier.fit(feats, labels, ["a", "b", "c"], LAYOUT, FP, PROBE).save(tmp_path / "p.safetensors")
    from calm_core.method.classifier import _safetensors_metadata

    meta = _safetensors_metadata(path.read_bytes())
    tensors = load_file(str(path))
    tensors["probe_bias"] = tensors["probe_bias"][:2].contiguous()
    save_file(tensors, str(path), metadata=meta)
    with pytest.raises(ClassifierFileError, match="probe_weight/probe_bias are"):
        CalmClassifier.load(path)


def test_probe_and_abstention_do_not_mix() -> None:
    with pytest.raises(ValueError, match="abstain is measured on CALM's vote"):
        CalmConfig(combiner="probe", abstain="score")
