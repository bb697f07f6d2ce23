"""`calm add`: reviewed clips into a class and a refit from cached features, as a real subprocess on the tiny model."""

import json
import os
import shutil
import stat
from pathlib import Path

import pytest
import soundfile as sf
import torch

from calm_core.audio.channels import apply_channel
from calm_core.errors import ClassifierFileError, DatasetError
from calm_core.method.classifier import CalmClassifier
from calm_core.method.refit import FitRecord, add_clips
from calm_core.testing import voiced

from .test_cli import calm

TENSORS = ("heads", "prototypes", "reliability", "weights", "sav")
# Not calm's defaults anywhere: a refit that fell back to a default would show.
FIT_OPTIONS = ("--preset", "paper", "--top-k", "6", "--abstain", "margin", "--channel", "telephone",
               "--positive", "siren", "--calibrate", "far=0.25")  # fmt: skip


def same_classifier(a: CalmClassifier, b: CalmClassifier) -> None:
    """Bit-identical tensors and the same labels, settings, thresholds and records (creation time aside)."""
    for name in TENSORS:
        assert torch.equal(getattr(a, name), getattr(b, name)), name
    assert a.labels == b.labels and a.config == b.config and a.abstain_threshold == b.abstain_threshold
    assert _info(a) == _info(b)


def _info(clf: CalmClassifier) -> dict:
    """The file's info but its creation time and how many clips were taught after the fit."""
    info = {k: v for k, v in clf.info.items() if k != "created"}
    info["fit"] = {k: v for k, v in info["fit"].items() if k != "taught"}
    return info


def write_voice(folder: Path, f0s: tuple[float, ...], seed: int = 0) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i, f0 in enumerate(f0s):
        paths.append(folder / f"voice_{int(f0)}_{seed}.wav")
        sf.write(paths[-1], voiced(f0, 1.0, seed=seed + i), 16_000, subtype="PCM_16")
    return paths


@pytest.fixture(scope="module")
def fitted(tiny_model_dir: Path, tone_sets: dict[str, Path], tmp_path_factory: pytest.TempPathFactory):
    work = tmp_path_factory.mktemp("add")
    out, cache = work / "tones.calm.safetensors", work / "cache"
    calm("fit", "--model", str(tiny_model_dir), "--support", str(tone_sets["support"]), "--out", str(out),
         "--cache-dir", str(cache), *FIT_OPTIONS)  # fmt: skip
    return out, cache


def test_fit_records_what_a_refit_needs(fitted, tone_sets) -> None:
    out, cache = fitted
    record = FitRecord.from_info(CalmClassifier.load(out).info, str(out))
    assert len(record.support) == 20 and record.validation == ()
    assert {Path(c.path).parent.name == c.label for c in record.support} == {True}
    assert record.positive == ("siren",) and record.calibrate == "far=0.25" and record.cache_dir == str(cache)
    assert record.layers == 4 and record.prompt is None


def test_adding_to_an_existing_class_equals_a_fit_on_the_union(fitted, tone_sets, tiny_model_dir, tmp_path) -> None:
    out, cache = fitted
    extra = sorted((tone_sets["test"] / "hum").iterdir())[:2]
    added = tmp_path / "added.calm.safetensors"
    summary = json.loads(
        calm("add", "--classifier", str(out), "--label", "hum", *map(str, extra), "--out", str(added), "--json").stdout
    )
    assert summary["support_before"]["hum"] == 5 and summary["support_after"]["hum"] == 7
    assert summary["new_classes"] == [] and summary["features"] == {"from_cache": 20, "computed": 2}
    assert CalmClassifier.load(out).info["support_per_class"]["hum"] == 5  # --out: the original is untouched

    # `calm fit` on the same clips in the same order (the recorded ones, then the added ones).
    union = [{"path": c["path"], "label": c["label"]} for c in CalmClassifier.load(added).info["fit"]["support"]]
    assert [u["path"] for u in union[-2:]] == [str(p.resolve()) for p in extra]
    manifest = tmp_path / "union.json"
    manifest.write_text(json.dumps(union))
    refit = tmp_path / "union.calm.safetensors"
    calm("fit", "--model", str(tiny_model_dir), "--support", str(manifest), "--out", str(refit),
         "--cache-dir", str(cache), *FIT_OPTIONS)  # fmt: skip
    same_classifier(CalmClassifier.load(added), CalmClassifier.load(refit))
    assert not torch.equal(CalmClassifier.load(added).prototypes, CalmClassifier.load(out).prototypes)


def test_no_new_clips_or_the_same_clips_again_give_the_identical_classifier(fitted, tone_sets, tmp_path) -> None:
    out, _ = fitted
    again = tmp_path / "again.calm.safetensors"
    proc = calm("add", "--classifier", str(out), "--out", str(again), "--json")
    summary = json.loads(proc.stdout)
    assert summary["features"] == {"from_cache": 20, "computed": 0} and summary["added"] == []
    same_classifier(CalmClassifier.load(out), CalmClassifier.load(again))

    hums = sorted((tone_sets["support"] / "hum").iterdir())
    copy = tmp_path / "copy_of_hum_00.wav"  # other name, same content: still a duplicate
    shutil.copy(hums[0], copy)
    proc = calm("add", "--classifier", str(out), "--label", "hum", *map(str, hums), str(copy), "--out", str(again))
    same_classifier(CalmClassifier.load(out), CalmClassifier.load(again))
    assert proc.stdout.count("not added twice") == len(hums) + 1 and "hum: 5 -> 5 support clips" in proc.stdout


def test_a_new_class_appears_and_labels_its_sound(fitted, backbone, tmp_path) -> None:
    out, _ = fitted
    voices = write_voice(tmp_path / "voice", (140.0, 150.0, 160.0))
    added = tmp_path / "voice.calm.safetensors"
    proc = calm("add", "--classifier", str(out), "--label", "voice", *map(str, voices), str(voices[0]),
                "--out", str(added))  # fmt: skip
    assert "voice: 0 -> 3 support clips (new class)" in proc.stdout and "given twice" in proc.stdout
    assert "systemctl reload calmd" in proc.stdout or "systemctl restart calmd" in proc.stdout
    clf = CalmClassifier.load(added)
    assert clf.labels == ["beep", "hum", "siren", "voice", "whistle"]
    assert clf.info["decision"]["positive"] == ["siren"]  # the detector stays a siren detector, recalibrated
    clip = apply_channel(voiced(145.0, 1.0, seed=50), "telephone")  # a voice it has not heard
    assert clf.predict(backbone.head_activations([clip]))[0].best == "voice"


def test_a_clip_in_another_class_or_a_bad_label_is_refused(fitted, tone_sets, tmp_path) -> None:
    out, _ = fitted
    beep = sorted((tone_sets["support"] / "beep").iterdir())[0]
    proc = calm("add", "--classifier", str(out), "--label", "hum", str(beep), "--out", str(tmp_path / "x"),
                check=False)  # fmt: skip
    assert proc.returncode == 2 and f"same content as support clip {beep.resolve()}" in proc.stderr
    assert "which is in class 'beep', not 'hum'" in proc.stderr
    proc = calm("add", "--classifier", str(out), "--label", "unknown", str(beep), check=False)
    assert proc.returncode == 2 and "--label 'unknown'" in proc.stderr
    assert not (tmp_path / "x").exists()


def test_a_saved_detection_says_what_it_was_detected_as(fitted, tone_sets, tmp_path) -> None:
    out, _ = fitted
    detection = tmp_path / "clips" / "front-door-20260101T120000Z.flac"
    detection.parent.mkdir()
    sf.write(detection, voiced(200.0, 1.2, seed=7), 16_000, format="FLAC")
    detection.with_suffix(".json").write_text(json.dumps({"stream": "front-door", "label": "siren", "score": 0.8}))
    proc = calm("add", "--classifier", str(out), "--label", "hum", str(detection), "--out", str(tmp_path / "d"))
    assert f"{detection}: was siren (detected on front-door), now hum" in proc.stdout


def counting(backbone, calls: list[int], seen: list[int]):
    """The real tiny backbone, counting the clips that go through it and how it was opened."""

    class Counting:
        layout, loaded_layers, fingerprint, name = (backbone.layout, backbone.loaded_layers, backbone.fingerprint,
                                                    backbone.name)  # fmt: skip

        def head_activations(self, clips, exit_layer=None):
            seen.append(len(clips))
            return backbone.head_activations(clips, exit_layer)

    def open_backbone(load_layers: int):
        calls.append(load_layers)
        return Counting()

    return open_backbone


def test_adding_a_clip_runs_the_model_on_that_clip_only(fitted, backbone, tmp_path) -> None:
    out, cache = fitted
    clf = CalmClassifier.load(out)
    calls: list[int] = []
    seen: list[int] = []
    new = write_voice(tmp_path / "once", (333.0,), seed=11)
    result = add_clips(clf, new, "hum", open_backbone=counting(backbone, calls, seen), cache_dir=cache)
    assert calls == [4] and sum(seen) == 1  # 20 recorded clips from the cache, 1 forward of 1 clip
    assert (result.from_cache, result.computed) == (20, 1) and result.after["hum"] == 6

    # One clip of a new class cannot be calibrated by leave-one-out: refused before the model is loaded.
    calls.clear(), seen.clear()
    with pytest.raises(DatasetError, match=r"needs 2 clips in every class; \['voice'\] would have 1"):
        add_clips(clf, new, "voice", open_backbone=counting(backbone, calls, seen), cache_dir=cache)
    assert calls == [] and seen == []

    calls.clear(), seen.clear()
    result = add_clips(clf, [], None, open_backbone=counting(backbone, calls, seen), cache_dir=cache)
    assert calls == [] and seen == []  # nothing new: the model is not even loaded


def test_a_lost_cache_recomputes_from_the_clips_and_a_moved_clip_too_is_named(
    tiny_model_dir: Path, tone_sets, backbone, tmp_path
) -> None:
    support = tmp_path / "support"
    for name in ("hum", "beep"):
        (support / name).mkdir(parents=True)
        for clip in sorted((tone_sets["support"] / name).iterdir())[:2]:
            shutil.copy(clip, support / name / clip.name)
    out = tmp_path / "small.calm.safetensors"
    calm("fit", "--model", str(tiny_model_dir), "--support", str(support), "--out", str(out),
         "--cache-dir", str(tmp_path / "cache"))  # fmt: skip
    clf = CalmClassifier.load(out)
    calls: list[int] = []
    seen: list[int] = []
    result = add_clips(clf, [], None, open_backbone=counting(backbone, calls, seen), cache_dir=tmp_path / "empty")
    assert sum(seen) == 4 and result.computed == 4
    assert any("4 recorded clips not in the feature cache" in n for n in result.notes)

    moved = support / "beep" / sorted(p.name for p in (support / "beep").iterdir())[0]
    moved.rename(tmp_path / "elsewhere.wav")
    proc = calm("add", "--classifier", str(out), "--cache-dir", str(tmp_path / "emptier"), check=False)
    assert proc.returncode == 2
    assert f"not in the feature cache {tmp_path / 'emptier'}" in proc.stderr
    assert f"{moved.resolve()} (beep; missing)" in proc.stderr and "refit from scratch with `calm fit`" in proc.stderr
    # The cache still holds it by content: with the cache the moved clip is no obstacle.
    calm("add", "--classifier", str(out), "--out", str(tmp_path / "ok.calm.safetensors"))


def test_a_classifier_without_a_support_record_is_refused_with_the_fix(fitted, backbone, tmp_path) -> None:
    out, cache = fitted
    clf = CalmClassifier.load(out)
    del clf.info["fit"]
    with pytest.raises(ClassifierFileError, match="records no support set .* refit it once with `calm fit`"):
        add_clips(clf, [], None, open_backbone=counting(backbone, [], []), cache_dir=cache, source="old.safetensors")
    with pytest.raises(DatasetError, match="no such audio file"):
        add_clips(CalmClassifier.load(out), [tmp_path / "nope.wav"], "hum", open_backbone=counting(backbone, [], []),
                  cache_dir=cache)  # fmt: skip


def test_replacing_in_place_keeps_the_files_mode_and_owner(fitted, tmp_path) -> None:
    """calmd runs as its own user: the file it reads must stay readable to it after `calm add` replaces it."""
    out, _ = fitted
    live = tmp_path / "live.calm.safetensors"
    shutil.copy(out, live)
    os.chmod(live, 0o640)
    owner = (65534, 65534) if os.geteuid() == 0 else (os.geteuid(), os.getegid())  # nobody, where root may
    os.chown(live, *owner)
    before = live.stat().st_ino
    calm("add", "--classifier", str(live))
    st = live.stat()
    assert st.st_ino != before  # a new file renamed over the old one, not the old one rewritten
    assert stat.S_IMODE(st.st_mode) == 0o640 and (st.st_uid, st.st_gid) == owner
    assert [p.name for p in tmp_path.iterdir()] == [live.name]  # no temporary file left behind
    same_classifier(CalmClassifier.load(out), CalmClassifier.load(live))

    fresh = tmp_path / "fresh.calm.safetensors"  # a new file: the usual mode under the umask, not 0600
    calm("add", "--classifier", str(live), "--out", str(fresh))
    umask = os.umask(0o022)
    os.umask(umask)
    assert stat.S_IMODE(fresh.stat().st_mode) == 0o666 & ~umask


def test_a_new_kind_of_attack_joins_the_positive_group(fitted, backbone, tmp_path) -> None:
    out, _ = fitted
    voices = write_voice(tmp_path / "voice", (140.0, 150.0, 160.0))
    added = tmp_path / "voice.calm.safetensors"
    proc = calm("add", "--classifier", str(out), "--label", "voice", "--positive", *map(str, voices),
                "--out", str(added))  # fmt: skip
    assert "detects siren + voice" in proc.stdout
    clf = CalmClassifier.load(added)
    assert clf.info["decision"]["positive"] == ["siren", "voice"]
    assert FitRecord.from_info(clf.info, "x").positive == ("siren", "voice")
    # the threshold was set again, from leave-one-out scores of the group against the rest
    assert clf.info["decision"]["n_positive"] == 8 and clf.info["decision"]["scores_from"] == "leave-one-out support"


def test_positive_needs_a_detector_and_a_label(fitted, tone_sets, tmp_path) -> None:
    out, _ = fitted
    proc = calm("add", "--classifier", str(out), "--positive", check=False)
    assert proc.returncode == 2 and "--positive puts a class into the positive group: give --label NAME" in proc.stderr
