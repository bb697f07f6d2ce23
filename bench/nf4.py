"""4-bit NF4 against fp32 on the same Whisper weights: feature drift, few-shot accuracy, memory, CPU time.

    python bench/nf4.py [--models bundled:whisper-tiny.en bundled:whisper-base] [--sets spoof instruments]
                        [--shots 4] [--draws 20] [--timed 16]

Per backbone x development set: mean per-head cosine between NF4 and fp32 head features of every
clip; CALM and SAV test accuracy at --shots per class on the same --draws support draws, each
precision fitted on its own features (as a user would); parameter memory (model.get_memory_footprint)
and median full-depth forward time per clip on CPU (one clip per forward, after a warm-up pass) over
the first --timed test clips.
Prints a markdown table (pasted into docs/performance.md) and writes bench/nf4.json.
"""

from __future__ import annotations

import argparse
import json
import logging
import statistics
import sys
import time
from pathlib import Path

import torch

from calm_core.audio.clipsets import label_index, load_examples
from calm_core.backbones import LoadOptions, load_backbone
from calm_core.devsets import build_devset
from calm_core.features import FeatureStore, default_cache_dir
from calm_core.method.classifier import CalmClassifier

sys.path.insert(0, str(Path(__file__).parent))
from accuracy import draws  # noqa: E402  (the same support draws as bench/accuracy.py)

PRECISIONS = ("fp32", "nf4")


def accuracies(feats, y, test, ty, names, backbone, idx_draws) -> dict[str, list[float]]:
    acc: dict[str, list[float]] = {"calm": [], "sav": []}
    for idx in idx_draws:
        clf = CalmClassifier.fit(feats[idx], y[idx], names, backbone.layout, backbone.fingerprint)
        acc["calm"].append(float((clf.scores(test).argmax(1) == ty).float().mean()))
        acc["sav"].append(float((clf.scores(test, "sav").argmax(1) == ty).float().mean()))
    return acc


def seconds_per_clip(backbone, paths: list[Path]) -> float:
    """Median time of one full-depth forward per clip, after one untimed pass over the same clips."""
    from calm_core.audio.decode import load_audio

    clips = [load_audio(p) for p in paths]
    for clip in clips:
        backbone.head_activations([clip])
    times = []
    for clip in clips:
        t = time.perf_counter()
        backbone.head_activations([clip])
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", nargs="+", default=["bundled:whisper-tiny.en", "bundled:whisper-base"])
    p.add_argument("--sets", nargs="+", default=["spoof", "instruments"])
    p.add_argument("--shots", type=int, default=4)
    p.add_argument("--draws", type=int, default=20)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--timed", type=int, default=16)
    p.add_argument("--out", type=Path, default=Path(__file__).with_name("nf4.json"))
    args = p.parse_args()
    logging.getLogger("calm_core.method.classifier").setLevel(logging.ERROR)

    rows = []
    for model in args.models:
        backbones = {prec: load_backbone(model, LoadOptions(dtype=prec)) for prec in PRECISIONS}  # type: ignore[arg-type]
        memory = {prec: b.model.get_memory_footprint() for prec, b in backbones.items()}
        for name in args.sets:
            data = build_devset(name)
            pool, test = load_examples(data / "pool"), load_examples(data / "test")
            names, y = label_index(pool)
            _, ty = label_index(test, names)
            y_t, ty_t = torch.tensor(y), torch.tensor(ty)
            idx_draws = list(draws(y_t, len(names), args.shots, args.draws, args.seed))
            feats, acc, speed = {}, {}, {}
            for prec, backbone in backbones.items():
                store = FeatureStore(backbone, default_cache_dir(), batch_size=8)
                f = store.extract([e.path for e in pool], progress=False)
                tf = store.extract([e.path for e in test], progress=False)
                feats[prec] = torch.cat([f, tf])
                acc[prec] = accuracies(f, y_t, tf, ty_t, names, backbone, idx_draws)
                speed[prec] = seconds_per_clip(backbone, [e.path for e in test[: args.timed]])
            cos = torch.nn.functional.cosine_similarity(feats["nf4"], feats["fp32"], dim=-1)  # (N, L, H)
            row = {
                "model": model.removeprefix("bundled:"), "set": name, "classes": len(names),
                "cos_mean": float(cos.mean()), "cos_p05_head": float(cos.mean(0).flatten().quantile(0.05)),
                "cos_min_head": float(cos.mean(0).min()),
                "acc": acc, "memory": memory, "s_per_clip": speed,
            }  # fmt: skip
            rows.append(row)
            m = {k: {prec: statistics.mean(acc[prec][k]) for prec in PRECISIONS} for k in ("calm", "sav")}
            print(f"{row['model']} {name}: cos {row['cos_mean']:.3f} calm {m['calm']} sav {m['sav']} "
                  f"mem {memory} s/clip {speed}", flush=True)  # fmt: skip
    args.out.write_text(json.dumps(rows, indent=1))
    print(table(rows, args))
    return 0


def mean_sd(v: list[float]) -> str:
    return f"{statistics.mean(v):.3f} ± {statistics.stdev(v):.3f}"


def paired(a: list[float], b: list[float]) -> str:
    d = [x - y for x, y in zip(a, b)]
    return f"{statistics.mean(d):+.3f} ± {statistics.stdev(d) / len(d) ** 0.5:.3f}"


def table(rows: list[dict], args: argparse.Namespace) -> str:
    out = [
        "| model · set | head cosine mean (worst head) | CALM fp32 | CALM nf4 | nf4 − fp32 | SAV fp32 | SAV nf4 "
        "| nf4 − fp32 | memory fp32 / nf4 | s per clip fp32 / nf4 |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        a, mem, s = r["acc"], r["memory"], r["s_per_clip"]
        calm, sav = (f"{mean_sd(a['fp32'][k])} | {mean_sd(a['nf4'][k])} | {paired(a['nf4'][k], a['fp32'][k])}"
                     for k in ("calm", "sav"))  # fmt: skip
        out.append(
            f"| {r['model']} · {r['set']} | {r['cos_mean']:.3f} ({r['cos_min_head']:.3f}) "
            f"| {calm} | {sav} "
            f"| {mem['fp32'] / 2**20:.0f} / {mem['nf4'] / 2**20:.0f} MiB "
            f"| {s['fp32'] * 1000:.0f} / {s['nf4'] * 1000:.0f} ms |"
        )  # fmt: skip
    return "\n".join(out)


if __name__ == "__main__":
    sys.exit(main())
