"""The GPU suite: Qwen2-Audio-7B-Instruct in NF4 from a local folder on a CUDA device.

Reports absolute latency per segment, real-time factor, GPU memory by layers loaded, the
early-exit ratios and the physical floor: FLOPs of the layers computed over the GPU's peak.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from typing import Any

import torch

PEAK_TFLOPS = {"H100": 989.0, "H200": 989.0, "A100": 312.0, "L4": 121.0, "A10": 125.0, "T4": 65.0, "4090": 165.0}


def _peak(name: str) -> float | None:
    return next((v for k, v in PEAK_TFLOPS.items() if k in name), None)


def run_gpu(args: argparse.Namespace) -> int:
    if not torch.cuda.is_available():
        print(f"no CUDA device is available (device {args.device!r} requested): nothing to measure", file=sys.stderr)
        return 0
    if not args.model:
        print("--device cuda needs --model PATH (a local Qwen2-Audio-7B-Instruct folder)", file=sys.stderr)
        return 2
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
