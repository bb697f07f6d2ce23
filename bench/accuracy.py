"""Few-shot accuracy of CALM against the baselines a user could pick instead, on every development set.

    python bench/accuracy.py [--draws 30] [--models bundled:whisper-tiny.en bundled:whisper-base]
                             [--sets instruments events spoof] [--out docs/accuracy.md]

For each development set x backbone x shots per class, `--draws` random support draws from the
pool half; every method is fitted on the same draw and scored on the fixed test half:
  calm      CalmClassifier.fit with the default CalmConfig (what `calm fit` and calmd use)
  paper     the paper's recipe (PRESETS["paper"]: in-sample reliability, tau 0.03, tau_w 0.5, top 20)
  calm-0.1  calm 0.1's default (leave-one-out clamped margins, tau 0.07)
  sav       the SAV baseline as `calm eval` prints it (20 heads by leave-one-out accuracy, uniform vote)
  ncm       nearest class mean over all heads concatenated (each head L2-normalised)
  probe     logistic regression on all heads concatenated (scikit-learn, default L2, C=1)
Head features are extracted once per file and cached, so re-runs only refit.
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
from common import class_pools, fit_probe, fmt, head_matrix, mean_sd, paired_interval, support_draws

from calm_core.audio.clipsets import label_index, load_examples
from calm_core.backbones import LoadOptions, load_backbone
from calm_core.devsets import build_devset
from calm_core.features import FeatureStore, default_cache_dir
from calm_core.method import calm
from calm_core.method.classifier import PRESETS, CalmClassifier

SHOTS = (1, 2, 4, 8, 16)
PER_CLASS = {"instruments": 40}  # 20 pool clips per class, so 16 shots fit; others use their default
MARKER = "<!-- results: written by bench/accuracy.py -->"
METHODS = ("calm", "paper", "calm-0.1", "sav", "ncm", "probe")


def macro_f1(pred: torch.Tensor, truth: torch.Tensor, n_classes: int) -> float:
    f1 = calm.vote_f1(pred[:, None], truth, n_classes)[0]
    return float(f1.mean())


def ncm_predict(support: torch.Tensor, labels: torch.Tensor, test: torch.Tensor, n_classes: int) -> torch.Tensor:
    flat, test_flat = support.flatten(1, 2), test.flatten(1, 2)
    prototypes = calm.class_prototypes(flat, labels, n_classes)  # (C, K, D), each head normalised
    return torch.einsum("nkd,ckd->nc", calm.l2_normalize(test_flat), prototypes).argmax(1)


def probe_predict(support: torch.Tensor, labels: torch.Tensor, test: torch.Tensor) -> torch.Tensor:
    return torch.from_numpy(fit_probe(support, labels).predict(head_matrix(test)))


def evaluate(feats, y, test, ty, names, layout, fingerprint, shots: int, n_draws: int, seed: int) -> dict:
    n_classes = len(names)
    rows: dict[str, dict[str, list[float]]] = {m: {"acc": [], "f1": []} for m in METHODS}
    exits: dict[str, list[int]] = {"calm": [], "paper": [], "calm-0.1": [], "sav": []}
    fit_s: list[float] = []
    for idx in support_draws(class_pools(y, n_classes), shots, n_draws, seed):
        preds = {}
        for preset in ("calm", "paper", "calm-0.1"):
            t = time.perf_counter()
            clf = CalmClassifier.fit(feats[idx], y[idx], names, layout, fingerprint, PRESETS[preset])
            if preset == "calm":
                fit_s.append(time.perf_counter() - t)
                preds["sav"] = clf.scores(test, "sav").argmax(1)
                exits["sav"].append(clf.sav_exit_layer)
            preds[preset] = clf.scores(test).argmax(1)
            exits[preset].append(clf.exit_layer)
        preds["ncm"] = ncm_predict(feats[idx], y[idx], test, n_classes)
        preds["probe"] = probe_predict(feats[idx], y[idx], test)
        for m, p in preds.items():
            rows[m]["acc"].append(float((p == ty).float().mean()))
            rows[m]["f1"].append(macro_f1(p, ty, n_classes))
    return {"methods": rows, "exit_layers": exits, "fit_seconds": fit_s}


def paired(a: list[float], b: list[float]) -> str:
    d = [x - y for x, y in zip(a, b)]
    m, lo, hi = paired_interval(a, b)
    s = mean_sd(d)[1]
    wins = sum(x > 1e-9 for x in d) / len(d)
    ties = sum(abs(x) <= 1e-9 for x in d) / len(d)
    return f"{m:+.3f} ± {s:.3f} [{lo:+.3f}, {hi:+.3f}] | {wins:.0%} / {ties:.0%}"


def report(results: dict, args: argparse.Namespace) -> str:
    out = [
        "## Results",
        "",
        f"Command: `python bench/accuracy.py --draws {args.draws}`. Every row: {args.draws} random support draws "
        "from the pool half of the set; every method is fitted on the same draw and scored on the fixed test half. "
        "Accuracy and macro-F1 are mean ± sd over draws. **CALM − SAV** is the paired difference per draw: "
        "mean ± sd [95 % interval of the mean] | share of draws CALM wins / ties.",
        "",
    ]
    for key, res in results.items():
        out += [
            f"### {key}",
            "",
            f"{res['classes']} classes ({', '.join(res['names'])}); pool {res['pool']} clips, test {res['test']}; "
            f"{res['layout']}.",
            "",
            "| shots | CALM | paper | calm 0.1 | SAV | NCM | probe | CALM − SAV | exit layer CALM / SAV |",
            "|---|---|---|---|---|---|---|---|---|",
        ]
        for shots, r in res["shots"].items():
            m = r["methods"]
            ex = r["exit_layers"]
            out.append(
                f"| {shots} | " + " | ".join(fmt(m[k]["acc"]) for k in METHODS)
                + f" | {paired(m['calm']['acc'], m['sav']['acc'])}"
                + f" | {statistics.mean(ex['calm']):.1f} / {statistics.mean(ex['sav']):.1f} |"
            )  # fmt: skip
        out += ["", "Macro-F1:", "", "| shots | " + " | ".join(METHODS) + " |", "|---" * (len(METHODS) + 1) + "|"]
        for shots, r in res["shots"].items():
            out.append(f"| {shots} | " + " | ".join(fmt(r["methods"][k]["f1"]) for k in METHODS) + " |")
        out.append("")
    return "\n".join(out)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", nargs="+", default=["bundled:whisper-tiny.en", "bundled:whisper-base"])
    p.add_argument("--sets", nargs="+", default=["instruments", "events", "spoof"])
    p.add_argument("--shots", type=int, nargs="+", default=list(SHOTS))
    p.add_argument("--draws", type=int, default=30)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, default=Path("docs/accuracy.md"))
    args = p.parse_args()
    logging.getLogger("calm_core.method.classifier").setLevel(logging.ERROR)  # 1-shot fits warn once per draw
    torch.manual_seed(args.seed)

    results = {}
    for model in args.models:
        backbone = load_backbone(model, LoadOptions())
        store = FeatureStore(backbone, default_cache_dir(), batch_size=8)
        for name in args.sets:
            data = build_devset(name, default_cache_dir().parent / "devsets" / f"{name}-bench", PER_CLASS.get(name))
            pool, test = load_examples(data / "pool"), load_examples(data / "test")
            names, y = label_index(pool)
            _, ty = label_index(test, names)
            feats = store.extract([e.path for e in pool], progress=False)
            test_feats = store.extract([e.path for e in test], progress=False)
            y_t, ty_t = torch.tensor(y), torch.tensor(ty)
            smallest = int(torch.bincount(y_t).min())
            key = f"{name} · {model.removeprefix('bundled:')}"
            res = {
                "classes": len(names), "names": names, "pool": len(pool), "test": len(test),
                "layout": f"{backbone.layout.n_layers} layers x {backbone.layout.n_heads} heads", "shots": {},
            }  # fmt: skip
            for shots in args.shots:
                if shots > smallest:
                    continue
                t = time.perf_counter()
                r = evaluate(feats, y_t, test_feats, ty_t, names, backbone.layout, backbone.fingerprint,
                             shots, args.draws, args.seed)  # fmt: skip
                res["shots"][shots] = r
                m = r["methods"]
                print(f"{key} {shots:2d} shots: calm {fmt(m['calm']['acc'])} sav {fmt(m['sav']['acc'])} "
                      f"paired {paired(m['calm']['acc'], m['sav']['acc'])} ({time.perf_counter() - t:.0f} s)",
                      flush=True)  # fmt: skip
            results[key] = res
    args.out.parent.mkdir(parents=True, exist_ok=True)
    # Text above the marker (the analysis) is kept; the tables below it are written anew.
    old = args.out.read_text() if args.out.is_file() else ""
    head = old.split(MARKER)[0] if MARKER in old else ""
    args.out.write_text(head + MARKER + "\n\n" + report(results, args) + "\n")
    args.out.with_suffix(".json").write_text(json.dumps(results, indent=1))
    print(f"wrote {args.out} and {args.out.with_suffix('.json')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
