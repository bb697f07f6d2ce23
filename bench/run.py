"""calm benchmarks: every figure a ratio or breakdown measured in the same run.

    python bench/run.py [--quick] [--out docs/performance.md]          # CPU suite
    python bench/run.py --device cuda --model /path/to/Qwen2-Audio-7B-Instruct   # GPU suite

Models: `tiny` (the test model), `medium` (random weights with Qwen2-Audio's widths: audio
encoder d=1280, language model d=2048/16 heads, vocabulary 156k, fewer layers, so it fits a
2-core CPU), and `whisper` (the bundled pretrained Whisper tiny.en). Results go to a Markdown
report and a JSON file beside it.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from calm_core.backbones import LoadOptions, load_backbone  # noqa: E402
from calm_core.testing import make_tiny_qwen2_audio, tone, voiced  # noqa: E402

CACHE = Path.home() / ".cache" / "calm" / "bench"


def median_time(fn: Any, repeat: int = 3, warmup: int = 1) -> float:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def model_dir(name: str) -> str:
    if name == "whisper":
        return "bundled:whisper-tiny.en"
    out = CACHE / name
    if not (out / "config.json").is_file():
        if name == "tiny":
            make_tiny_qwen2_audio(out)
        else:  # Qwen2-Audio widths, fewer layers
            make_tiny_qwen2_audio(
                out, n_layers=12, hidden=2048, n_heads=16, intermediate=5504, vocab_size=156_032,
                audio_layers=8, audio_dim=1280, audio_heads=20, save_dtype=torch.bfloat16,
            )  # fmt: skip
    return str(out)


# ---- 1. early exit ---------------------------------------------------------------------------
def bench_early_exit(name: str, device: str = "cpu", dtype: str = "fp32") -> dict[str, Any]:
    bb = load_backbone(model_dir(name), LoadOptions(device=device, dtype=dtype))  # type: ignore[arg-type]
    clips = [voiced(140.0, 2.0)]
    n = bb.layout.n_layers
    sync = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)

    def timed(fn: Any) -> float:
        def run() -> None:
            fn()
            sync()

        return median_time(run)

    rows = []
    exits = sorted({0, n // 4 - 1, n // 2 - 1, 3 * n // 4 - 1, n - 1} - {-1})
    if hasattr(bb, "decoder"):
        # Qwen2-Audio: the same embeddings through the language model; the full forward also
        # applies the vocabulary projection to every position, as the stock model does.
        embeds, mask, last = bb.decoder.embeddings([bb.audio_tokens(c) for c in clips])
        hidden = bb.model.config.text_config.hidden_size
        vocab = bb.model.config.text_config.vocab_size
        lm_head = torch.nn.Linear(hidden, vocab, bias=False, device=bb.device, dtype=embeds.dtype)

        def full() -> None:
            with torch.inference_mode():
                out = bb.model.language_model(inputs_embeds=embeds, attention_mask=mask, use_cache=False)
                lm_head(out.last_hidden_state)

        t_full = timed(full)
        with torch.inference_mode():
            t_lm = timed(lambda: bb.model.language_model(inputs_embeds=embeds, attention_mask=mask, use_cache=False))
            t_head = timed(lambda: lm_head(torch.zeros(embeds.shape[1], hidden, device=bb.device, dtype=embeds.dtype)))
        for e in exits:
            with torch.inference_mode():
                t = timed(lambda e=e: bb.decoder.language_heads(embeds, mask, last, e))
            rows.append(
                {"exit_layer": e, "seconds": t, "ratio": t / t_full, "ratio_lm": t / t_lm, "ideal": (e + 1) / n}
            )
    else:  # Whisper: audio front end, encoder and decoder, all counted
        t_full, t_head = timed(lambda: bb.head_activations(clips)), 0.0
        for e in exits:
            t = timed(lambda e=e: bb.head_activations(clips, exit_layer=e))
            rows.append({"exit_layer": e, "seconds": t, "ratio": t / t_full, "ideal": (e + 1) / n})
    return {"model": name, "n_layers": n, "full_with_lm_head_s": t_full, "lm_head_s": t_head, "rows": rows}


# ---- 2. loading only the layers up to L ------------------------------------------------------
_RSS_PROBE = """
import json, sys, psutil, torch, gc
from calm_core.backbones import LoadOptions, load_backbone
p = psutil.Process()
before = p.memory_info().rss
kind, path, layers = sys.argv[1], sys.argv[2], sys.argv[3]
if kind == "stock":
    from transformers import Qwen2AudioForConditionalGeneration
    m = Qwen2AudioForConditionalGeneration.from_pretrained(path, dtype=torch.float32)
else:
    m = load_backbone(path, LoadOptions(load_layers=None if layers == "all" else int(layers)))
gc.collect()
print(json.dumps({"rss_mb": (p.memory_info().rss - before) / 2**20}))
"""


def bench_memory(name: str) -> dict[str, Any]:
    path = model_dir(name)
    bb = load_backbone(path)
    n = bb.layout.n_layers
    del bb
    rows = []
    for kind, layers in [
        ("stock", "all"),
        ("calm", "all"),
        ("calm", str(n // 2)),
        ("calm", str(n // 4)),
        ("calm", "1"),
    ]:
        out = subprocess.run(
            [sys.executable, "-c", _RSS_PROBE, kind, path, layers], capture_output=True, text=True, check=True
        ).stdout
        rows.append({"load": f"{kind}:{layers}", "rss_mb": json.loads(out.strip().splitlines()[-1])["rss_mb"]})
    base = rows[0]["rss_mb"]
    for r in rows:
        r["vs_stock"] = r["rss_mb"] / base
    return {"model": name, "n_layers": n, "rows": rows}


# ---- 3. valid-frame audio encoder ------------------------------------------------------------
def bench_valid_frames(name: str, device: str = "cpu") -> dict[str, Any]:
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "calm_core"))
    from test_qwen2_audio import stock_audio_tokens

    bb = load_backbone(model_dir(name), LoadOptions(device=device))
    rows = []
    for seconds in (0.5, 1, 2, 5, 10, 30):
        clip = tone(440.0, seconds)
        with torch.inference_mode():
            ours = bb.audio_tokens(clip)
            stock = stock_audio_tokens(bb, clip)
            t_ours = median_time(lambda c=clip: bb.audio_tokens(c), repeat=2)
            t_stock = median_time(lambda c=clip: stock_audio_tokens(bb, c), repeat=2)
        rows.append(
            {
                "seconds": seconds, "valid_s": t_ours, "padded_s": t_stock, "speedup": t_stock / t_ours,
                "max_abs_diff": float((ours - stock).abs().max()),
            }
        )  # fmt: skip
    return {"model": name, "rows": rows}


# ---- 4-6. pipeline, latency, batching --------------------------------------------------------
def _service(model: str, classifier: Path, streams: list[dict[str, Any]], **inference: Any) -> Any:
    from calmd.config import parse_config
    from calmd.service import Service

    port = _free_port()
    cfg = parse_config(
        {
            "model": {"path": model, "classifier": str(classifier)},
            "publish": {"endpoint": f"tcp://127.0.0.1:{port}", "heartbeat_s": 1.0},
            "metrics": {"enabled": False},
            "vad": {"mode": "none", "window_s": 2.0, "hop_s": 2.0},
            "inference": {"queue_size": 256, **inference},
            "streams": streams,
        }
    )
    return Service(cfg), f"tcp://127.0.0.1:{port}"


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _classifier(model: str, work: Path) -> Path:
    """A small classifier fitted now (a cached one could be stale for the model's fingerprint)."""
    from calm_core.cli import main as calm
    from calm_core.testing import write_tone_dataset

    out = work / f"{Path(model).name}.calm.safetensors"
    support = write_tone_dataset(work / "support", {"a": 300.0, "b": 900.0, "c": 2000.0}, per_class=4)
    calm(["-q", "fit", "--model", model, "--support", str(support), "--out", str(out), "--no-cache"])
    return out


def _long_wav(work: Path, seconds: int) -> Path:
    import soundfile as sf

    path = work / f"long{seconds}.wav"
    if not path.exists():
        rng = np.random.default_rng(0)
        parts = [voiced(float(rng.uniform(100, 400)), 1.0, seed=i) for i in range(seconds)]
        sf.write(path, np.concatenate(parts), 16000, subtype="PCM_16")
    return path


def bench_pipeline(model: str, work: Path) -> dict[str, Any]:
    """A file replayed as fast as possible: share of wall time outside the model forward."""
    clf = _classifier(model, work)
    wav = _long_wav(work, 120)
    service, _ = _service(model, clf, [{"id": "f", "type": "file", "path": str(wav), "realtime": False}])
    t = time.perf_counter()
    service.start()
    while not service.all_finished() or service.queue.items:
        time.sleep(0.01)
    wall = time.perf_counter() - t
    model_s = service.metrics.inference_seconds._sum.get()
    segments = service.stats["f"].segments
    service.stop(5)
    return {
        "audio_s": 120,
        "segments": segments,
        "wall_s": wall,
        "model_s": model_s,
        "overhead_share": 1 - model_s / wall,
    }


def bench_latency(model: str, work: Path, stream_counts: list[int], seconds: float) -> dict[str, Any]:
    from calmd.client import Subscriber
    from calmd.events import LabelEvent, StatusEvent

    clf = _classifier(model, work)
    wav = _long_wav(work, 120)
    rows = []
    for n in stream_counts:
        streams = [{"id": f"s{i}", "type": "file", "path": str(wav), "loop": True} for i in range(n)]
        service, endpoint = _service(model, clf, streams, batch_size=8)
        lat, status = [], None
        with Subscriber(endpoint) as sub:
            time.sleep(0.3)
            service.start()
            deadline = time.monotonic() + seconds
            while time.monotonic() < deadline:
                event = sub.receive(timeout_s=0.2)
                if isinstance(event, LabelEvent):
                    end = service.stats[event.stream].t0_wall + event.end_s  # type: ignore[operator]
                    lat.append((time.time() - end) * 1e3)
                elif isinstance(event, StatusEvent):
                    status = event
        service.stop(2)
        dropped = sum(s.dropped for s in status.streams.values()) if status else -1
        q = np.percentile(lat, [50, 95, 99]) if lat else [float("nan")] * 3
        rows.append(
            {"streams": n, "labels": len(lat), "p50_ms": q[0], "p95_ms": q[1], "p99_ms": q[2], "dropped": dropped}
        )
    return {"model": model, "seconds_per_point": seconds, "rows": rows}


def bench_batching(name: str) -> dict[str, Any]:
    bb = load_backbone(model_dir(name))
    clips = [voiced(float(100 + 20 * i), 2.0, seed=i) for i in range(8)]
    rows = []
    for size in (1, 4, 8):

        def run(s: int = size) -> None:
            for i in range(0, len(clips), s):
                bb.head_activations(clips[i : i + s])

        t = median_time(run, repeat=2)
        rows.append({"batch_size": size, "seconds": t, "segments_per_s": len(clips) / t})
    return {"model": name, "rows": rows}


def bench_nf4(name: str) -> dict[str, Any]:
    rows = {}
    clips = [voiced(140.0, 2.0)]
    feats = {}
    for dtype in ("fp32", "nf4"):
        bb = load_backbone(model_dir(name), LoadOptions(dtype=dtype))  # type: ignore[arg-type]
        params = sum(p.numel() * p.element_size() for p in bb.model.parameters()) / 2**20
        t = median_time(lambda b=bb: b.head_activations(clips), repeat=2)
        feats[dtype] = bb.head_activations(clips)
        rows[dtype] = {"seconds": t, "weights_mb": params}
        del bb
    cos = torch.nn.functional.cosine_similarity(feats["fp32"].flatten(1), feats["nf4"].flatten(1)).item()
    return {"model": name, "rows": rows, "feature_cosine": cos}


def report(results: dict[str, Any]) -> str:
    lines = [
        "# Performance", "",
        f"Command: `{results['command']}`  ", f"Machine: {results['machine']}  ", f"Date: {results['date']}", "",
    ]  # fmt: skip
    for ee in results.get("early_exit", []):
        lines += [
            f"## 1. Early exit — {ee['model']} ({ee['n_layers']} layers)", "",
            f"Full forward with the vocabulary projection: {ee['full_with_lm_head_s'] * 1e3:.1f} ms "
            f"(projection alone {ee['lm_head_s'] * 1e3:.1f} ms).", "",
            "| exit layer | time | ratio to full | ratio to all layers, no projection | ideal (L+1)/N |",
            "|---|---|---|---|---|",
        ]  # fmt: skip
        for r in ee["rows"]:
            lm = f"{r['ratio_lm']:.3f}" if "ratio_lm" in r else "—"
            lines.append(
                f"| {r['exit_layer']} | {r['seconds'] * 1e3:.1f} ms | {r['ratio']:.3f} | {lm} | {r['ideal']:.3f} |"
            )
        lines.append("")
    for mem in results.get("memory", []):
        lines += [
            f"## 2. Resident memory by layers loaded — {mem['model']}",
            "",
            "| load | RSS | vs stock |",
            "|---|---|---|",
        ]
        for r in mem["rows"]:
            lines.append(f"| {r['load']} | {r['rss_mb']:.0f} MB | {r['vs_stock']:.3f} |")
        lines.append("")
    for vf in results.get("valid_frames", []):
        lines += [
            f"## 3. Valid-frame audio encoder — {vf['model']}", "",
            "| clip | valid frames | stock 30 s padded | speed-up | max abs diff |", "|---|---|---|---|---|",
        ]  # fmt: skip
        for r in vf["rows"]:
            lines.append(
                f"| {r['seconds']} s | {r['valid_s'] * 1e3:.1f} ms | {r['padded_s'] * 1e3:.1f} ms | "
                f"{r['speedup']:.1f}x | {r['max_abs_diff']:.1e} |"
            )
        lines.append("")
    if "pipeline" in results:
        p = results["pipeline"]
        lines += [
            "## 4. Pipeline overhead (whisper, file replayed as fast as possible)", "",
            f"{p['audio_s']} s of audio, {p['segments']} segments: wall {p['wall_s']:.2f} s, model forward "
            f"{p['model_s']:.2f} s; **{p['overhead_share'] * 100:.1f} %** of wall time outside the forward.", "",
        ]  # fmt: skip
    if "latency" in results:
        lat = results["latency"]
        lines += [
            f"## 5. End-to-end latency, segment end to subscriber ({lat['model']}, real-time streams)", "",
            "| streams | labels | p50 | p95 | p99 | dropped |", "|---|---|---|---|---|---|",
        ]  # fmt: skip
        for r in lat["rows"]:
            lines.append(
                f"| {r['streams']} | {r['labels']} | {r['p50_ms']:.0f} ms | {r['p95_ms']:.0f} ms | "
                f"{r['p99_ms']:.0f} ms | {r['dropped']} |"
            )
        lines.append("")
    for b in results.get("batching", []):
        lines += [f"## 6. Batching — {b['model']}", "", "| batch | 8 segments | segments/s |", "|---|---|---|"]
        for r in b["rows"]:
            lines.append(f"| {r['batch_size']} | {r['seconds'] * 1e3:.0f} ms | {r['segments_per_s']:.1f} |")
        lines.append("")
    if "nf4" in results:
        q = results["nf4"]
        lines += [
            f"## 7. NF4 vs fp32 on CPU — {q['model']}", "", "| precision | forward | weights |", "|---|---|---|",
            *[f"| {k} | {v['seconds'] * 1e3:.0f} ms | {v['weights_mb']:.0f} MB |" for k, v in q["rows"].items()],
            "", f"Cosine similarity of all head features, NF4 vs fp32: {q['feature_cosine']:.4f}.", "",
        ]  # fmt: skip
    return "\n".join(lines)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cpu")
    p.add_argument("--model", help="with --device cuda: a Qwen2-Audio folder (7B, loaded in NF4)")
    p.add_argument("--quick", action="store_true", help="tiny and whisper models only, short latency runs")
    p.add_argument("--out", type=Path, default=Path("docs/performance.md"))
    p.add_argument("--steps", nargs="+", help="run only these sections and merge them into the existing report")
    args = p.parse_args()
    if args.device.startswith("cuda"):
        from gpu import run_gpu

        return run_gpu(args)
    work = CACHE / "work"
    work.mkdir(parents=True, exist_ok=True)
    big = [] if args.quick else ["medium"]
    results: dict[str, Any] = {
        "command": " ".join(["python", *sys.argv]),
        "machine": f"{platform.machine()}, {torch.get_num_threads()} threads, torch {torch.__version__}, CPU",
        "date": time.strftime("%Y-%m-%d"),
    }
    steps = [
        ("early_exit", lambda: [bench_early_exit(m) for m in ["tiny", *big, "whisper"]]),
        ("memory", lambda: [bench_memory(m) for m in ["tiny", *big]]),
        ("valid_frames", lambda: [bench_valid_frames(m) for m in ["tiny", *big]]),
        ("pipeline", lambda: bench_pipeline(model_dir("whisper"), work)),
        (
            "latency",
            lambda: bench_latency(model_dir("whisper"), work, [1, 4, 16, 32, 64, 96] if not args.quick else [1, 4], 15),
        ),
        ("batching", lambda: [bench_batching(m) for m in ["tiny", *big, "whisper"]]),
        ("nf4", lambda: bench_nf4("medium" if big else "tiny")),
    ]
    json_out = args.out.with_suffix(".json")
    if args.steps:
        results = {**json.loads(json_out.read_text()), **results}
        steps = [(k, fn) for k, fn in steps if k in args.steps]
    for key, fn in steps:
        t = time.perf_counter()
        results[key] = fn()
        print(f"{key}: {time.perf_counter() - t:.1f} s", file=sys.stderr, flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(report(results) + "\n")
    json_out.write_text(json.dumps(results, indent=1, default=float))
    print(report(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
