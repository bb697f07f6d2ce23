"""Qwen2-Audio-7B-Instruct at its real widths on CPU, NF4 against bf16: the folder bench/realsize.py writes,
loaded truncated at the exit, measured and run through calm fit, calm classify and calmd.

    python bench/realsize_cpu.py --work /work/realsize --exits 8 16 --out DIR
    python bench/realsize_cpu.py --work /work/realsize --exits 8 16 --out DIR --interleave   # then this

Per precision and exit, each in a fresh process (NF4 and bf16 alternating): load time, resident memory after
the load against the bytes of the loaded parameters (NF4's block scales included) and against
bench/gpu_sizing.py's weight-bytes formula, and seconds per 2 s segment (median of repeats after one warm-up).
Then at the first exit, per precision: `calm fit` on six espeak-ng clips, `calm classify` on them, and calmd
with one real-time file stream cut into 2 s windows, whose labels' latency_ms it reports. --interleave loads
NF4 and bf16 side by side in one process and times them in turn, which is what to compare on a shared machine
(separate processes see different load). Writes DIR/realsize_cpu.json, DIR/interleaved.json and the tables in
DIR/realsize_cpu.md. Weights are random: labels mean nothing, the cost is what is measured.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
SEGMENT_S = 2.0
WORDS = {"numbers": ["one two", "three four", "five six"], "colours": ["red green", "blue yellow", "black white"]}
ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1"}


def rss_mb() -> dict[str, float]:
    """This process's resident memory now and at its peak, anonymous and file-backed (MiB)."""
    status = Path("/proc/self/status").read_text()
    fields = ("VmRSS", "VmHWM", "RssAnon", "RssFile")
    return {k: int(re.search(rf"^{k}:\s+(\d+) kB", status, re.M).group(1)) / 1024 for k in fields}  # type: ignore[union-attr]


def parameter_bytes(model: Any) -> dict[str, int]:
    """Bytes of the loaded parameters and buffers per part; a 4-bit weight's absmax block scales count too."""
    parts: dict[str, int] = {}
    for name, module in model.named_modules():
        own = list(module.named_parameters(recurse=False)) + list(module.named_buffers(recurse=False))
        size = sum(t.numel() * t.element_size() for _, t in own)
        state = getattr(getattr(module, "weight", None), "quant_state", None)
        if state is not None:
            size += state.absmax.numel() * state.absmax.element_size()
        part = "decoder layers" if ".layers." in f"{name}." and "language_model" in name else name.split(".")[0]
        if "embed_tokens" in name:
            part = "token embeddings"
        parts[part] = parts.get(part, 0) + size
    return {k: v for k, v in parts.items() if v}


def probe(model_dir: Path, dtype: str, exit_layer: int, repeats: int) -> dict[str, Any]:
    """One precision at one exit, in this process: load, memory, seconds per 2 s segment."""
    import torch

    sys.path.insert(0, str(ROOT / "bench"))
    from gpu_sizing import floors

    from calm_core.backbones import LoadOptions, load_backbone
    from calm_core.testing import voiced

    torch.set_grad_enabled(False)
    before = rss_mb()
    t = time.perf_counter()
    bb = load_backbone(model_dir, LoadOptions(dtype=dtype, load_layers=exit_layer + 1))  # type: ignore[arg-type]
    load_s = time.perf_counter() - t
    loaded = rss_mb()
    clip = voiced(140.0, SEGMENT_S)
    n_tokens = len(bb.decoder.prefix_ids) + bb.audio_tokens(clip).shape[0] + len(bb.decoder.suffix_ids)
    t = time.perf_counter()
    bb.head_activations([clip], exit_layer=exit_layer)  # the first: prefix cache, mmap'd weights paged in
    first_s = time.perf_counter() - t
    times = []
    for i in range(repeats):
        segment = voiced(120.0 + 10 * i, SEGMENT_S, seed=i)
        t = time.perf_counter()
        bb.head_activations([segment], exit_layer=exit_layer)
        times.append(time.perf_counter() - t)
    parts = parameter_bytes(bb.model)
    formula = floors(bb, exit_layer, n_tokens, "CPU", 0.5 if dtype == "nf4" else 2.0)["weight_bytes"]
    return {
        "dtype": dtype, "exit_layer": exit_layer, "load_s": load_s, "rss_before_mb": before, "rss_loaded_mb": loaded,
        "rss_after_mb": rss_mb(), "parameter_bytes": parts, "gpu_sizing_decoder_bytes": formula,
        "tokens": n_tokens, "first_segment_s": first_s, "segment_s": times,
        "segment_median_s": statistics.median(times), "torch_threads": torch.get_num_threads(),
    }  # fmt: skip


def interleaved(model_dir: Path, exits: list[int], rounds: int) -> dict[str, Any]:
    """NF4 and bf16 loaded side by side in this process to the deepest exit, one 2 s segment per precision and
    exit in turn, the order reversed every round, so that all see the same load on a shared machine; also how
    much of each load the C allocator kept (RssAnon before and after malloc_trim)."""
    import ctypes

    import torch

    from calm_core.backbones import LoadOptions, load_backbone
    from calm_core.testing import voiced

    torch.set_grad_enabled(False)
    models, trim = {}, {}
    for dtype in ("nf4", "bf16"):
        models[dtype] = load_backbone(model_dir, LoadOptions(dtype=dtype, load_layers=max(exits) + 1))  # type: ignore[arg-type]
        before = rss_mb()["RssAnon"]
        ctypes.CDLL("libc.so.6").malloc_trim(0)
        trim[dtype] = {"anon_before_mb": before, "anon_after_mb": rss_mb()["RssAnon"]}
        models[dtype].head_activations([voiced(140.0, SEGMENT_S)], exit_layer=max(exits))  # first segment
    order = [(dtype, e) for dtype in ("nf4", "bf16") for e in exits]
    times: dict[str, list[float]] = {f"{dtype}@{e}": [] for dtype, e in order}
    for i in range(rounds):
        segment = voiced(120.0 + 10 * i, SEGMENT_S, seed=i)
        for dtype, e in order if i % 2 == 0 else order[::-1]:
            t = time.perf_counter()
            models[dtype].head_activations([segment], exit_layer=e)
            times[f"{dtype}@{e}"].append(time.perf_counter() - t)
    ratios = {f"nf4/bf16@{e}": [a / b for a, b in zip(times[f"nf4@{e}"], times[f"bf16@{e}"])] for e in exits}
    return {"exits": exits, "segment_s": times, "ratios": ratios, "malloc_trim": trim, "rss_mb": rss_mb(),
            "loadavg": os.getloadavg()}  # fmt: skip


def espeak_clips(out: Path) -> Path:
    """Six 2 s clips of espeak-ng speech in two class folders, 16 kHz mono."""
    import numpy as np
    import soundfile as sf
    import soxr

    for label, phrases in WORDS.items():
        (out / label).mkdir(parents=True, exist_ok=True)
        for i, text in enumerate(phrases):
            raw = out / label / f"raw{i}.wav"
            subprocess.run(["espeak-ng", "-w", str(raw), text], check=True)
            audio, rate = sf.read(raw, dtype="float32")
            raw.unlink()
            audio = soxr.resample(audio, rate, 16_000)[: int(SEGMENT_S * 16_000)]
            audio = np.pad(audio, (0, int(SEGMENT_S * 16_000) - audio.size))
            sf.write(out / label / f"{label}_{i}.wav", audio, 16_000, subtype="PCM_16")
    return out


def timed_run(cmd: list[str], log: Path, timeout: float = 1800) -> dict[str, Any]:
    """A calm command under /usr/bin/time: its wall seconds, peak RSS and exit status."""
    t = time.perf_counter()
    done = subprocess.run(["/usr/bin/time", "-f", "maxrss_kb=%M", *cmd], capture_output=True, text=True, env=ENV,
                          cwd=ROOT, timeout=timeout)  # fmt: skip
    log.write_text(done.stdout + done.stderr)
    peak = re.findall(r"maxrss_kb=(\d+)", done.stderr)
    return {"cmd": " ".join(cmd[1:4]), "rc": done.returncode, "wall_s": time.perf_counter() - t,
            "peak_rss_mb": int(peak[-1]) / 1024 if peak else None}  # fmt: skip


def calmd_stream(model_dir: Path, classifier: Path, wav: Path, work: Path) -> dict[str, Any]:
    """calmd with one real-time file stream in 2 s windows until the file ends; latency_ms of every label."""
    import socket

    from calm_core.messages.client import Subscriber
    from calm_core.messages.events import LabelEvent

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    endpoint = f"tcp://127.0.0.1:{port}"
    config = work / f"{classifier.stem}.calmd.toml"
    config.write_text(
        f'[model]\npath = "{model_dir}"\nclassifier = "{classifier}"\ndevice = "cpu"\n\n'
        f'[publish]\nendpoint = "{endpoint}"\n\n[inference]\nforward_grace_s = 300\ndrain_timeout_s = 300\n\n'
        f'[vad]\nmode = "none"\nwindow_s = {SEGMENT_S}\nhop_s = {SEGMENT_S}\n\n'
        f'[[streams]]\nid = "file"\ntype = "file"\npath = "{wav}"\nrealtime = true\n'
    )
    log = (work / f"{classifier.stem}.calmd.log").open("w")
    t = time.perf_counter()
    latencies: list[float] = []
    with Subscriber(endpoint, ["file"], status=False) as sub:
        proc = subprocess.Popen([sys.executable, "-m", "calmd", "--config", str(config), "--exit-when-done"],
                                stdout=log, stderr=subprocess.STDOUT, env=ENV, cwd=ROOT)  # fmt: skip
        deadline = time.monotonic() + 1800
        while time.monotonic() < deadline:
            event = sub.receive(timeout_s=0.5)
            if isinstance(event, LabelEvent):
                latencies.append(event.latency_ms)
            elif event is None and proc.poll() is not None:
                break
        if proc.poll() is None:
            proc.kill()
        proc.wait()
    log.close()
    return {"rc": proc.returncode, "wall_s": time.perf_counter() - t, "labels": len(latencies),
            "latency_ms": latencies}  # fmt: skip


def product(model_dir: Path, exit_layer: int, dtypes: list[str], work: Path) -> dict[str, Any]:
    """calm fit, calm classify and calmd at exit_layer, per precision (alternating)."""
    import numpy as np
    import soundfile as sf

    clips = espeak_clips(work / "clips")
    files = sorted(clips.rglob("*.wav"))
    wav = work / "stream.wav"
    sf.write(wav, np.concatenate([sf.read(f, dtype="float32")[0] for f in files]), 16_000, subtype="PCM_16")
    out: dict[str, Any] = {"clips": len(files), "stream_s": len(files) * SEGMENT_S}
    calm = [sys.executable, "-m", "calm_core.cli"]
    for dtype in dtypes:
        clf = work / f"{dtype}.calm.safetensors"
        fit = [*calm, "fit", "--model", str(model_dir), "--dtype", dtype, "--max-layer", str(exit_layer),
               "--support", str(clips), "--out", str(clf), "--no-cache"]  # fmt: skip
        run = {"fit": timed_run(fit, work / f"{dtype}.fit.log")}
        classify = [*calm, "classify", "--classifier", str(clf), "--model", str(model_dir), "--json", "--no-cache",
                    *map(str, files)]  # fmt: skip
        run["classify"] = timed_run(classify, work / f"{dtype}.classify.log")
        run["calmd"] = calmd_stream(model_dir, clf, wav, work)
        out[dtype] = run
        print(json.dumps({dtype: run}), flush=True)
    return out


def report(result: dict[str, Any], side_by_side: dict[str, Any] | None = None) -> str:
    """The tables docs/performance.md carries (numbers from realsize_cpu.json and interleaved.json)."""
    mib = 2**20
    out = []
    if side_by_side:
        out += [
            "| per 2 s segment, one process, interleaved | median | range | real-time factor |",
            "|---|---|---|---|",
        ]
        for key, times in side_by_side["segment_s"].items():
            med = statistics.median(times)
            out.append(f"| {key.replace('@', ', exit ')} | {med:.2f} s | {min(times):.2f}-{max(times):.2f} s | "
                       f"{med / SEGMENT_S:.2f} |")  # fmt: skip
        for key, ratios in side_by_side["ratios"].items():
            out.append(f"| {key.replace('@', ', exit ')} (per-round ratio) | {statistics.median(ratios):.2f} | "
                       f"{min(ratios):.2f}-{max(ratios):.2f} | |")  # fmt: skip
        out.append("")
    out += [
        "| precision | exit | load | first segment | per 2 s segment | real-time factor | RSS after first segment "
        "(anon + file) | loaded parameters | RSS - start / parameters |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in result["probes"]:
        if "error" in r:
            out.append(f"| {r['dtype']} | {r['exit_layer']} | failed: {r['error'].splitlines()[-1]} |||||||")
            continue
        params = sum(r["parameter_bytes"].values())
        rss, start = r["rss_after_mb"], r["rss_before_mb"]["VmRSS"]
        out.append(
            f"| {r['dtype']} | {r['exit_layer']} | {r['load_s']:.1f} s | {r['first_segment_s']:.1f} s | "
            f"{r['segment_median_s']:.2f} s | {r['segment_median_s'] / SEGMENT_S:.2f} | "
            f"{rss['VmRSS']:.0f} MiB ({rss['RssAnon']:.0f} + {rss['RssFile']:.0f}) | {params / mib:.0f} MiB | "
            f"{(rss['VmRSS'] - start) * mib / params:.2f} |"
        )
    out += ["", "| precision | exit | audio encoder | projector | token embeddings | decoder layers | "
            "gpu_sizing formula (decoder) | formula / decoder |", "|---|---|---|---|---|---|---|---|"]  # fmt: skip
    for r in result["probes"]:
        if "error" in r:
            continue
        b = r["parameter_bytes"]
        dec = b["decoder layers"]
        out.append(
            f"| {r['dtype']} | {r['exit_layer']} | {b['audio_tower'] / mib:.0f} MiB | "
            f"{b['multi_modal_projector'] / mib:.0f} MiB | {b['token embeddings'] / mib:.0f} MiB | "
            f"{dec / mib:.0f} MiB | "
            f"{r['gpu_sizing_decoder_bytes'] / mib:.0f} MiB | {r['gpu_sizing_decoder_bytes'] / dec:.3f} |"
        )
    product = result.get("product")
    failed = lambda rc: f" (failed: status {rc})" if rc else ""  # noqa: E731
    if product:
        out += ["", "| precision | calm fit (6 clips) | calm classify (6 clips) | calmd: labels | calmd latency "
                "median / max | peak RSS fit / classify |", "|---|---|---|---|---|---|"]  # fmt: skip
        for dtype in ("nf4", "bf16"):
            if dtype not in product:
                continue
            run = product[dtype]
            lat = sorted(run["calmd"]["latency_ms"])
            med = f"{statistics.median(lat) / 1e3:.1f} s / {lat[-1] / 1e3:.1f} s" if lat else "-"
            fit, cls = run["fit"], run["classify"]
            out.append(
                f"| {dtype} | {fit['wall_s']:.0f} s{failed(fit['rc'])} | {cls['wall_s']:.0f} s{failed(cls['rc'])} | "
                f"{run['calmd']['labels']} of {int(product['stream_s'] / SEGMENT_S)} | {med} | "
                f"{fit['peak_rss_mb']:.0f} / {cls['peak_rss_mb']:.0f} MiB |"
            )
    return "\n".join(out) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--work", type=Path, required=True, help="folder for the model and clips (GBs)")
    p.add_argument("--exits", type=int, nargs="+", default=[8])
    p.add_argument("--dtypes", nargs="+", default=["nf4", "bf16"])
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--no-product", action="store_true", help="skip calm fit / classify / calmd")
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--interleave", action="store_true", help="only: NF4 and bf16 side by side at the exits")
    p.add_argument("--probe", nargs=2, metavar=("DTYPE", "EXIT"), help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    model_dir = args.work / "qwen2-audio-7b-instruct"
    if args.interleave:
        args.out.mkdir(parents=True, exist_ok=True)
        found = interleaved(model_dir, sorted(args.exits), rounds=2 * args.repeats)
        (args.out / "interleaved.json").write_text(json.dumps(found, indent=1))
        if (args.out / "realsize_cpu.json").is_file():  # the report gains the side-by-side table
            earlier = json.loads((args.out / "realsize_cpu.json").read_text())
            (args.out / "realsize_cpu.md").write_text(report(earlier, found))
        print(json.dumps(found))
        return 0
    if args.probe:
        print(json.dumps(probe(model_dir, args.probe[0], int(args.probe[1]), args.repeats)))
        return 0
    from realsize import write_realsize

    args.out.mkdir(parents=True, exist_ok=True)
    result: dict[str, Any] = {"cpus": os.cpu_count(), "loadavg_start": os.getloadavg()}
    if not (model_dir / "model.safetensors.index.json").is_file():
        result["write"] = write_realsize(model_dir, exit_layer=max(args.exits)).__dict__ | {"path": str(model_dir)}
    result["probes"] = []
    for exit_layer in sorted(args.exits):
        for dtype in args.dtypes:
            cmd = [sys.executable, __file__, "--work", str(args.work), "--out", str(args.out),
                   "--repeats", str(args.repeats), "--probe", dtype, str(exit_layer)]  # fmt: skip
            done = subprocess.run(cmd, capture_output=True, text=True, env=ENV, cwd=ROOT)
            row = json.loads(done.stdout.splitlines()[-1]) if done.returncode == 0 else {
                "dtype": dtype, "exit_layer": exit_layer, "error": done.stderr[-2000:]}  # fmt: skip
            row["loadavg"] = os.getloadavg()
            result["probes"].append(row)
            print(json.dumps(row), flush=True)
            (args.out / "realsize_cpu.json").write_text(json.dumps(result, indent=1))
    if not args.no_product:
        result["product"] = product(model_dir, min(args.exits), args.dtypes, args.work)
    result["loadavg_end"] = os.getloadavg()
    (args.out / "realsize_cpu.json").write_text(json.dumps(result, indent=1))
    (args.out / "realsize_cpu.md").write_text(report(result))
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))
    sys.path.insert(0, str(ROOT / "bench"))
    sys.exit(main())
