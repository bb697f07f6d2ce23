"""What serving in bfloat16 on a CPU costs in labels and gains in speed, against fp32.

    python bench/precision.py [--models bundled:whisper-tiny.en] [--sets instruments events spoof]
                              [--shots 4 8] [--draws 30] [--out docs/precision.md]

For each set, head features of the pool and test halves are extracted at fp32 and at bf16 (the
clip conditioned as `calm fit` does by default). On each random support draw the classifier is
fitted and applied twice, both in one precision (a classifier is only ever served in the
precision it was fitted in: the feature fingerprint holds it): fp32/fp32 and bf16/bf16. Reported:
accuracy of each, the paired difference with its 95 % interval, and how often the two give the
same label to the same test clip. Speed: batches of eight 2 s clips, fp32 and bf16 interleaved,
median of the per-pair time ratios with their interquartile range.

bf16 pays off only where the CPU has bfloat16 instructions (AVX512-BF16 or AMX); elsewhere
oneDNN emulates them and bf16 is slower than fp32. The speed section prints which this CPU has.
"""

from __future__ import annotations

import argparse
import json
import logging
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch
from common import class_pools, fmt, mean_sd, paired_interval, support_draws

from calm_core.audio.clipsets import label_index, load_examples
from calm_core.audio.preprocessing import Preprocessing
from calm_core.backbones import LoadOptions, load_backbone
from calm_core.backbones.base import cpu_bf16_instructions
from calm_core.devsets import build_devset
from calm_core.features import FeatureStore, default_cache_dir
from calm_core.method.classifier import CalmClassifier

PER_CLASS = {"instruments": 40}
PRECISIONS = ("fp32", "bf16")


def per_class_head(examples: list, n: int) -> list:  # type: ignore[type-arg]
    seen: dict[str, int] = {}
    keep = []
    for e in examples:
        seen[e.label] = seen.get(e.label, 0) + 1
        if seen[e.label] <= n:
            keep.append(e)
    return keep


def speed(backbones: dict, clips: list[np.ndarray], repeats: int) -> dict[str, float]:  # type: ignore[type-arg]
    """bf16 time / fp32 time for one batch, interleaved pairs (order alternating), after a warm-up."""

    def once(p: str) -> float:
        t = time.perf_counter()
        backbones[p].head_activations(clips)
        return time.perf_counter() - t

    for p in PRECISIONS:
        once(p)
    ratios, fp32 = [], []
    for r in range(repeats):
        order = PRECISIONS if r % 2 == 0 else PRECISIONS[::-1]
        t = {p: once(p) for p in order}
        ratios.append(t["bf16"] / t["fp32"])
        fp32.append(t["fp32"])
    q = np.percentile(ratios, [25, 50, 75])
    return {
        "ratio": float(q[1]),
        "iqr": (float(q[0]), float(q[2])),
        "range": (min(ratios), max(ratios)),
        "fp32_s": statistics.median(fp32),
        "batch": len(clips),
    }


def evaluate(feats: dict, y: torch.Tensor, ty: torch.Tensor, names: list[str], layout, prints, shots, draws, seed):  # type: ignore[no-untyped-def]
    acc: dict[str, list[float]] = {p: [] for p in PRECISIONS}
    agree: list[float] = []
    for idx in support_draws(class_pools(y, len(names)), shots, draws, seed):
        preds = {}
        for p in PRECISIONS:
            pool, test = feats[p]
            clf = CalmClassifier.fit(pool[idx], y[idx], names, layout, prints[p])
            preds[p] = clf.scores(test).argmax(1)
            acc[p].append(float((preds[p] == ty).float().mean()))
        agree.append(float((preds["fp32"] == preds["bf16"]).float().mean()))
    return {"acc": acc, "agree": agree}


def report(results: dict, args: argparse.Namespace) -> str:
    lines = [
        f"Command: `python bench/precision.py --draws {args.draws} --shots {' '.join(map(str, args.shots))}`; "
        f"CPU bfloat16 instructions: {results['cpu_bf16']}.",
        "",
        "| set · model | shots | fp32 | bf16 | bf16 - fp32 (paired, 95 % interval) | same label |",
        "|---|---|---|---|---|---|",
    ]
    for key, res in results["sets"].items():
        for shots, r in res.items():
            m, lo, hi = paired_interval(r["acc"]["bf16"], r["acc"]["fp32"])
            lines.append(
                f"| {key} | {shots} | {fmt(r['acc']['fp32'])} | {fmt(r['acc']['bf16'])} | "
                f"{m:+.4f} [{lo:+.4f}, {hi:+.4f}] | {100 * statistics.mean(r['agree']):.2f} % |"
            )
    lines += ["", "| model | batch | fp32 time | bf16 / fp32 (median) | IQR | range |", "|---|---|---|---|---|---|"]
    for model, s in results["speed"].items():
        lines.append(
            f"| {model} | {s['batch']} × 2 s | {s['fp32_s'] * 1e3:.0f} ms | {s['ratio']:.3f} | "
            f"{s['iqr'][0]:.3f}-{s['iqr'][1]:.3f} | {s['range'][0]:.3f}-{s['range'][1]:.3f} |"
        )
    return "\n".join(lines)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", nargs="+", default=["bundled:whisper-tiny.en"])
    p.add_argument("--sets", nargs="+", default=["instruments", "events", "spoof"])
    p.add_argument("--shots", type=int, nargs="+", default=[4, 8])
    p.add_argument("--draws", type=int, default=30)
    p.add_argument("--repeats", type=int, default=15, help="interleaved timing pairs")
    p.add_argument("--limit", type=int, default=0, help="quick run: the first N pool and test clips of each class")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, default=Path("docs/precision.md"))
    args = p.parse_args()
    logging.getLogger("calm_core.method.classifier").setLevel(logging.ERROR)
    torch.manual_seed(args.seed)
    prep = Preprocessing(conditioning="sound")  # what `calm fit` does by default
    results: dict = {"cpu_bf16": ", ".join(cpu_bf16_instructions() or []) or "none", "sets": {}, "speed": {}}
    for model in args.models:
        backbones = {p: load_backbone(model, LoadOptions(dtype=p)) for p in PRECISIONS}
        stores = {p: FeatureStore(b, default_cache_dir(), batch_size=8, channel=prep) for p, b in backbones.items()}
        for name in args.sets:
            data = build_devset(name, default_cache_dir().parent / "devsets" / f"{name}-bench", PER_CLASS.get(name))
            pool, test = load_examples(data / "pool"), load_examples(data / "test")
            if args.limit:  # a quick run: the first N clips of each class in each half
                pool, test = per_class_head(pool, args.limit), per_class_head(test, args.limit)
            names, y = label_index(pool)
            _, ty = label_index(test, names)
            feats = {p: (s.extract([e.path for e in pool], progress=False),
                         s.extract([e.path for e in test], progress=False)) for p, s in stores.items()}  # fmt: skip
            y_t, ty_t = torch.tensor(y), torch.tensor(ty)
            smallest = int(torch.bincount(y_t).min())
            key = f"{name} · {model.removeprefix('bundled:')}"
            prints = {p: b.fingerprint for p, b in backbones.items()}
            layout = backbones["fp32"].layout
            res = {}
            for shots in [s for s in args.shots if s <= smallest]:
                r = evaluate(feats, y_t, ty_t, names, layout, prints, shots, args.draws, args.seed)
                res[shots] = r
                d = mean_sd([a - b for a, b in zip(r["acc"]["bf16"], r["acc"]["fp32"])])
                print(f"{key} {shots} shots: bf16-fp32 {d[0]:+.4f} ± {d[1]:.4f}, "
                      f"same label {statistics.mean(r['agree']):.4f}", flush=True)  # fmt: skip
            results["sets"][key] = res
        rng = np.random.default_rng(args.seed)
        clips = [(0.1 * rng.standard_normal(32_000)).astype(np.float32) for _ in range(8)]
        results["speed"][model.removeprefix("bundled:")] = speed(backbones, clips, args.repeats)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    text = report(results, args)
    args.out.write_text("# bfloat16 on CPU: labels and speed against fp32\n\n" + text + "\n")
    args.out.with_suffix(".json").write_text(json.dumps(results, indent=1))
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
