"""Spoof detection out of domain: fit on some human sources and synthesisers, test on a human source and a
synthesiser the classifier has never heard, on the `calls` development set. Writes the calls section of
docs/robustness.md (between its own markers).

    python bench/calls.py [--models bundled:whisper-base bundled:whisper-tiny.en] [--shots 8 16] [--draws 20]

Folds: every (held-out human source, held-out synthesiser) pair, 4 x 4 = 16. Support: `shots` clips of each
class drawn from the other three human sources and the other three synthesisers. Test: the held-out human
source's test half against all clips of the held-out synthesiser. The held-out source's pool half plays the
site's own genuine traffic for `calm calibrate` (no spoof among it). Calls: `--call-size` clips of one source.
Scores: log-odds of spoof (calm_core.method.detection.log_odds) for CALM and SAV; the probe's decision function.
Thresholds (CALM): `stored` is what `calm fit --positive spoof` stores (EER point of leave-one-out support
scores); `calibrated` is what `calm calibrate --far F` sets from the site's genuine clips.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path

import numpy as np
import torch
from common import Features, fit_pipeline, mean_sd, paired_interval

from calm_core.audio.augment import augment, recipe_channels
from calm_core.audio.conditioning import VERSION, condition
from calm_core.audio.decode import load_audio
from calm_core.backbones import LoadOptions, load_backbone
from calm_core.devsets import build_devset, default_devset_dir
from calm_core.devsets.calls import GENUINE_SOURCES, SPOOF_SOURCES
from calm_core.features import default_cache_dir
from calm_core.method.calibration import far_threshold, loo_log_odds
from calm_core.method.detection import eer, per_call

START, END = "<!-- calls: written by bench/calls.py -->", "<!-- calls end -->"
PIPELINES = ("calm", "sav", "paper", "probe", "calm+cond", "sav+cond", "probe+cond", "calm+cond+aug")
THRESHOLDED = ("calm", "calm+cond", "calm+cond+aug")


def load_set(data: Path) -> dict:
    manifest = json.loads((data / "manifest.json").read_text())
    clips = manifest["clips"]
    return {
        "paths": [data / c["file"] for c in clips],
        "label": np.array([c["class"] == "spoof" for c in clips]),
        "source": np.array([c["source"] for c in clips]),
        "split": np.array([c["split"] for c in clips]),
    }


def calls_of(index: np.ndarray, size: int) -> list[str]:
    """Consecutive groups of `size` clips (of one source) as pseudo-calls."""
    return [f"c{k // size}" for k in range(index.size)]


def fold_scores(pipeline, feats, y, support, test, calib, backbone, shots_seed):  # type: ignore[no-untyped-def]
    """(test scores, calibration scores, stored threshold or None) for one pipeline on one support draw."""
    aug = "+aug" in pipeline
    base = feats["sound" if "+cond" in pipeline else "none"]
    sup = torch.cat([c[support] for c in base]) if aug else base[0][support]
    labels = torch.tensor(y[support]).long().repeat(len(base) if aug else 1)
    groups = torch.arange(len(support)).repeat(len(base)) if aug else None
    names = ["bonafide", "spoof"]
    fitted = fit_pipeline(pipeline, sup, labels, names, backbone, groups)
    if fitted.clf is None:
        return fitted.positive_score(base[0][test], []), fitted.positive_score(base[0][calib], []), None
    config = fitted.clf.config
    score = lambda idx: fitted.positive_score(base[0][idx], ["spoof"])  # noqa: E731
    stored = None
    if pipeline in THRESHOLDED:
        loo = loo_log_odds(sup, labels, names, backbone.layout, backbone.fingerprint, config, "spoof", groups)
        is_spoof = labels[: len(support)].numpy().astype(bool)
        stored = eer(loo, is_spoof)[1]
    return score(test), score(calib), stored


def evaluate(model: str, args: argparse.Namespace) -> dict:
    backbone = load_backbone(model, LoadOptions())
    if args.per_source:  # a quick run on a smaller build of the set, beside the full one
        data = load_set(
            build_devset("calls", Path(f"{default_devset_dir('calls')}-{args.per_source}"), args.per_source)
        )
    else:
        data = load_set(build_devset("calls"))
    audio = [load_audio(p) for p in data["paths"]]
    store = Features(backbone, default_cache_dir().parent / "bench" / "calls" / backbone.fingerprint.digest[:16])
    key = "calls" if not args.per_source else f"calls-{args.per_source}"
    feats = {
        "none": [store.get(f"{key}:none", audio, lambda i, x: x)],
        "sound": [store.get(f"{key}:sound/{VERSION}", audio, lambda i, x: condition(x, "sound"))],
    }
    for ch in recipe_channels("channels"):
        feats["sound"].append(
            store.get(f"{key}:{ch}:sound/{VERSION}", audio, lambda i, x, ch=ch: condition(augment(x, ch), "sound"))
        )
    y = data["label"].astype(int)
    res: dict = {"layout": f"{backbone.layout.n_layers} layers x {backbone.layout.n_heads} heads", "shots": {}}
    rng = np.random.default_rng(args.seed)
    for shots in args.shots:
        t0 = time.perf_counter()
        rows: dict = {p: {"clip_eer": [], "call_eer": [], "fa_stored": [], "miss_stored": [], "fa_cal": [],
                          "miss_cal": []} for p in PIPELINES}  # fmt: skip
        per_source: dict = {p: {s: [] for s in (*GENUINE_SOURCES, *SPOOF_SOURCES)} for p in PIPELINES}
        for g in GENUINE_SOURCES:
            for s in SPOOF_SOURCES:
                seen_g = np.flatnonzero(
                    (data["source"] != g) & ~data["label"] & ~np.isin(data["source"], SPOOF_SOURCES)
                )
                seen_s = np.flatnonzero(np.isin(data["source"], SPOOF_SOURCES) & (data["source"] != s))
                test_g = np.flatnonzero((data["source"] == g) & (data["split"] == "test"))
                calib = np.flatnonzero((data["source"] == g) & (data["split"] == "pool"))
                test_s = np.flatnonzero(data["source"] == s)
                test = np.concatenate([test_g, test_s])
                is_spoof = np.r_[np.zeros(test_g.size, bool), np.ones(test_s.size, bool)]
                calls = [f"g{c}" for c in calls_of(test_g, args.call_size)] + [
                    f"s{c}" for c in calls_of(test_s, args.call_size)
                ]
                for _ in range(args.draws):
                    support = np.r_[rng.choice(seen_g, shots, replace=False), rng.choice(seen_s, shots, replace=False)]
                    for p in PIPELINES:
                        scores, cal_scores, stored = fold_scores(p, feats, y, support, test, calib, backbone, None)
                        _, call_scores, call_spoof = per_call(scores, is_spoof, calls)
                        rows[p]["clip_eer"].append(eer(scores, is_spoof)[0])
                        rows[p]["call_eer"].append(eer(call_scores, call_spoof)[0])
                        per_source[p][g].append(rows[p]["call_eer"][-1])
                        per_source[p][s].append(rows[p]["call_eer"][-1])
                        if stored is None:
                            continue
                        calibrated = far_threshold(cal_scores, args.far)  # per clip: the site's clips
                        for name, t in (("stored", stored), ("cal", calibrated)):
                            rows[p][f"fa_{name}"].append(float(np.mean(call_scores[~call_spoof] >= t)))
                            rows[p][f"miss_{name}"].append(float(np.mean(call_scores[call_spoof] < t)))
        res["shots"][shots] = {"rows": rows, "per_source": per_source}
        line = " ".join(f"{p} {100 * np.mean(rows[p]['call_eer']):.1f}" for p in PIPELINES)
        print(f"{model} {shots} shots ({time.perf_counter() - t0:.0f} s): per-call EER % {line}", flush=True)
    return res


def pct(values: list[float]) -> str:
    m, s = mean_sd(values)
    return f"{100 * m:.1f} ± {100 * s:.1f}"


def paired(a: list[float], b: list[float]) -> str:
    m, lo, hi = paired_interval(a, b)
    return f"{100 * m:+.1f} [{100 * lo:+.1f}, {100 * hi:+.1f}]"


def report(results: dict, args: argparse.Namespace) -> str:
    out = [START, "", "## Calls: spoof detection out of domain", "",
           f"Command: `python bench/calls.py --draws {args.draws}`. The `calls` set (calm_core/devsets/calls.py): "
           f"{len(GENUINE_SOURCES)} human sources ({', '.join(GENUINE_SOURCES)}) and {len(SPOOF_SOURCES)} "
           f"synthesisers ({', '.join(SPOOF_SOURCES)}), all on a G.711 line. 16 folds (each held-out human source x "
           f"each held-out synthesiser), {args.draws} support draws each: every figure is mean ± sd over "
           f"{16 * args.draws} fits whose support never holds the test sources. Calls are {args.call_size} clips of "
           f"one source. False alarms (genuine calls flagged) and misses are at the stored threshold (`calm fit "
           f"--positive spoof`) and at the calibrated one (`calm calibrate --far {args.far}` on the held-out "
           "source's other half, per clip: the site's own genuine traffic, no attacks).", ""]  # fmt: skip
    for model, res in results.items():
        for shots, r in res["shots"].items():
            rows = r["rows"]
            out += [f"### {model} · {shots} shots per class ({res['layout']})", "",
                    "| pipeline | clip EER % | call EER % | genuine flagged, stored % | missed, stored % | "
                    "genuine flagged, calibrated % | missed, calibrated % |",
                    "|---|---|---|---|---|---|---|"]  # fmt: skip
            for p in PIPELINES:
                v = rows[p]
                cells = [pct(v["clip_eer"]), pct(v["call_eer"])]
                cells += [pct(v[k]) if v[k] else "–" for k in ("fa_stored", "miss_stored", "fa_cal", "miss_cal")]
                out.append(f"| {p} | " + " | ".join(cells) + " |")
            out += ["", "Paired call-EER differences (points; 95 % interval of the mean): "
                    + "; ".join(f"{p} − calm {paired(rows[p]['call_eer'], rows['calm']['call_eer'])}"
                                for p in PIPELINES[1:]), ""]  # fmt: skip
            src = r["per_source"]
            out += ["Per-call EER % by held-out source (mean over the folds holding it out):", "",
                    "| pipeline | " + " | ".join(src["calm"]) + " |",
                    "|---" * (len(src["calm"]) + 1) + "|"]  # fmt: skip
            for p in ("calm", "calm+cond", "calm+cond+aug", "probe+cond"):
                out.append(f"| {p} | " + " | ".join(f"{100 * np.mean(v):.1f}" for v in src[p].values()) + " |")
            out.append("")
    out.append(END)
    return "\n".join(out)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", nargs="+", default=["bundled:whisper-base", "bundled:whisper-tiny.en"])
    p.add_argument("--shots", type=int, nargs="+", default=[8, 16])
    p.add_argument("--draws", type=int, default=20)
    p.add_argument("--call-size", type=int, default=4)
    p.add_argument("--far", type=float, default=0.02, help="calibration: false-alarm rate on the site's calls")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--per-source", type=int, default=0, help="quick run: build the set with N clips per source")
    p.add_argument("--out", type=Path, default=Path("docs/robustness.md"))
    args = p.parse_args()
    logging.getLogger("calm_core.method.classifier").setLevel(logging.ERROR)
    results = {m.removeprefix("bundled:"): evaluate(m, args) for m in args.models}
    text = report(results, args)
    old = args.out.read_text() if args.out.is_file() else ""
    if START in old and END in old:
        text = old.split(START)[0] + text + old.split(END, 1)[1]
    else:
        text = old + ("\n" if old else "") + text + "\n"
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text)
    args.out.with_name("calls.json").write_text(json.dumps(results, indent=1, default=float))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
