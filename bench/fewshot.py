"""CALM against SAV on the development set: 1, 2, 4 and 8 shots per class, several random support draws.

    python bench/fewshot.py [--model bundled:whisper-tiny.en] [--draws 10] [--out docs/fewshot.json]

Head features are extracted once (and cached), so every configuration is fitted on the same
features; support clips are drawn from the pool half, scores are on the fixed test half.
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

from calm_core.backbones import LoadOptions, load_backbone
from calm_core.classifier import CalmClassifier, CalmConfig
from calm_core.data import label_index, load_examples
from calm_core.devset import build_devset
from calm_core.features import FeatureStore, default_cache_dir


def accuracy(clf: CalmClassifier, feats: torch.Tensor, y: torch.Tensor, method: str) -> float:
    return float((clf.scores(feats, method).argmax(1) == y).float().mean())  # type: ignore[arg-type]


def run(feats, y, test_feats, test_y, labels, layout, fp, shots, draws, config: CalmConfig, seed=0, val=0):
    """val > 0: that many further pool clips per class form a validation set for reliability."""
    rows = {"calm": [], "sav": [], "exit_layer": []}
    gen = torch.Generator().manual_seed(seed)
    for _ in range(draws):
        perms = [
            torch.nonzero(y == c).flatten()[torch.randperm(int((y == c).sum()), generator=gen)]
            for c in range(len(labels))
        ]
        idx = torch.cat([p[:shots] for p in perms])
        val_idx = torch.cat([p[shots : shots + val] for p in perms]) if val else None
        clf = CalmClassifier.fit(
            feats[idx], y[idx], labels, layout, fp, config,
            None if val_idx is None else feats[val_idx], None if val_idx is None else y[val_idx],
        )  # fmt: skip
        rows["calm"].append(accuracy(clf, test_feats, test_y, "calm"))
        rows["sav"].append(accuracy(clf, test_feats, test_y, "sav"))
        rows["exit_layer"].append(clf.exit_layer)
    return rows


def summary(values: list[float]) -> str:
    sd = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{statistics.mean(values):.3f} ± {sd:.3f}"


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="bundled:whisper-tiny.en")
    p.add_argument("--data", type=Path, default=default_cache_dir().parent / "devset")
    p.add_argument("--draws", type=int, default=10)
    p.add_argument("--shots", type=int, nargs="+", default=[1, 2, 4, 8])
    p.add_argument("--sweep", action="store_true", help="also sweep tau, scheme, top-k, alpha and max-layer at 4 shots")
    p.add_argument("--out", type=Path)
    args = p.parse_args()

    build_devset(args.data)
    logging.getLogger("calm_core.classifier").setLevel(logging.ERROR)  # 1-shot fits warn once per draw
    backbone = load_backbone(args.model, LoadOptions())
    store = FeatureStore(backbone, default_cache_dir(), batch_size=8)
    pool, test = load_examples(args.data / "pool"), load_examples(args.data / "test")
    labels, y = label_index(pool)
    _, ty = label_index(test, labels)
    t = time.perf_counter()
    feats = store.extract([e.path for e in pool], progress=False)
    test_feats = store.extract([e.path for e in test], progress=False)
    extract_s = time.perf_counter() - t
    y, ty = torch.tensor(y), torch.tensor(ty)
    fp = backbone.fingerprint
    result = {
        "model": args.model, "layout": str(backbone.layout),
        "classes": labels, "pool_per_class": len(pool) // len(labels), "test_clips": len(test),
        "draws": args.draws, "feature_seconds": round(extract_s, 2), "shots": {}, "validation": {}, "sweep": {},
    }  # fmt: skip
    print(f"| shots | CALM | SAV | exit layer (of {backbone.layout.n_layers}) |")
    print("|---|---|---|---|")
    for shots in args.shots:
        rows = run(feats, y, test_feats, ty, labels, backbone.layout, fp, shots, args.draws, CalmConfig())
        result["shots"][shots] = rows
        exits = f"{min(rows['exit_layer'])}-{max(rows['exit_layer'])}"
        print(f"| {shots} | {summary(rows['calm'])} | {summary(rows['sav'])} | {exits} |", flush=True)
    print("\n| support + validation clips per class | CALM | SAV |\n|---|---|---|")
    for shots, val in ((2, 4), (4, 4), (4, 6)):
        rows = run(feats, y, test_feats, ty, labels, backbone.layout, fp, shots, args.draws, CalmConfig(), val=val)
        result["validation"][f"{shots}+{val}"] = rows
        print(f"| {shots} + {val} | {summary(rows['calm'])} | {summary(rows['sav'])} |", flush=True)
    if args.sweep:
        grid = {
            "default": CalmConfig(),
            "tau=0.02": CalmConfig(tau=0.02), "tau=0.2": CalmConfig(tau=0.2),
            "top_k=5": CalmConfig(top_k=5), "top_k=10": CalmConfig(top_k=10), "top_k=all": CalmConfig(top_k=None),
            "tau_w=0.5": CalmConfig(tau_w=0.5), "tau_w=0.25": CalmConfig(tau_w=0.25),
            "alpha=2": CalmConfig(alpha=2.0),
            "margin_softmax": CalmConfig(scheme="margin_softmax"), "prob_softmax": CalmConfig(scheme="prob_softmax"),
            "brier_softmax": CalmConfig(scheme="brier_softmax"),
            "max_layer=3 (encoder only)": CalmConfig(max_layer=3),
        }  # fmt: skip
        print("\n| config (4 shots) | CALM | SAV |\n|---|---|---|")
        for name, config in grid.items():
            rows = run(feats, y, test_feats, ty, labels, backbone.layout, fp, 4, args.draws, config)
            result["sweep"][name] = rows
            print(f"| {name} | {summary(rows['calm'])} | {summary(rows['sav'])} |", flush=True)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=1, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
