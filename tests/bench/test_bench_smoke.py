"""Every benchmark runs end to end on tiny inputs, so that an internal API change breaks a test here
instead of the next report. They measure nothing at this size; the assertions are that each step ran,
wrote its section, and the process exited cleanly (no abort at interpreter exit)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.slow


def run_bench(args: list[str], tmp_path: Path, timeout: int) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    done = subprocess.run([sys.executable, *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)
    assert done.returncode == 0, f"{args[0]} exited {done.returncode}:\n{done.stderr[-4000:]}"
    # A daemon thread or C++ pool still running at exit aborts with this (and exit status 134).
    assert "terminate called" not in done.stderr
    return done


def test_every_performance_step_runs_and_writes_its_section(tmp_path: Path) -> None:
    out = tmp_path / "perf.md"
    done = run_bench(["bench/run.py", "--smoke", "--out", str(out)], tmp_path, timeout=900)
    steps = ["early_exit", "memory", "valid_frames", "pipeline", "latency", "batching", "nf4", "faster"]
    for step in steps:
        assert f"{step}: " in done.stderr, f"step {step} did not report"
    results = json.loads(out.with_suffix(".json").read_text())
    assert set(steps) <= set(results) and set(results["runs"]) == set(steps)
    latency = results["latency"]["rows"][0]
    assert latency["streams"] == 2 and latency["labels"] > 0 and latency["dropped"] == 0
    report = out.read_text()
    for number in range(1, 9):
        assert f"\n## {number}. " in report


def test_accuracy_bench_runs_on_a_small_draw(tmp_path: Path) -> None:
    out = tmp_path / "accuracy.md"
    run_bench(["bench/accuracy.py", "--models", "bundled:whisper-tiny.en", "--sets", "instruments",
               "--shots", "2", "--draws", "2", "--out", str(out)], tmp_path, timeout=900)  # fmt: skip
    results = json.loads(out.with_suffix(".json").read_text())
    (key,) = results
    methods = results[key]["shots"]["2"]["methods"]
    assert {"calm", "paper", "sav", "probe"} <= set(methods)


def test_spoof_bench_runs_on_a_small_draw(tmp_path: Path) -> None:
    out = tmp_path / "spoof.md"
    args = ["bench/spoof.py", "--models", "bundled:whisper-tiny.en", "--shots", "2", "--draws", "2",
            "--figure-model", "whisper-tiny.en", "--figure-shots", "2", "--out", str(out)]  # fmt: skip
    run_bench(args, tmp_path, timeout=900)
    results = json.loads(out.with_suffix(".json").read_text())
    assert "seen" in results["whisper-tiny.en"]["conditions"]
    assert (tmp_path / "spoof-det.png").stat().st_size > 1000


def test_gpu_sizing_runs_at_reduced_width_on_cpu(tmp_path: Path) -> None:
    # Through the device script, as the GPU machine runs it: calm not installed, only importable from the tree.
    families = ["qwen2-audio", "qwen2.5-omni", "audio-flamingo-3"]
    args = f"--family {' '.join(families)} --scale 32 --repeats 1 --streams 2 --stream-seconds 2"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OUT": str(tmp_path), "DEVICE": "cpu", "PYTHON": sys.executable,
           "SIZING_ARGS": args}  # fmt: skip
    done = subprocess.run(["sh", "bench/device.sh"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, f"bench/device.sh exited {done.returncode}:\n{done.stderr[-4000:]}"
    assert "terminate called" not in done.stderr and "installing from" not in done.stdout  # nothing missing here
    result = json.loads((tmp_path / "sizing.json").read_text())
    assert list(result["families"]) == families
    for family in families:
        found = result["families"][family]
        by_precision = {r["precision"]: r for r in found["runs"]}
        assert set(by_precision) == {"fp32", "nf4"} and found["skipped"] == [], family
        for run in by_precision.values():
            assert [r["exit_layer"] for r in run["rows"]] == [0, 2, 3]
            assert [t["batch"] for t in run["throughput"]] == [1, 4, 16, 64]
            assert all(r["latency_ms"] > 0 for r in run["rows"]) and set(run["faster"]) == {
                "prefix cache",
                "batched encoder",
            }
            calmd = run["calmd"]  # calmd itself on the sizing model: 2 streams of 2 s windows for 2 s
            assert calmd["exit_layer"] <= 3 and [r["streams"] for r in calmd["rows"]] == [2]
            assert calmd["rows"][0]["labels"] >= 1 and calmd["rows"][0]["dropped"] == 0
        assert f"## {family}" in (tmp_path / "sizing.md").read_text()
    text = result["families"]["qwen2-audio"]["widths"]["text"]
    assert (text["hidden_size"], text["intermediate_size"], text["num_hidden_layers"]) == (128, 320, 4)  # 4096, 11008
    by_precision = {r["precision"]: r for r in result["families"]["qwen2-audio"]["runs"]}
    # The FLOP floor's count, by hand: q and o (128 x 128), k and v (128 x 64: 32 KV heads / 32 leave one, of
    # 64 at this width), the MLP (3 x 128 x 320) per token, attention scores and mixing 2 x n x n x 128,
    # 2 FLOPs per multiply-add, one layer at exit 0.
    row = by_precision["fp32"]["rows"][0]
    n = row["tokens"]
    assert row["flops"] == 2 * ((2 * 128 * 128 + 2 * 128 * 64 + 3 * 128 * 320) * n + 2 * n * n * 128)
    assert (tmp_path / "sizing.md").read_text().startswith("# Sizing at the public configs' widths (CPU, widths / 32)")


def test_robustness_bench_runs_on_a_small_draw(tmp_path: Path) -> None:
    out = tmp_path / "robustness.md"
    run_bench(["bench/robustness.py", "--sets", "instruments", "--shots", "2", "--draws", "2", "--limit", "1",
               "--pipelines", "calm+cond", "calm+cond+aug", "probe+cond", "--out", str(out)],
              tmp_path, timeout=900)  # fmt: skip
    (result,) = json.loads(out.with_suffix(".json").read_text()).values()
    acc = result["shots"]["2"]
    assert set(acc) == {"calm+cond", "calm+cond+aug", "probe+cond"}
    assert all(len(acc[p][s]) == 2 for p in acc for s in ("clean", "window", "far", "opus", "camera"))
    assert "| calm+cond+aug |" in out.read_text() and "calm+cond+aug: OOD" in out.read_text()


def test_calls_bench_runs_on_a_small_build(tmp_path: Path) -> None:
    out = tmp_path / "robustness.md"
    out.write_text("# kept\n")
    run_bench(["bench/calls.py", "--models", "bundled:whisper-tiny.en", "--shots", "2", "--draws", "1",
               "--per-source", "4", "--call-size", "2", "--out", str(out)], tmp_path, timeout=900)  # fmt: skip
    text = out.read_text()
    assert text.startswith("# kept\n") and "## Calls: spoof detection out of domain" in text
    rows = json.loads((tmp_path / "calls.json").read_text())["whisper-tiny.en"]["shots"]["2"]["rows"]
    assert len(rows["calm"]["call_eer"]) == 16 and len(rows["calm"]["fa_cal"]) == 16  # one per fold


def test_precision_bench_runs_on_a_small_draw(tmp_path: Path) -> None:
    out = tmp_path / "precision.md"
    run_bench(["bench/precision.py", "--sets", "instruments", "--shots", "2", "--draws", "2", "--limit", "3",
               "--repeats", "2", "--out", str(out)], tmp_path, timeout=900)  # fmt: skip
    results = json.loads(out.with_suffix(".json").read_text())
    (per_shot,) = results["sets"].values()
    r = per_shot["2"]
    assert len(r["acc"]["fp32"]) == len(r["acc"]["bf16"]) == len(r["agree"]) == 2
    assert all(0.0 <= a <= 1.0 for a in r["agree"])
    (speed,) = results["speed"].values()
    assert speed["batch"] == 8 and speed["ratio"] > 0 and speed["fp32_s"] > 0


def sizing_module():  # type: ignore[no-untyped-def]
    sys.path.insert(0, str(ROOT / "bench"))
    try:
        import gpu_sizing
    finally:
        sys.path.remove(str(ROOT / "bench"))
    return gpu_sizing


@pytest.mark.parametrize(
    ("family", "published"),
    [
        # Qwen/Qwen2-Audio-7B-Instruct's model card: 8.4B parameters in all (audio encoder, projector,
        # language model with its vocabulary projection).
        ("qwen2-audio", {"total": 8.4e9}),
        # Qwen2.5-Omni-7B's thinker and Audio Flamingo 3 decode with Qwen2.5-7B, whose model card gives
        # 6.53B parameters outside the embeddings.
        ("qwen2.5-omni", {"non_embedding": 6.53e9}),
        ("audio-flamingo-3", {"non_embedding": 6.53e9}),
    ],
)
def test_sizing_configs_have_the_published_parameter_counts(tmp_path: Path, family: str, published: dict) -> None:
    """The widths in bench/configs/ build models of the published sizes (on the meta device: no memory)."""
    import torch

    g = sizing_module()
    model_class, config = g.sized_config(family, tmp_path / family, g.widths(family, 1))
    with torch.device("meta"):
        model = model_class(config)
    language_model = model.model.language_model if hasattr(model, "model") else model.language_model
    embeddings = language_model.embed_tokens.weight.numel()
    counted = {
        "total": sum(p.numel() for p in model.parameters()),
        "non_embedding": sum(p.numel() for p in language_model.parameters()) - embeddings,
    }
    for what, value in published.items():
        assert abs(counted[what] / value - 1) < 0.005, f"{family}: {what} {counted[what] / 1e9:.3f}B"


def test_sizing_configs_match_the_widths_transformers_documents() -> None:
    """Qwen2.5-Omni-7B's thinker and Audio Flamingo 3's encoder: transformers' config defaults, which it
    documents against those checkpoints, are where bench/configs/ took the widths from."""
    from transformers import AudioFlamingo3EncoderConfig, Qwen2_5OmniThinkerConfig

    g = sizing_module()
    omni, af3 = g.widths("qwen2.5-omni", 1), g.widths("audio-flamingo-3", 1)
    thinker = Qwen2_5OmniThinkerConfig()
    assert {k: getattr(thinker.audio_config, k) for k in omni["audio"]} == omni["audio"]
    assert {k: getattr(thinker.text_config, k) for k in omni["text"]} == omni["text"]
    encoder = AudioFlamingo3EncoderConfig()
    assert {k: getattr(encoder, k) for k in af3["audio"]} == af3["audio"]
    assert af3["text"] == omni["text"]  # both decode with Qwen2.5-7B


def test_site_bench_runs_on_a_small_draw(tmp_path: Path) -> None:
    out = tmp_path / "robustness.md"
    out.write_text("# kept\n\n## Later section\n")
    run_bench(["bench/adaptation.py", "--sets", "instruments", "calls", "--pipelines", "calm", "sav", "--sites",
               "far mic", "--shots", "2", "--site-clips", "0", "1", "2",
               "--draws", "2", "--limit", "2", "--per-source", "4", "--call-shots", "2", "--call-site-clips", "0",
               "2", "--call-draws", "1", "--out", str(out)], tmp_path, timeout=1200)  # fmt: skip
    text = out.read_text()
    assert text.startswith("# kept\n") and text.index("Teaching at the site") < text.index("## Later section")
    results = json.loads((tmp_path / "site.json").read_text())
    acc = results["monitor"]["instruments"]["acc"]
    assert set(acc) == {"calm", "sav"} and set(acc["calm"]) == {"clean", "far mic"}
    assert all(len(acc[p]["far mic"][m]) == 2 for p in acc for m in ("0", "1", "2"))
    rows = results["calls"]["rows"]
    assert len(rows["calm sub"]["2"]["call_eer"]) == 16 and len(rows["calm split"]["0"]["fa"]) == 16  # one per fold
    rules = rows["calm merged"]["2"]["rules"]
    assert set(rules) == {"taught only", "taught weighted", "class midpoint", "test EER"}  # stored: fa, miss
    assert all(len(r["fa"]) == len(r["miss"]) == 16 for r in rules.values()) and "rules" not in rows["sav sub"]["2"]
    assert "Where the threshold sits" in text and "| stored |" in text and "| taught only |" in text
    # Calls again with two base supports: the instruments results are kept from site.json, and reported.
    done = run_bench(["bench/adaptation.py", "--sets", "calls", "--per-source", "4", "--call-shots", "2", "3",
                      "--call-site-clips", "0", "2", "--call-draws", "1", "--sites", "far mic", "--site-clips", "0",
                      "1", "2", "--out", str(out)], tmp_path, timeout=1200)  # fmt: skip
    assert "kept from" in done.stdout and "instruments" in done.stdout
    again = json.loads((tmp_path / "site.json").read_text())
    assert again["monitor"] == results["monitor"] and set(again) == {"monitor", "calls", "calls_3"}
    text = out.read_text()
    assert "### instruments" in text and "`--call-shots 3`" in text and text.count("| taught only |") == 2
