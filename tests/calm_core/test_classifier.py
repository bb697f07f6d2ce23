"""Fitting, predicting and the classifier file, on synthetic head features."""

import json
import pickle
import struct
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from calm_core.backbones.base import HeadLayout
from calm_core.errors import ClassifierFileError
from calm_core.fingerprint import Fingerprint
from calm_core.method import calm
from calm_core.method.classifier import PRESETS, UNKNOWN, CalmClassifier, CalmConfig

LAYOUT = HeadLayout(n_layers=6, n_heads=4, head_dim=8)
FP = Fingerprint({"adapter": "test/1", "weights": "abc", "precision": "fp32"}, model_id="synthetic")


def synthetic(n_per_class: int, informative_layer: int = 2, seed: int = 0, n_classes: int = 3, common: float = 0.0):
    """Features where only heads of one layer carry the class; every other head is noise.

    common > 0 adds one shared direction per head, as real head features have (their cosines
    are high whatever the class)."""
    g = torch.Generator().manual_seed(seed)
    centres = torch.randn(n_classes, LAYOUT.n_heads, LAYOUT.head_dim, generator=torch.Generator().manual_seed(99))
    labels = torch.arange(n_classes).repeat_interleave(n_per_class)
    feats = torch.randn(len(labels), LAYOUT.n_layers, LAYOUT.n_heads, LAYOUT.head_dim, generator=g)
    feats[:, informative_layer] = 3 * centres[labels] + 0.5 * feats[:, informative_layer]
    shared = torch.randn(
        1, LAYOUT.n_layers, LAYOUT.n_heads, LAYOUT.head_dim, generator=torch.Generator().manual_seed(3)
    )
    return feats + common * shared, labels


# Without the pull towards SAV's vote, which spreads weight over SAV's heads (tested on its own).
SPARSE = CalmConfig(top_k=4, sav_shrinkage=0.0)


def fit(config: CalmConfig = SPARSE, **kw) -> CalmClassifier:
    feats, labels = synthetic(6, **kw)
    return CalmClassifier.fit(feats, labels, ["a", "b", "c"], LAYOUT, FP, config)


SOURCES = {
    "calm": "support separation + leave-one-out F1",
    "paper": "support (in-sample)",
    "calm-0.1": "leave-one-out",
}


@pytest.mark.parametrize("preset", sorted(PRESETS))
def test_fit_finds_the_informative_layer_and_exits_there(preset: str) -> None:
    clf = fit(replace(PRESETS[preset], top_k=4, sav_shrinkage=0.0))
    assert clf.info["reliability_source"] == SOURCES[preset]
    used = clf.heads[(clf.weights > 0).any(1)]
    assert set(LAYOUT.layer_of(used).tolist()) == {2}
    assert clf.exit_layer == 2
    test, y = synthetic(10, seed=1)
    acc = {}
    for method in ("calm", "sav"):
        preds = clf.predict(test, method)  # type: ignore[arg-type]
        acc[method] = sum(p.best == "abc"[int(t)] for p, t in zip(preds, y)) / len(y)
    # SAV votes with 20 heads of which only 4 are informative; CALM weights them.
    assert acc["calm"] >= 0.9
    assert 0.5 < acc["sav"] <= acc["calm"]


def test_prediction_needs_only_layers_up_to_exit() -> None:
    clf = fit()
    test, _ = synthetic(4, seed=2)
    full = clf.scores(test)
    early = clf.scores(test[:, : clf.exit_layer + 1])
    assert torch.equal(full, early)
    with pytest.raises(ValueError, match="layers up to 2"):
        clf.scores(test[:, :2])


def test_max_layer_bounds_the_heads() -> None:
    clf = fit(replace(SPARSE, max_layer=1))
    assert clf.exit_layer <= 1 and clf.sav_exit_layer <= 1


VALIDATION_SOURCES = [("calm", "support separation + validation F1"), ("calm-0.1", "validation")]


@pytest.mark.parametrize(("preset", "source"), VALIDATION_SOURCES)
def test_validation_set_is_used_when_given(preset: str, source: str) -> None:
    feats, labels = synthetic(3)
    val, val_y = synthetic(4, seed=5)
    config = replace(PRESETS[preset], top_k=4)
    clf = CalmClassifier.fit(feats, labels, ["a", "b", "c"], LAYOUT, FP, config, val, val_y)
    assert clf.info["reliability_source"] == source


def test_one_shot_leave_one_out_falls_back_to_uniform_weights() -> None:
    feats, labels = synthetic(1)
    clf = CalmClassifier.fit(feats, labels, ["a", "b", "c"], LAYOUT, FP, replace(PRESETS["calm-0.1"], top_k=5))
    assert clf.info["reliability_source"].startswith("none")
    nonzero = clf.weights[clf.weights > 0]
    assert torch.allclose(nonzero, torch.full_like(nonzero, 0.2))


def test_auto_top_k_puts_most_weight_on_the_informative_layer() -> None:
    clf = fit(CalmConfig(top_k="auto", sav_shrinkage=0.0), common=4.0)
    assert clf.info["top_k"] in (5, 10, 20, 24)
    on_layer_2 = clf.weights[LAYOUT.layer_of(clf.heads) == 2].sum(0)
    assert bool((on_layer_2 > 0.5).all()), on_layer_2


def test_sav_shrinkage_mixes_in_the_uniform_vote_by_shot_count() -> None:
    sparse, shrunk = fit(), fit(replace(SPARSE, sav_shrinkage=1.0))
    assert torch.equal(sparse.heads[sparse.sav], shrunk.heads[shrunk.sav])
    lam = 1.0 / (1.0 + 6)  # six clips per class
    want = torch.zeros(LAYOUT.n_total, 3)
    want[sparse.heads] += (1 - lam) * sparse.weights
    want[sparse.heads[sparse.sav]] += lam / sparse.sav.numel()
    assert torch.allclose(shrunk.weights, want[shrunk.heads], atol=1e-6)


def test_one_shot_default_weights_heads_by_separation() -> None:
    # With a shared direction, one clip per class tells the heads that place classes apart.
    feats, labels = synthetic(1, common=8.0)
    clf = CalmClassifier.fit(feats, labels, ["a", "b", "c"], LAYOUT, FP, SPARSE)
    assert clf.info["reliability_source"] == "support separation (a class has 1 clip)"
    on_layer_2 = clf.weights[LAYOUT.layer_of(clf.heads) == 2].sum(0)
    assert bool((on_layer_2 > 0.7).all()), on_layer_2


def test_paper_preset_uses_in_sample_reliability_exactly() -> None:
    feats, labels = synthetic(4)
    clf = CalmClassifier.fit(feats, labels, ["a", "b", "c"], LAYOUT, FP, PRESETS["paper"])
    flat = feats.reshape(len(labels), -1, LAYOUT.head_dim)
    protos = calm.class_prototypes(flat, labels, 3)
    want = calm.reliability(calm.head_posteriors(flat, protos, 0.03), labels, 3, "margin_clamped")
    assert torch.equal(clf.reliability, want[clf.heads])
    assert torch.equal(clf.weights, calm.head_weights(want, "margin_clamped", 20, 0.5)[clf.heads])


def test_abstain_answers_unknown_below_threshold() -> None:
    clf = fit(CalmConfig(top_k=4, abstain="margin", abstain_keep=0.9))
    assert clf.abstain_threshold is not None and clf.abstain_threshold > 0
    noise = torch.randn(20, LAYOUT.n_layers, LAYOUT.n_heads, LAYOUT.head_dim) * 0.01
    assert sum(p.label == UNKNOWN for p in clf.predict(noise)) >= 15


def test_round_trip_is_exact(tmp_path: Path) -> None:
    clf = fit(CalmConfig(top_k=4, abstain="score"))
    back = CalmClassifier.load(clf.save(tmp_path / "c.safetensors"))
    for name in ("heads", "prototypes", "reliability", "weights", "sav"):
        assert torch.equal(getattr(clf, name), getattr(back, name)), name
    assert back.labels == clf.labels and back.config == clf.config and back.layout == clf.layout
    assert back.fingerprint.digest == FP.digest and back.abstain_threshold == clf.abstain_threshold
    test, _ = synthetic(3, seed=7)
    assert torch.equal(clf.scores(test), back.scores(test))


def test_wrong_fingerprint_is_refused_naming_what_differs() -> None:
    clf = fit()
    other = Fingerprint({**FP.components, "precision": "nf4"})
    with pytest.raises(ClassifierFileError, match="precision: classifier has 'fp32', model gives 'nf4'"):
        clf.check_features(other)
    clf.check_features(Fingerprint(dict(FP.components)))


def _rewrite(path: Path, mutate_meta=None, mutate_tensors=None) -> Path:
    from safetensors.torch import safe_open, save_file

    with safe_open(str(path), framework="pt") as f:
        meta = json.loads(f.metadata()["calm"])
        tensors = {k: f.get_tensor(k) for k in f.keys()}
    if mutate_meta:
        mutate_meta(meta)
    if mutate_tensors:
        mutate_tensors(tensors)
    save_file(tensors, str(path), metadata={"calm": json.dumps(meta)})
    return path


@pytest.mark.parametrize(
    "mutation, message",
    [
        (lambda m: m.update(format_version=99), "format_version 99 is not supported"),
        (lambda m: m["fingerprint"]["components"].update(weights="xyz"), "digest does not match"),
        (lambda m: m["config"].update(evil="os.system"), "unknown keys"),
        (lambda m: m.update(labels=["a", "b"]), "prototypes is"),
    ],
)
def test_edited_metadata_is_refused(tmp_path: Path, mutation, message: str) -> None:
    path = _rewrite(fit().save(tmp_path / "c.safetensors"), mutate_meta=mutation)
    with pytest.raises(ClassifierFileError, match=message):
        CalmClassifier.load(path)


@pytest.mark.parametrize(
    "mutation, message",
    [
        (lambda t: t.update(weights=t["weights"] * 2), "sum to 1"),
        (lambda t: t.update(prototypes=t["prototypes"][:, :, :4].contiguous()), "prototypes is"),
        (lambda t: t.update(heads=t["heads"] + 1000), "head indices"),
        (lambda t: t.pop("sav"), "missing tensors"),
        (lambda t: t["reliability"].fill_(float("nan")), "NaN"),
    ],
)
def test_bad_tensors_are_refused(tmp_path: Path, mutation, message: str) -> None:
    path = _rewrite(fit().save(tmp_path / "c.safetensors"), mutate_tensors=mutation)
    with pytest.raises(ClassifierFileError, match=message):
        CalmClassifier.load(path)


def test_truncated_file_is_refused(tmp_path: Path) -> None:
    path = fit().save(tmp_path / "c.safetensors")
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(ClassifierFileError, match="not a calm classifier file"):
        CalmClassifier.load(path)


def test_pickle_payload_is_never_executed(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"

    class Exploit:
        def __reduce__(self):
            return (Path.touch, (marker,))

    path = tmp_path / "evil.safetensors"
    path.write_bytes(pickle.dumps(Exploit()))
    with pytest.raises(ClassifierFileError):
        CalmClassifier.load(path)
    # a safetensors-looking header whose length points past the file
    path.write_bytes(struct.pack("<Q", 10**9) + b"{}")
    with pytest.raises(ClassifierFileError):
        CalmClassifier.load(path)
    assert not marker.exists()


def test_missing_file_names_the_path(tmp_path: Path) -> None:
    with pytest.raises(ClassifierFileError, match="no such classifier file"):
        CalmClassifier.load(tmp_path / "nope.safetensors")


@pytest.mark.parametrize("bad", [{"tau": 0}, {"scheme": "x"}, {"top_k": 0}, {"abstain": "maybe"}, {"alpha": -1}])
def test_config_validation_names_the_key(bad: dict) -> None:
    with pytest.raises(ValueError, match=next(iter(bad))):
        CalmConfig(**bad)


def test_loaded_classifier_survives_its_file_being_overwritten_in_place(tmp_path: Path) -> None:
    path = fit().save(tmp_path / "c.safetensors")
    clf = CalmClassifier.load(path)
    with open(path, "r+b") as f:  # truncate and rewrite the same inode, as `cp new old` does
        f.truncate(0)
        f.write(b"junk")
    test, _ = synthetic(2, seed=3)
    assert clf.scores(test).shape == (6, 3)


def test_auto_top_k_scores_each_clip_with_a_classifier_fitted_without_it() -> None:
    """The choice is made on the support clips only, and a clip never helps choose for itself:
    each candidate's count must equal an explicit refit on the other clips."""
    feats, labels = synthetic(3, common=4.0)
    names = ["a", "b", "c"]
    clf = CalmClassifier.fit(feats, labels, names, LAYOUT, FP, CalmConfig(top_k="auto"))
    counts = clf.info["top_k_leave_one_out_correct"]
    assert sorted(map(int, counts)) == [5, 10, 20, 24]
    for k, got in counts.items():
        correct = 0
        for i in range(len(labels)):
            rest = torch.arange(len(labels)) != i
            other = CalmClassifier.fit(feats[rest], labels[rest], names, LAYOUT, FP, CalmConfig(top_k=int(k)))
            correct += other.predict(feats[i : i + 1])[0].best == names[int(labels[i])]
        assert correct == got, k
