"""Qwen2-Audio-7B-Instruct (and Qwen2.5-Omni-7B's thinker, Audio Flamingo 3) at real size, from their public
configs alone: speed and memory do not depend on the weights' values, so a random-weight model with the real
widths runs the same kernels at the same shapes (bench/configs/: the widths and where they come from).

    python bench/gpu_sizing.py --device cuda --out $OUT            # Qwen2-Audio-7B at its real size, on a GPU
    python bench/gpu_sizing.py --device cuda --family qwen2.5-omni audio-flamingo-3 --out $OUT
    python bench/gpu_sizing.py --device cpu --scale 32 --out DIR   # reduced width (the test suite)

Writes DIR/sizing.json and DIR/sizing.md (after each family), per family and precision (fp16; nf4 where
bitsandbytes imports) and exit layer (0, 8, 16, 24 and the last): load time and device memory with only layers
<= exit loaded, latency of one 2 s segment; segments/s at batch 1, 4, 16, 64 at the deepest exit; the prefix
cache and the batched encoder against the plain path; each latency against its floor: the FLOPs up to the exit
at the device's peak bf16 rate, and the bytes of weights read per forward at its memory bandwidth; and calmd
itself (the Service, its worker, publisher and file sources) with N looped real-time streams started over one
2 s hop, N doubled until p95 (segment end to label at a ZeroMQ subscriber) reaches 1 s or a segment is
dropped. Timings are medians of interleaved repeats. --scale N divides every width by N and keeps 4 decoder
and 2 encoder layers (a CPU-sized model).

What the device machine needs: torch and transformers (its own are used; calm needs transformers >= 5.0),
calm's pure-Python dependencies, and for nf4 bitsandbytes (a 43 MB wheel: carry it with the working tree,
`pip install --no-deps` it there; without it the nf4 rows are skipped with the reason).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

CONFIGS = Path(__file__).with_name("configs")
# Each family's public widths; the file says where they come from.
FAMILIES = {
    "qwen2-audio": "qwen2-audio-7b-instruct.json",
    "qwen2.5-omni": "qwen2.5-omni-7b.json",
    "audio-flamingo-3": "audio-flamingo-3.json",
}
# Peak dense bf16 tensor rate (TFLOP/s) and memory bandwidth (GB/s), from the vendors' data sheets.
DEVICES = {"H200": (989.0, 4800.0), "H100": (989.0, 3350.0), "A100": (312.0, 2039.0), "L4": (121.0, 300.0)}
EXITS = (0, 8, 16, 24, 31)
STREAMS_EXIT = 16  # calmd's streams run at this exit: a classifier whose heads stop half way
BATCHES = (1, 4, 16, 64)
SEGMENT_S = 2.0
AUDIO_WIDTHS = {"d_model", "hidden_size", "encoder_ffn_dim", "intermediate_size"}
AUDIO_DEPTHS = {"encoder_layers", "num_hidden_layers"}
AUDIO_HEADS = {"encoder_attention_heads", "num_attention_heads"}


def widths(family: str, scale: int) -> dict[str, dict[str, int]]:
    """The family's audio_config and text_config widths (its own key names), every width divided by scale
    with 4 decoder and 2 encoder layers kept when scale > 1."""
    cfg = json.loads((CONFIGS / FAMILIES[family]).read_text())
    audio, text = dict(cfg["audio_config"]), dict(cfg["text_config"])
    if scale == 1:
        return {"audio": audio, "text": text}
    for key in audio:
        if key in AUDIO_DEPTHS:
            audio[key] = 2
        elif key in AUDIO_HEADS:
            audio[key] = max(2, audio[key] // scale)
        elif key in AUDIO_WIDTHS:
            audio[key] //= scale
    # Scaled decoder widths stay multiples of 64: bitsandbytes' CPU NF4 kernel packs weights in blocks of 64 rows.
    width = lambda n: max(64, n // scale // 64 * 64)  # noqa: E731
    heads = max(2, text["num_attention_heads"] // scale)
    kv = max(1, text["num_key_value_heads"] // scale)
    text |= {
        "hidden_size": width(text["hidden_size"]),
        "intermediate_size": width(text["intermediate_size"]),
        "num_hidden_layers": 4,
        "num_attention_heads": heads,
        "num_key_value_heads": kv if heads % kv == 0 else 1,
        "vocab_size": text["vocab_size"] // scale,
    }
    return {"audio": audio, "text": text}


def sized_config(family: str, out: Path, sizes: dict[str, dict[str, int]]) -> tuple[Any, Any]:
    """(model class, config) of the family at the given widths: its tiny writer's tokenizer and processor
    written to out, the writer's config with the widths put in."""
    from functools import partial

    import transformers

    from calm_core.testing import make_tiny_audioflamingo3, make_tiny_qwen2_5_omni, make_tiny_qwen2_audio
    from calm_core.testing.qwen_omni import mrope_sections

    writers = {
        "qwen2-audio": make_tiny_qwen2_audio,
        "qwen2.5-omni": partial(make_tiny_qwen2_5_omni, thinker_only=True),  # as fine-tunes ship it
        "audio-flamingo-3": make_tiny_audioflamingo3,
    }
    writers[family](out)
    config = transformers.AutoConfig.from_pretrained(out).to_dict()
    config["audio_config"] |= sizes["audio"]
    text = config["text_config"] = config["text_config"] | sizes["text"]
    text.pop("head_dim", None)  # derived from hidden_size / num_attention_heads
    text.pop("layer_types", None)  # one per layer: derived again for the new depth
    if "mrope_section" in (text.get("rope_parameters") or {}):
        text["rope_parameters"]["mrope_section"] = mrope_sections(text["hidden_size"] // text["num_attention_heads"])
    if "output_dim" in config["audio_config"]:  # Qwen-Omni's audio encoder projects to the decoder's width
        config["audio_config"]["output_dim"] = text["hidden_size"]
    if "vision_config" in config:
        config["vision_config"]["out_hidden_size"] = text["hidden_size"]
    model_class = getattr(transformers, config["architectures"][0])
    return model_class, model_class.config_class.from_dict(config)


def build_model(family: str, out: Path, sizes: dict[str, dict[str, int]], save_dtype: torch.dtype) -> Path:
    """A random-weight model of the family at the given widths, initialised and saved as the tiny writers do."""
    from calm_core.testing.common import random_model

    model_class, config = sized_config(family, out, sizes)
    model = random_model(model_class, config, seed=0).to(save_dtype)
    for old in out.glob("model*.safetensors*"):
        old.unlink()
    model.save_pretrained(out)
    return out


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def timed(fn: Any, device: str, repeats: int) -> float:
    fn()
    sync(device)
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        sync(device)
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def memory_mb(device: str) -> float | None:
    return torch.cuda.memory_allocated() / 2**20 if device.startswith("cuda") else None


def floors(bb: Any, exit_layer: int, n_tokens: int, device_name: str, bytes_per_weight: float) -> dict[str, Any]:
    """FLOPs of the decoder up to exit_layer (2 per multiply-add, attention included) and the weight bytes it reads."""
    cfg = bb.model.config.text_config
    h, inter, layers = cfg.hidden_size, cfg.intermediate_size, exit_layer + 1
    kv = cfg.num_key_value_heads * (h // cfg.num_attention_heads)
    per_layer_weights = h * h * 2 + h * kv * 2 + 3 * h * inter  # q, o, k, v, gate/up/down
    flops = 2 * layers * (per_layer_weights * n_tokens + 2 * n_tokens * n_tokens * h)
    weight_bytes = layers * per_layer_weights * bytes_per_weight
    peak = next((v for k, v in DEVICES.items() if k in device_name), None)
    out: dict[str, Any] = {"flops": flops, "weight_bytes": weight_bytes}
    if peak:
        out["flop_floor_ms"] = flops / (peak[0] * 1e12) * 1e3
        out["bandwidth_floor_ms"] = weight_bytes / (peak[1] * 1e9) * 1e3
    return out


def one_clip_tokens(bb: Any, clip: Any) -> torch.Tensor:
    """Audio tokens of one clip: Qwen2-Audio-style backbones take a clip, Qwen-Omni's a list of clips."""
    return bb.audio_tokens(clip) if hasattr(bb, "batch_audio_tokens") else bb.audio_tokens([clip])[0]


def batch_tokens(bb: Any, clips: list[Any]) -> list[torch.Tensor]:
    """Audio tokens of several clips through the backbone's batched encoder path."""
    return bb.batch_audio_tokens(clips) if hasattr(bb, "batch_audio_tokens") else bb.audio_tokens(clips)


@torch.inference_mode()
def measure(model_dir: Path, device: str, precision: str, repeats: int, exits: list[int]) -> dict[str, Any]:
    from calm_core.backbones import LoadOptions, load_backbone
    from calm_core.testing import voiced

    clip = voiced(140.0, SEGMENT_S)
    name = torch.cuda.get_device_name() if device.startswith("cuda") else "CPU"
    rows = []
    for exit_layer in exits:
        if device.startswith("cuda"):
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()
        t = time.perf_counter()
        bb = load_backbone(str(model_dir), LoadOptions(device=device, dtype=precision, load_layers=exit_layer + 1))  # type: ignore[arg-type]
        load_s = time.perf_counter() - t
        n_tokens = len(bb.decoder.prefix_ids) + one_clip_tokens(bb, clip).shape[0] + len(bb.decoder.suffix_ids)
        latency = timed(lambda b=bb, e=exit_layer: b.head_activations([clip], exit_layer=e), device, repeats)
        row = {"exit_layer": exit_layer, "load_s": load_s, "memory_mb": memory_mb(device), "latency_ms": latency * 1e3,
               "tokens": n_tokens}  # fmt: skip
        row |= floors(bb, exit_layer, n_tokens, name, 0.5 if precision == "nf4" else 2.0)
        rows.append(row)
        del bb
    deepest = exits[-1]
    bb = load_backbone(str(model_dir), LoadOptions(device=device, dtype=precision, load_layers=deepest + 1))  # type: ignore[arg-type]
    throughput = []
    for batch in BATCHES:
        clips = [voiced(120.0 + 3 * i, SEGMENT_S, seed=i) for i in range(batch)]
        seconds = timed(lambda c=clips: bb.head_activations(c, exit_layer=deepest), device, max(1, repeats // 2))
        throughput.append({"batch": batch, "segments_per_s": batch / seconds})
    clips = [voiced(150.0, SEGMENT_S, seed=i) for i in range(4)]
    faster = {}
    d = bb.decoder
    for what, fast, plain in (
        ("prefix cache", lambda: d.heads(batch_tokens(bb, clips), deepest, prefix_cache=True),
         lambda: d.heads(batch_tokens(bb, clips), deepest, prefix_cache=False)),
        ("batched encoder", lambda: batch_tokens(bb, clips), lambda: [one_clip_tokens(bb, c) for c in clips]),
    ):  # fmt: skip
        pairs = []
        for _ in range(repeats):
            pairs.append(timed(fast, device, 1) / timed(plain, device, 1))
        faster[what] = statistics.median(pairs)
    return {"precision": precision, "device": name, "rows": rows, "throughput": throughput, "faster": faster}


def calmd_streams(
    model_dir: Path, device: str, precision: str, exit_layer: int, counts: list[int], seconds: float, work: Path
) -> dict[str, Any]:
    """calmd with N real-time file streams on one loaded model; N grows through counts until p95 >= 1 s or a
    segment is dropped. The classifier is fitted here on tones (its labels mean nothing on random weights;
    its exit and head count are what set the cost)."""
    import numpy as np
    from timing import _long_wav, _service, holds, stream_latencies

    from calm_core.backbones import LoadOptions, load_backbone
    from calm_core.method.classifier import CalmClassifier, CalmConfig
    from calm_core.testing import voiced

    bb = load_backbone(str(model_dir), LoadOptions(device=device, dtype=precision, load_layers=exit_layer + 1))  # type: ignore[arg-type]
    pitches = {"low": 110.0, "mid": 220.0, "high": 440.0}
    clips = [voiced(f * (1 + 0.03 * k), SEGMENT_S, seed=k) for f in pitches.values() for k in range(4)]
    labels = torch.arange(len(pitches)).repeat_interleave(4)
    feats = bb.head_activations(clips, exit_layer=exit_layer)
    clf = CalmClassifier.fit(feats, labels, list(pitches), bb.layout, bb.fingerprint, CalmConfig(max_layer=exit_layer))
    clf.info["model_path"] = str(model_dir)
    clf_path = clf.save(work / "sizing.calm.safetensors")
    wav = _long_wav(work, 60)
    rows = []
    for n in counts:
        streams = [{"id": f"s{i}", "type": "file", "path": str(wav), "loop": True} for i in range(n)]
        service, _ = _service(str(model_dir), clf_path, streams, backbone=bb, batch_size=16, start_spread_s=2.0)
        lat, dropped = stream_latencies(service, 2.0, seconds)
        q = np.percentile(lat, [50, 95]) if lat else [float("nan")] * 2
        rows.append(
            {"streams": n, "labels": len(lat), "p50_ms": float(q[0]), "p95_ms": float(q[1]), "dropped": dropped}
        )
        print(f"calmd streams: {rows[-1]}", file=sys.stderr, flush=True)
        if not holds(rows[-1]):
            break
    held = [r["streams"] for r in rows if holds(r)]
    return {"exit_layer": clf.exit_layer, "rows": rows, "held": max(held) if held else 0}


def report(result: dict[str, Any]) -> str:
    out = [f"# Sizing at the public configs' widths ({result['device']}, widths / {result['scale']})", ""]
    for family, f in result["families"].items():
        out += [f"## {family}", "", f"Widths: {json.dumps(f['widths'])}", ""]
        for r in f["runs"]:
            header = "| exit | load s | memory MiB | latency ms | FLOP floor ms | bandwidth floor ms |"
            out += [f"### {family}, {r['precision']}", "", header, "|---|---|---|---|---|---|"]
            for row in r["rows"]:
                mem = f"{row['memory_mb']:.0f}" if row["memory_mb"] is not None else "–"
                ff, bf = row.get("flop_floor_ms"), row.get("bandwidth_floor_ms")
                ff_text, bf_text = ("–" if v is None else f"{v:.2f}" for v in (ff, bf))
                out.append(f"| {row['exit_layer']} | {row['load_s']:.1f} | {mem} | {row['latency_ms']:.1f} | "
                           f"{ff_text} | {bf_text} |")  # fmt: skip
            rates = ", ".join(f"batch {t['batch']}: {t['segments_per_s']:.1f}" for t in r["throughput"])
            fast = ", ".join(f"{k} {v:.2f}" for k, v in r["faster"].items())
            out += ["", f"Segments/s: {rates}", "", f"Fast path / plain (median of interleaved repeats): {fast}", ""]
            if "calmd" in r:
                c = r["calmd"]
                out += [f"calmd, classifier exiting at layer {c['exit_layer']}, streams started over 2 s, batch 16:",
                        "", "| streams | labels | p50 ms | p95 ms | dropped |", "|---|---|---|---|---|"]  # fmt: skip
                out += [f"| {x['streams']} | {x['labels']} | {x['p50_ms']:.0f} | {x['p95_ms']:.0f} | {x['dropped']} |"
                        for x in c["rows"]]  # fmt: skip
                out += ["", f"Most streams held at p95 < 1 s with no drops: {c['held']}", ""]
        out += [f"Skipped: {s}" for s in f["skipped"]]
    return "\n".join(out) + "\n"


def size_family(family: str, args: argparse.Namespace, work: Path) -> dict[str, Any]:
    sizes = widths(family, args.scale)
    layers = sizes["text"]["num_hidden_layers"]
    if args.scale > 1:
        exits = sorted({0, layers // 2, layers - 1})
    else:
        exits = sorted({e for e in EXITS if e < layers} | {layers - 1})
    found: dict[str, Any] = {"widths": sizes, "runs": [], "skipped": []}
    t = time.perf_counter()
    model_dir = build_model(family, work / family, sizes, torch.bfloat16)
    found["write_s"] = time.perf_counter() - t
    for precision in ["fp16" if args.device.startswith("cuda") else "fp32", "nf4"]:
        if precision == "nf4":
            try:
                import bitsandbytes  # noqa: F401
            except ImportError as e:
                found["skipped"].append(f"nf4: bitsandbytes does not import here ({e})")
                continue
        run = measure(model_dir, args.device, precision, args.repeats, exits)
        if not args.no_streams:
            counts = args.streams or [16 * 2**k for k in range(7)]
            exit_layer = min(STREAMS_EXIT, layers - 1)
            run["calmd"] = calmd_streams(
                model_dir, args.device, precision, exit_layer, counts, args.stream_seconds, work
            )
        found["runs"].append(run)
        print(json.dumps({"family": family} | run), flush=True)
    return found


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cuda")
    p.add_argument("--family", nargs="+", choices=sorted(FAMILIES), default=["qwen2-audio"],
                   help="model families to size, in this order (default: qwen2-audio)")  # fmt: skip
    p.add_argument("--scale", type=int, default=1, help="divide every width by this (CPU runs)")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--streams", type=int, nargs="+", help="calmd stream counts to try (default: 16, 32, ... 1024)")
    p.add_argument("--stream-seconds", type=float, default=10.0, help="measured seconds per stream count")
    p.add_argument("--no-streams", action="store_true", help="skip calmd's stream search")
    p.add_argument("--out", type=Path, required=True)
    args = p.parse_args(argv)
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        print(f"bench/gpu_sizing.py: --device {args.device} but CUDA is not available", file=sys.stderr)
        return 2
    name = torch.cuda.get_device_name() if args.device.startswith("cuda") else "CPU"
    result: dict[str, Any] = {"scale": args.scale, "device": name, "families": {}}
    args.out.mkdir(parents=True, exist_ok=True)
    for family in args.family:
        with tempfile.TemporaryDirectory(prefix="calm-sizing-") as tmp:
            result["families"][family] = size_family(family, args, Path(tmp))
        # Written after each family: a run stopped by its time limit keeps what it finished.
        (args.out / "sizing.json").write_text(json.dumps(result, indent=1))
        (args.out / "sizing.md").write_text(report(result))
    print(report(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
