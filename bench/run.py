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
import os
import platform
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from timing import (  # noqa: E402
    _long_wav,
    _service,
    holds,
    median_time,
    paired_ratio,
    ratio_text,
    stream_latencies,
)

from calm_core.backbones import LoadOptions, load_backbone  # noqa: E402
from calm_core.testing import make_tiny_qwen2_audio, tone, voiced  # noqa: E402

CACHE = Path.home() / ".cache" / "calm" / "bench"


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
def bench_early_exit(name: str, device: str = "cpu", dtype: str = "fp32", repeats: int = 7) -> dict[str, Any]:
    """Each exit layer timed interleaved with the full forward (A B A B ...): median ratio and spread.
    Qwen2-Audio runs the plain read-out here (no prefix cache, no last-token exit: see `faster`)."""
    bb = load_backbone(model_dir(name), LoadOptions(device=device, dtype=dtype))  # type: ignore[arg-type]
    clips = [voiced(140.0, 2.0)]
    n = bb.layout.n_layers
    sync = torch.cuda.synchronize if device.startswith("cuda") else None
    rows = []
    exits = sorted({0, n // 4 - 1, n // 2 - 1, 3 * n // 4 - 1, n - 1} - {-1})
    if hasattr(bb, "decoder"):
        # Qwen2-Audio: the same embeddings through the language model; the full forward also
        # applies the vocabulary projection to every position, as the stock model does.
        with torch.inference_mode():
            embeds, mask, last = bb.decoder.embeddings([bb.audio_tokens(c) for c in clips])
        hidden = bb.model.config.text_config.hidden_size
        vocab = bb.model.config.text_config.vocab_size
        lm_head = torch.nn.Linear(hidden, vocab, bias=False, device=bb.device, dtype=embeds.dtype)

        @torch.inference_mode()
        def full() -> None:
            out = bb.model.language_model(inputs_embeds=embeds, attention_mask=mask, use_cache=False)
            lm_head(out.last_hidden_state)

        @torch.inference_mode()
        def early(e: int) -> None:
            bb.decoder.language_heads(embeds, mask, last, e, prefix_cache=False, last_token_exit=False)

        for e in exits:
            rows.append(
                {"exit_layer": e, "ideal": (e + 1) / n, **paired_ratio(lambda e=e: early(e), full, repeats, sync=sync)}
            )
    else:  # Whisper: audio front end, encoder and decoder, all counted
        for e in exits:
            r = paired_ratio(
                lambda e=e: bb.head_activations(clips, exit_layer=e), lambda: bb.head_activations(clips), repeats
            )
            rows.append({"exit_layer": e, "ideal": (e + 1) / n, **r})
    return {"model": name, "n_layers": n, "full_with_lm_head": hasattr(bb, "decoder"), "rows": rows}


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
def bench_valid_frames(name: str, device: str = "cpu", repeats: int = 5) -> dict[str, Any]:
    from calm_core.testing.qwen2_audio import stock_audio_tokens

    bb = load_backbone(model_dir(name), LoadOptions(device=device))
    rows = []
    for seconds in (0.5, 1, 2, 5, 10, 30):
        clip = tone(440.0, seconds)
        with torch.inference_mode():
            diff = float((bb.audio_tokens(clip) - stock_audio_tokens(bb, clip)).abs().max())
            r = paired_ratio(lambda c=clip: bb.audio_tokens(c), lambda c=clip: stock_audio_tokens(bb, c), repeats)
        rows.append({"seconds": seconds, "max_abs_diff": diff, **r})
    return {"model": name, "rows": rows}


# ---- 8. the faster forward: prefix cache, last-token exit, batched encoder -------------------
def bench_faster(name: str, device: str = "cpu", repeats: int = 7) -> dict[str, Any]:
    """Each speed-up against the path without it, interleaved, with the largest difference seen."""
    bb = load_backbone(model_dir(name), LoadOptions(device=device))
    sync = torch.cuda.synchronize if device.startswith("cuda") else None
    n = bb.loaded_layers
    # Clips of unequal lengths, as a batch from calm fit or several streams would be.
    clips = [voiced(float(110 + 30 * i), s, seed=i) for i, s in enumerate((0.7, 1.3, 2.0, 2.6, 1.0, 3.1, 1.8, 2.4))]
    rows: list[dict[str, Any]] = []

    def add(what: str, a: str, b: str, fa: Any, fb: Any, diff: float, **extra: Any) -> None:
        with torch.inference_mode():
            rows.append(
                {
                    "what": what,
                    "a": a,
                    "b": b,
                    "max_abs_diff": diff,
                    **extra,
                    **paired_ratio(fa, fb, repeats, sync=sync),
                }
            )
        print(json.dumps(rows[-1], default=float), file=sys.stderr, flush=True)

    def gap(x: torch.Tensor, y: torch.Tensor) -> float:
        return float((x - y).abs().max())

    with torch.inference_mode():
        if not hasattr(bb, "decoder"):  # Whisper: no prompt prefix to cache and no Llama-style decoder
            same = [voiced(float(110 + 30 * i), 2.0, seed=i) for i in range(8)]
            grouped = bb.head_activations(same)
            alone = torch.cat([bb.head_activations([c]) for c in same])
            add(
                "encoder batch, 8 clips of 2 s",
                "one batch",
                "one clip at a time",
                lambda: bb.head_activations(same),
                lambda: [bb.head_activations([c]) for c in same],
                gap(grouped, alone),
            )
            return {"model": name, "rows": rows}
        d = bb.decoder
        one = [bb.audio_tokens(clips[2])]
        tokens = {"prefix": len(d.prefix_ids), "audio": int(one[0].shape[0]), "suffix": len(d.suffix_ids)}
        from calm_core.backbones.valid_frames import encode_valid_frames_batch, mel_valid_frames

        mels = [mel_valid_frames(bb.feature_extractor, c) for c in clips]
        padded = encode_valid_frames_batch(bb.model.audio_tower, bb.model.multi_modal_projector, mels)
        singles = [bb.audio_tokens(c) for c in clips]
        add(
            "audio encoder, 8 clips of 0.7-3.1 s",
            "one padded, masked batch",
            "one clip at a time",
            lambda: encode_valid_frames_batch(bb.model.audio_tower, bb.model.multi_modal_projector, mels),
            lambda: [bb.audio_tokens(c) for c in clips],
            max(gap(x, y) for x, y in zip(padded, singles, strict=True)),
        )
        same = [voiced(float(110 + 30 * i), 2.0, seed=i) for i in range(8)]
        add(
            "audio encoder, 8 clips of 2 s",
            "batch_audio_tokens (equal lengths: one batch)",
            "one clip at a time",
            lambda: bb.batch_audio_tokens(same),
            lambda: [bb.audio_tokens(c) for c in same],
            max(gap(x, bb.audio_tokens(c)) for x, c in zip(bb.batch_audio_tokens(same), same, strict=True)),
        )
        for e in sorted({0, n // 2 - 1, n - 1}):
            plain = d.heads(one, e, prefix_cache=False, last_token_exit=False)
            cached = d.heads(one, e, prefix_cache=True, last_token_exit=False)
            add(
                f"prefix cache, exit layer {e}",
                "cached",
                "uncached",
                lambda e=e: d.heads(one, e, prefix_cache=True, last_token_exit=False),
                lambda e=e: d.heads(one, e, prefix_cache=False, last_token_exit=False),
                gap(cached, plain),
                **tokens,
            )
            last = d.heads(one, e, prefix_cache=False, last_token_exit=True)
            add(
                f"last-token exit, exit layer {e}",
                "last token",
                "full exit layer",
                lambda e=e: d.heads(one, e, prefix_cache=False, last_token_exit=True),
                lambda e=e: d.heads(one, e, prefix_cache=False, last_token_exit=False),
                gap(last, plain),
                **tokens,
            )
        e = n // 2 - 1
        fast = d.heads(bb.batch_audio_tokens(clips), e, prefix_cache=True, last_token_exit=True)
        slow = torch.cat([d.heads([t], e, prefix_cache=False, last_token_exit=False) for t in singles])
        add(
            f"all three, 8 clips, exit layer {e}",
            "batch_audio_tokens, prefix cache, last token",
            "plain, one clip at a time",
            lambda: d.heads(bb.batch_audio_tokens(clips), e, prefix_cache=True, last_token_exit=True),
            lambda: [d.heads([bb.audio_tokens(c)], e, prefix_cache=False, last_token_exit=False) for c in clips],
            gap(fast, slow),
        )
    return {"model": name, "rows": rows}


# ---- 4-6. pipeline, latency, batching --------------------------------------------------------
def _classifier(model: str, work: Path, dtype: str = "fp32") -> Path:
    """A small classifier fitted now (a cached one could be stale for the model's fingerprint)."""
    from calm_core.cli.parser import main as calm
    from calm_core.testing import write_tone_dataset

    out = work / f"{Path(model).name}.{dtype}.calm.safetensors"
    support = write_tone_dataset(work / "support", {"a": 300.0, "b": 900.0, "c": 2000.0}, per_class=4)
    fit = ["-q", "fit", "--model", model, "--support", str(support), "--out", str(out), "--no-cache"]
    calm([*fit, "--dtype", dtype])
    return out


def bench_pipeline(model: str, work: Path) -> dict[str, Any]:
    """A file replayed as fast as possible: share of wall time outside the model forward."""
    clf = _classifier(model, work)
    wav = _long_wav(work, 120)
    service, _ = _service(model, clf, [{"id": "f", "type": "file", "path": str(wav), "realtime": False}])
    t = time.perf_counter()
    service.start()
    try:
        while not service.all_finished() or service.queue.items:
            time.sleep(0.01)
        wall = time.perf_counter() - t
        model_s = service.metrics.inference_seconds._sum.get()
        segments = service.streams.stats["f"].segments
    finally:
        service.stop(5)
    return {
        "audio_s": 120,
        "segments": segments,
        "wall_s": wall,
        "model_s": model_s,
        "overhead_share": 1 - model_s / wall,
    }


SECTION_5_NOTE = (
    "Started together, every stream's window ends in the same 100 ms, and the last of N segments waits for "
    "the N - 1 before it: p95 grows with N long before the model is saturated. Spread over one hop "
    "(`start_spread_s = hop_s`, calmd's default in vad mode none), the same load arrives evenly. bfloat16 weights "
    "(`calm fit --dtype bf16`; calmd serves a classifier in the precision it was fitted in) take 0.60 of "
    "fp32's forward time here and change the label of 0.3-1.5 % of clips, with no accuracy difference "
    "measurable over 30 draws ([precision.md](precision.md)); they pay only on CPUs with AVX512-BF16 or AMX "
    "(elsewhere bf16 is emulated and slower than fp32).",
)
LATENCY_SETUPS = (  # (precision, start spread in s): the capacity curve of each
    ("fp32", 0.0),  # every stream's windows end together: the worst case, a burst each hop
    ("fp32", 2.0),  # streams started over one hop, as independent cameras or calls are
    ("bf16", 2.0),  # the same, bfloat16 weights (CPUs with AVX512-BF16 or AMX; docs/performance.md)
)


def bench_latency(
    model: str, work: Path, stream_counts: list[int], seconds: float, setups: tuple[tuple[str, float], ...]
) -> dict[str, Any]:
    """Segment end to label at the subscriber, for N looped real-time file streams (one thread each),
    2 s windows, batch 8. Labels of segments that ended in the first 2 s after the last stream
    started are warm-up and not counted."""
    wav = _long_wav(work, 120)
    rows = []
    for dtype, spread in setups:
        clf = _classifier(model, work, dtype)
        for n in stream_counts:
            streams = [{"id": f"s{i}", "type": "file", "path": str(wav), "loop": True} for i in range(n)]
            service, _ = _service(model, clf, streams, batch_size=8, start_spread_s=spread)
            lat, dropped = stream_latencies(service, spread, seconds)
            q = np.percentile(lat, [50, 95, 99]) if lat else [float("nan")] * 3
            rows.append(
                {
                    "dtype": dtype,
                    "spread_s": spread,
                    "streams": n,
                    "labels": len(lat),
                    "p50_ms": q[0],
                    "p95_ms": q[1],
                    "p99_ms": q[2],
                    "dropped": dropped,
                }
            )
            print(f"latency {rows[-1]}", file=sys.stderr, flush=True)
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
    lines = ["# Performance", "", "| sections | command | machine | date |", "|---|---|---|---|"]
    by_run: dict[tuple[str, str, str], list[str]] = {}
    for step, run in results.get("runs", {}).items():
        if step in results:
            by_run.setdefault((run["command"], run["machine"], run["date"]), []).append(step)
    for (command, machine, date), sections in by_run.items():
        lines.append(f"| {', '.join(sections)} | `{command}` | {machine} | {date} |")
    lines += [
        "",
        "Each section comes from the run that last wrote it (`--steps` merges). Compared timings are "
        "interleaved pairs (A B, B A, ...): on a busy machine load drifts and a pair shares it, so the "
        "median of the per-pair ratios is reported with its interquartile range and range; a wide IQR "
        "means the machine was busy, not that the code varies.", "",
    ]  # fmt: skip
    for ee in results.get("early_exit", []):
        if "full_s" in ee:  # a report written before the interleaved timings
            continue
        full = "the full forward with the vocabulary projection" if ee["full_with_lm_head"] else "the full forward"
        r0 = ee["rows"][0]
        lines += [
            f"## 1. Early exit — {ee['model']} ({ee['n_layers']} layers)", "",
            f"Each exit timed against {full}, interleaved, {r0['repeats']} pairs: the median of the per-pair "
            f"ratios, its interquartile range and the range.", "",
            "| exit layer | time | full | ratio to full | ideal (L+1)/N |", "|---|---|---|---|---|",
        ]  # fmt: skip
        for r in ee["rows"]:
            lines.append(
                f"| {r['exit_layer']} | {r['a_s'] * 1e3:.1f} ms | {r['b_s'] * 1e3:.1f} ms | {ratio_text(r)} | "
                f"{r['ideal']:.3f} |"
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
        if "a_s" not in vf["rows"][0]:
            continue
        lines += [
            f"## 3. Valid-frame audio encoder — {vf['model']}", "",
            f"Interleaved, {vf['rows'][0]['repeats']} pairs; ratio = valid frames / stock.", "",
            "| clip | valid frames | stock 30 s padded | ratio | max abs diff |", "|---|---|---|---|---|",
        ]  # fmt: skip
        for r in vf["rows"]:
            lines.append(
                f"| {r['seconds']} s | {r['a_s'] * 1e3:.1f} ms | {r['b_s'] * 1e3:.1f} ms | {ratio_text(r)} | "
                f"{r['max_abs_diff']:.1e} |"
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
            "One looped real-time file stream per row's count (a thread each), 2 s windows (vad mode none), "
            f"batch 8, {lat['seconds_per_point']:.0f} s per point after a warm-up. *Spread*: "
            "`inference.start_spread_s`, 0 = every stream's windows end at once.", "",
            "| precision | spread | streams | labels | p50 | p95 | p99 | dropped |",
            "|---|---|---|---|---|---|---|---|",
        ]  # fmt: skip
        for r in lat["rows"]:
            lines.append(
                f"| {r.get('dtype', 'fp32')} | {r.get('spread_s', 0.0):.0f} s | {r['streams']} | {r['labels']} | "
                f"{r['p50_ms']:.0f} ms | {r['p95_ms']:.0f} ms | {r['p99_ms']:.0f} ms | {r['dropped']} |"
            )
        lines += ["", "Most streams held at p95 < 1 s with no drops:", ""]

        def setup_of(r: dict[str, Any]) -> tuple[str, float]:
            return r.get("dtype", "fp32"), r.get("spread_s", 0.0)

        for setup in dict.fromkeys(setup_of(r) for r in lat["rows"]):
            held = [r["streams"] for r in lat["rows"] if setup_of(r) == setup and holds(r)]
            lines.append(f"- {setup[0]}, spread {setup[1]:.0f} s: {max(held) if held else 'none of those tried'}")
        lines += ["", *SECTION_5_NOTE, ""]
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
    for f in results.get("faster", []):
        r0 = f["rows"][0]
        lines += [
            f"## 8. Faster forward — {f['model']}", "",
            f"Each speed-up timed against the path without it, interleaved (A B, B A, ...), {r0['repeats']} pairs "
            "after a warm-up pair; ratio = A / B (below 1: faster), median of the per-pair ratios with their "
            "interquartile range and range. max abs diff: largest difference of the outputs (fp32).", "",
            "| what | A | B | A time | B time | ratio | max abs diff |", "|---|---|---|---|---|---|---|",
        ]  # fmt: skip
        for r in f["rows"]:
            lines.append(
                f"| {r['what']} | {r['a']} | {r['b']} | {r['a_s'] * 1e3:.1f} ms | {r['b_s'] * 1e3:.1f} ms | "
                f"{ratio_text(r)} | {r['max_abs_diff']:.1e} |"
            )
        tokens = next((r for r in f["rows"] if "prefix" in r), None)
        if tokens:
            lines += ["", f"Prompt: {tokens['prefix']} prefix tokens, {tokens['audio']} audio tokens (2 s), "
                      f"{tokens['suffix']} suffix tokens."]  # fmt: skip
        lines.append("")
    return "\n".join(lines)


KEPT_FROM = "## Qwen2-Audio-7B-Instruct on CPU at its real widths"


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cpu")
    p.add_argument("--model", help="with --device cuda: a Qwen2-Audio folder (7B, loaded in NF4)")
    p.add_argument("--quick", action="store_true", help="tiny and whisper models only, short latency runs")
    p.add_argument(
        "--smoke",
        action="store_true",
        help="every step on the tiny inputs with 2 repeats: checks the bench runs, measures nothing (the test suite)",
    )
    p.add_argument("--out", type=Path, default=Path("docs/performance.md"))
    p.add_argument("--steps", nargs="+", help="run only these sections and merge them into the existing report")
    args = p.parse_args()
    if args.device.startswith("cuda"):
        from gpu import run_gpu

        return run_gpu(args)
    work = CACHE / "work"
    work.mkdir(parents=True, exist_ok=True)
    big = [] if args.quick or args.smoke else ["medium"]
    reps = {"repeats": 2} if args.smoke else {}
    counts = [2] if args.smoke else [1, 4] if args.quick else [1, 16, 64, 96, 128, 150, 176]
    seconds = 3.0 if args.smoke else 20.0
    setups = LATENCY_SETUPS[-1:] if args.smoke else LATENCY_SETUPS
    run = {
        "command": " ".join(["python", *sys.argv]),
        "machine": f"{platform.machine()}, {torch.get_num_threads()} threads, torch {torch.__version__}, CPU, "
        f"load average {os.getloadavg()[0]:.1f} at the start",
        "date": time.strftime("%Y-%m-%d"),
    }
    results: dict[str, Any] = {"runs": {}}
    steps = [
        ("early_exit", lambda: [bench_early_exit(m, **reps) for m in ["tiny", *big, "whisper"]]),
        ("memory", lambda: [bench_memory(m) for m in ["tiny", *big]]),
        ("valid_frames", lambda: [bench_valid_frames(m, **reps) for m in ["tiny", *big]]),
        ("pipeline", lambda: bench_pipeline(model_dir("whisper"), work)),
        ("latency", lambda: bench_latency(model_dir("whisper"), work, counts, seconds, setups)),
        ("batching", lambda: [bench_batching(m) for m in ["tiny", *big, "whisper"]]),
        ("nf4", lambda: bench_nf4("medium" if big else "tiny")),
        ("faster", lambda: [bench_faster(m, **reps) for m in [*(big or ["tiny"]), "whisper"]]),
    ]
    json_out = args.out.with_suffix(".json")
    if args.steps:
        unknown = sorted(set(args.steps) - {k for k, _ in steps})
        if unknown:
            p.error(f"unknown --steps {', '.join(unknown)}; allowed: {', '.join(k for k, _ in steps)}")
        if json_out.is_file():  # merge into the existing report; a new --out starts empty
            old = json.loads(json_out.read_text())
            legacy = {k: old.pop(k) for k in ("command", "machine", "date") if k in old}
            if legacy:  # a report from before per-section runs: its header named only its last run
                legacy["command"] = "bench/run.py (earlier runs, not recorded per section)"
            runs = old.pop("runs", None) or {k: legacy for k in old if legacy}
            results = {**old, "runs": runs}
        steps = [(k, fn) for k, fn in steps if k in args.steps]
    for key, fn in steps:
        t = time.perf_counter()
        results[key] = fn()
        results["runs"][key] = run
        print(f"{key}: {time.perf_counter() - t:.1f} s", file=sys.stderr, flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    # Sections other scripts write (bench/realsize_cpu.py's real-width run) follow this report: kept as they are.
    kept = ""
    if args.out.is_file() and KEPT_FROM in (old_text := args.out.read_text()):
        kept = "\n" + old_text[old_text.index(KEPT_FROM) :]
    args.out.write_text(report(results) + "\n" + kept)
    json_out.write_text(json.dumps(results, indent=1, default=float))
    print(report(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
