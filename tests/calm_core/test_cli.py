"""The `calm` command as a real subprocess on the tiny model and a separable tone set."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from calm_core.method.classifier import CalmClassifier

ENV = {**os.environ, "HF_HUB_OFFLINE": "1"}


def calm(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(
        [sys.executable, "-m", "calm_core.cli", "-q", *args], capture_output=True, text=True, env=ENV, timeout=300
    )
    if check and proc.returncode != 0:
        raise AssertionError(f"calm {' '.join(args)} failed ({proc.returncode}):\n{proc.stderr}")
    return proc


@pytest.fixture(scope="module")
def fitted(tiny_model_dir: Path, tone_sets: dict[str, Path], tmp_path_factory: pytest.TempPathFactory):
    work = tmp_path_factory.mktemp("cli")
    out = work / "tones.safetensors"
    cache = work / "cache"
    proc = calm(
        "fit",
        "--model",
        str(tiny_model_dir),
        "--support",
        str(tone_sets["support"]),
        "--out",
        str(out),
        "--top-k",
        "6",
        "--cache-dir",
        str(cache),
    )
    return out, cache, json.loads(proc.stdout)


def test_fit_reports_its_reliability_and_an_exit_layer(fitted) -> None:
    out, _, summary = fitted
    assert out.is_file()
    assert summary["preset"] == "calm" and summary["top_k"] == 6
    assert summary["reliability"] == "support separation + leave-one-out F1" and summary["support"] == 20
    assert 0 <= summary["exit_layer"] < summary["n_layers"] == 4
    assert summary["cache"] == {"hits": 0, "misses": 20}


def test_eval_json_shows_calm_and_sav_well_above_chance(fitted, tone_sets) -> None:
    out, cache, _ = fitted
    result = json.loads(
        calm(
            "eval", "--classifier", str(out), "--data", str(tone_sets["test"]), "--json", "--cache-dir", str(cache)
        ).stdout
    )
    assert result["n"] == 20
    assert result["calm"]["accuracy"] >= 0.6 and result["sav"]["accuracy"] >= 0.5  # chance is 0.25
    assert len(result["calm"]["confusion"]) == 4 and sum(map(sum, result["sav"]["confusion"])) == 20


def test_refit_reuses_cached_features(fitted, tiny_model_dir, tone_sets, tmp_path: Path) -> None:
    _, cache, _ = fitted
    proc = calm(
        "fit",
        "--model",
        str(tiny_model_dir),
        "--support",
        str(tone_sets["support"]),
        "--val",
        str(tone_sets["val"]),
        "--out",
        str(tmp_path / "c.safetensors"),
        "--scheme",
        "prob_softmax",
        "--cache-dir",
        str(cache),
    )
    summary = json.loads(proc.stdout)
    assert summary["cache"]["hits"] >= 20 and summary["reliability"] == "validation"


def test_classify_json_gives_label_top3_and_exit_layer(fitted, tone_sets) -> None:
    out, _, summary = fitted
    files = sorted((tone_sets["test"] / "whistle").glob("*.wav"))[:2]
    lines = calm("classify", "--classifier", str(out), "--json", *map(str, files)).stdout.splitlines()
    rows = [json.loads(line) for line in lines]
    assert len(rows) == 2
    for row in rows:
        assert row["label"] in {"hum", "beep", "whistle", "siren"}
        assert len(row["top3"]) == 3 and row["top3"][0]["label"] == row["label"]
        assert row["sub_class"] == row["label"]  # no sub-classes here: the class itself
        assert row["exit_layer"] == summary["exit_layer"] and row["timing_ms"]["forward"] > 0


def test_heads_writes_a_png(fitted, tmp_path: Path) -> None:
    out, _, _ = fitted
    png = tmp_path / "heads.png"
    calm("heads", "--classifier", str(out), "--out", str(png))
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_wrong_model_is_refused_with_the_reason(fitted, tone_sets, tmp_path: Path) -> None:
    from calm_core.testing import make_tiny_qwen2_audio

    other = make_tiny_qwen2_audio(tmp_path / "other", seed=5)
    out, _, _ = fitted
    proc = calm(
        "classify",
        "--classifier",
        str(out),
        "--model",
        str(other),
        str(next((tone_sets["test"] / "hum").glob("*.wav"))),
        check=False,
    )
    assert proc.returncode == 2
    assert "built on other features" in proc.stderr and "weights" in proc.stderr


def test_bad_audio_names_the_file(fitted, tmp_path: Path) -> None:
    out, _, _ = fitted
    bad = tmp_path / "broken.wav"
    bad.write_bytes(b"RIFF1234WAVEjunk")
    proc = calm("classify", "--classifier", str(out), str(bad), check=False)
    assert proc.returncode == 2 and "broken.wav" in proc.stderr


def test_make_tiny_model_module_entry(tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "calm_core.testing", "make-tiny-model", str(tmp_path / "m"), "--layers", "3"],
        capture_output=True,
        text=True,
        env=ENV,
        timeout=120,
        check=True,
    )
    assert json.loads(proc.stdout.strip().splitlines()[-1])["model_dir"] == str(tmp_path / "m")
    assert json.loads((tmp_path / "m" / "config.json").read_text())["text_config"]["num_hidden_layers"] == 3


def test_paper_preset_and_overrides(fitted, tiny_model_dir, tone_sets, tmp_path: Path) -> None:
    _, cache, _ = fitted
    out = tmp_path / "paper.safetensors"
    args = ["fit", "--model", str(tiny_model_dir), "--support", str(tone_sets["support"]), "--out", str(out)]
    summary = json.loads(calm(*args, "--preset", "paper", "--top-k", "3", "--cache-dir", str(cache)).stdout)
    assert summary["preset"] == "paper" and summary["reliability"] == "support (in-sample)" and summary["top_k"] == 3
    config = CalmClassifier.load(out).config
    assert (config.tau, config.tau_w, config.scheme, config.top_k) == (0.03, 0.5, "margin_clamped", 3)


def test_eval_positive_reports_detection_metrics_for_calm_and_sav(fitted, tone_sets) -> None:
    out, cache, _ = fitted
    args = ("eval", "--classifier", str(out), "--data", str(tone_sets["test"]), "--cache-dir", str(cache))
    result = json.loads(calm(*args, "--json", "--positive", "beep").stdout)["detection"]
    assert result["positive"] == "beep" and result["n_positive"] == 5
    assert result["costs"] == {"c_miss": 1.0, "c_fa": 10.0, "p_spoof": 0.05}
    for method in ("calm", "sav"):
        m = result[method]
        assert 0.5 < m["auc"] <= 1 and 0 <= m["eer"] < 0.5 and 0 <= m["min_dcf"] <= 1
    text = calm(*args, "--positive", "beep").stdout
    assert "detection of 'beep'" in text and "EER threshold" in text and "minDCF" in text


def test_eval_positive_that_is_not_a_class_is_refused(fitted, tone_sets) -> None:
    out, cache, _ = fitted
    proc = calm("eval", "--classifier", str(out), "--data", str(tone_sets["test"]), "--cache-dir", str(cache),
                "--positive", "spoof", check=False)  # fmt: skip
    assert proc.returncode != 0 and "--positive 'spoof' is not a class" in proc.stderr


def test_eval_per_call_and_det_plot(fitted, tone_sets, backbone, tmp_path: Path) -> None:
    import matplotlib.image
    import numpy as np

    from calm_core.audio.clipsets import load_examples
    from calm_core.audio.preprocessing import Preprocessing
    from calm_core.features import FeatureStore
    from calm_core.method.detection import detection_report

    out, cache, _ = fitted
    clips = load_examples(tone_sets["test"])  # 5 per class: calls of 2, 2 and 1 clips
    rows = [f"{e.path},{e.label},{e.label}-{i % 5 // 2}" for i, e in enumerate(clips)]
    manifest = tmp_path / "calls.csv"
    manifest.write_text("path,label,call\n" + "\n".join(rows) + "\n")
    png = tmp_path / "det.png"
    args = ("eval", "--classifier", str(out), "--data", str(manifest), "--cache-dir", str(cache), "--positive", "beep")
    result = json.loads(calm(*args, "--json", "--plot", str(png)).stdout)["detection"]
    per = result["per_call"]
    assert (per["n"], per["n_positive"]) == (12, 3) and result["plot"] == str(png)

    clf = CalmClassifier.load(out)
    # the clips as calm eval prepares them: through the classifier's own preprocessing (conditioning)
    store = FeatureStore(backbone, cache, 4, Preprocessing.of(clf.info))
    feats = store.extract([e.path for e in clips], progress=False)
    s = clf.scores(feats).double().numpy()
    pos = clf.labels.index("beep")
    clip_scores = np.log((s[:, pos] + 1e-6) / (np.delete(s, pos, 1).max(1) + 1e-6))
    calls = sorted({r.rsplit(",", 1)[1] for r in rows})
    means = np.array([np.mean([x for x, r in zip(clip_scores, rows) if r.endswith("," + c)]) for c in calls])
    expected = detection_report(means, np.array([c.startswith("beep-") for c in calls]))
    assert per["calm"] == pytest.approx(expected, abs=1e-4)

    image = matplotlib.image.imread(png)
    assert png.stat().st_size > 10_000 and image.shape[0] > 300 and image.shape[1] > 300
    colours = np.unique((image[..., :3] * 255).astype(np.uint8).reshape(-1, 3), axis=0)
    assert len(colours) > 20  # four curves, markers, grid and text, not a blank canvas
    text = calm(*args, "--plot", str(tmp_path / "det.svg")).stdout
    assert "per call (12 calls, 3 positive" in text and (tmp_path / "det.svg").is_file()
    assert (tmp_path / "det-confusion.svg").is_file() and f"plots: {tmp_path / 'det-confusion.svg'}" in text


def test_eval_plot_draws_the_confusion_matrices(fitted, tone_sets, tmp_path: Path) -> None:
    import matplotlib.image
    import numpy as np

    out, cache, _ = fitted
    png = tmp_path / "confusion.png"
    proc = calm("eval", "--classifier", str(out), "--data", str(tone_sets["test"]), "--cache-dir", str(cache),
                "--json", "--plot", str(png))  # fmt: skip
    result = json.loads(proc.stdout)
    assert result["confusion_plot"] == str(png) and "detection" not in result
    image = matplotlib.image.imread(png)
    assert image.shape[0] > 300 and image.shape[1] > 600  # two matrices side by side
    colours = np.unique((image[..., :3] * 255).astype(np.uint8).reshape(-1, 3), axis=0)
    assert len(colours) > 20  # shaded cells, counts and labels, not a blank canvas
