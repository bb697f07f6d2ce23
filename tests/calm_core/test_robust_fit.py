"""`calm fit` with conditioning and augmented support, `calm add` on such a classifier, and `calm calibrate`,
as real subprocesses on the tiny model."""

import json
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from calm_core.audio.augment import recipe_channels
from calm_core.audio.preprocessing import Preprocessing
from calm_core.backbones import load_backbone
from calm_core.evaluation.metrics import detection_scores
from calm_core.features import FeatureStore
from calm_core.method.calibration import far_threshold
from calm_core.method.classifier import CalmClassifier
from calm_core.testing import write_tone_dataset

from .test_add import same_classifier, write_voice
from .test_cli import calm

COPIES = 1 + len(recipe_channels("channels"))


@pytest.fixture(scope="module")
def augmented(tiny_model_dir: Path, tone_sets: dict[str, Path], tmp_path_factory: pytest.TempPathFactory):
    work = tmp_path_factory.mktemp("augmented")
    out, cache = work / "aug.calm.safetensors", work / "cache"
    proc = calm("fit", "--model", str(tiny_model_dir), "--support", str(tone_sets["support"]), "--out", str(out),
                "--cache-dir", str(cache), "--augment", "channels", "--top-k", "6", "--positive", "siren",
                "--conditioning", "sound")  # fmt: skip
    return out, cache, json.loads(proc.stdout)


def test_fit_extracts_every_copy_and_records_its_preprocessing(augmented) -> None:
    out, _, summary = augmented
    assert summary["support"] == 20 and summary["cache"] == {"hits": 0, "misses": 20 * COPIES}
    assert summary["conditioning"] == "sound" and summary["augmentation"] == "channels"
    info = CalmClassifier.load(out).info
    assert (info["conditioning"], info["augmentation"], info["channel"]) == ("sound", "channels", "none")
    # the threshold comes from grouped leave-one-out: one score per recording, not per copy
    assert info["decision"]["n_positive"] + info["decision"]["n_negative"] == 20


def test_add_refits_from_cached_copies_like_a_fit_from_scratch(augmented, tiny_model_dir, tone_sets, tmp_path) -> None:
    out, cache, _ = augmented
    new = write_voice(tmp_path / "new", (170.0, 210.0))
    added = tmp_path / "added.calm.safetensors"
    summary = json.loads(calm("add", "--classifier", str(out), "--label", "voice", *map(str, new), "--out",
                              str(added), "--json").stdout)  # fmt: skip
    assert summary["features"] == {"from_cache": 20 * COPIES, "computed": 2 * COPIES}
    support = tmp_path / "support"
    for f in tone_sets["support"].rglob("*.wav"):
        (support / f.parent.name).mkdir(parents=True, exist_ok=True)
        (support / f.parent.name / f.name).symlink_to(f)
    (support / "voice").mkdir()
    for f in new:
        (support / "voice" / f.name).symlink_to(f)
    scratch = tmp_path / "scratch.calm.safetensors"
    calm("fit", "--model", str(tiny_model_dir), "--support", str(support), "--out", str(scratch),
         "--cache-dir", str(cache), "--augment", "channels", "--top-k", "6", "--positive", "siren",
         "--conditioning", "sound", "--combiner", "probe")  # fmt: skip
    a, b = CalmClassifier.load(added), CalmClassifier.load(scratch)
    # combiner auto: the vote at the fit, the probe once clips were taught, as if fitted with --combiner probe
    assert a.config.combiner == "auto" and a.info["combiner"] == b.info["combiner"] == "probe"
    assert a.probe is not None and b.probe is not None and torch.equal(a.probe.weight, b.probe.weight)
    b.config = a.config
    b.info["fit"] = a.info["fit"]  # the clips' recorded paths differ (symlinks), nothing else may
    same_classifier(a, b)


def test_conditioning_defaults_sound_labels_on_detectors_and_the_paper_preset_off(tiny_model_dir, tone_sets,
                                                                                   tmp_path) -> None:  # fmt: skip
    def fit(*options: str) -> dict:
        out = str(tmp_path / "c.calm.safetensors")
        args = ["--model", str(tiny_model_dir), "--support", str(tone_sets["support"]), "--out", out, "--no-cache"]
        return json.loads(calm("fit", *args, *options).stdout)

    assert (fit()["conditioning"], fit()["augmentation"]) == ("sound", "none")
    assert fit("--preset", "paper")["conditioning"] == "none"
    assert fit("--positive", "siren")["conditioning"] == "none"  # spoof-like detectors: level and edges are evidence


def test_calibrate_sets_the_threshold_from_the_sites_genuine_clips(augmented, tiny_model_dir, tmp_path) -> None:
    out, cache, _ = augmented
    site = write_tone_dataset(tmp_path / "site", {"hum": 120.0, "beep": 1000.0, "whistle": 2600.0}, per_class=10)
    calibrated = tmp_path / "site.calm.safetensors"
    summary = json.loads(calm("calibrate", "--classifier", str(out), "--genuine", str(site), "--far", "0.1",
                              "--out", str(calibrated), "--cache-dir", str(cache)).stdout)  # fmt: skip
    # The threshold is recomputed here from the same clips, in this process.
    clf = CalmClassifier.load(calibrated)
    files = sorted(p for p in site.rglob("*.wav"))
    feats = FeatureStore(load_backbone(tiny_model_dir), None, 4, Preprocessing.of(clf.info)).extract(files)
    scores = detection_scores(clf, feats, "siren")["calm"]
    assert clf.info["decision"]["threshold"] == far_threshold(scores, 0.1) == summary["new_threshold"]
    assert summary["n"] == 30 and summary["flagged_at_new"] == np.mean(scores >= summary["new_threshold"]) <= 0.1
    assert summary["stored_threshold"] == CalmClassifier.load(out).info["decision"]["threshold"]
    assert clf.info["decision"]["rule"] == "far=0.1" and clf.info["decision"]["positive"] == ["siren"]


def test_calibrate_refuses_a_classifier_that_is_no_detector(tiny_model_dir, tone_sets, tmp_path) -> None:
    out = tmp_path / "plain.calm.safetensors"
    calm("fit", "--model", str(tiny_model_dir), "--support", str(tone_sets["support"]), "--out", str(out), "--no-cache")
    site = tmp_path / "site"
    site.mkdir()
    sf.write(site / "a.wav", np.zeros(16_000, np.float32), 16_000)
    proc = calm("calibrate", "--classifier", str(out), "--genuine", str(site), check=False)
    assert proc.returncode != 0 and "is not a detector (fit it with --positive CLASS" in proc.stderr


def test_calibrate_teach_puts_the_sites_genuine_clips_into_the_support(augmented, tmp_path) -> None:
    out, cache, _ = augmented
    site = write_tone_dataset(tmp_path / "site", {"hum": 130.0}, per_class=3)
    proc = calm("calibrate", "--classifier", str(out), "--genuine", str(site), "--teach", check=False)
    assert proc.returncode == 2 and "the genuine side has 3 classes (beep, hum, whistle)" in proc.stderr
    taught = tmp_path / "taught.calm.safetensors"
    summary = json.loads(calm("calibrate", "--classifier", str(out), "--genuine", str(site), "--teach", "--label",
                              "hum", "--out", str(taught), "--cache-dir", str(cache)).stdout)  # fmt: skip
    assert summary["support_before"]["hum"] + 3 == summary["support_after"]["hum"]
    clf = CalmClassifier.load(taught)
    decision = clf.info["decision"]
    assert decision["positive"] == ["siren"] and decision["scores_from"] == "leave-one-out support"
    assert decision == summary["decision"] and decision["n_negative"] == 15 + 3
