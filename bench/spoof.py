"""Spoof detection on the spoof development set: CALM, SAV and a linear probe, per clip and per pseudo-call,
with the synthesisers seen in the support clips and held out of them.

    python bench/spoof.py [--draws 30] [--models bundled:whisper-tiny.en bundled:whisper-base]
                          [--shots 4 8 16 32] [--call-size 4] [--out docs/spoof.md]

Conditions (bonafide support always from the pool half, bonafide test always the test half's 40 clips):
  seen           spoof support from the pool half (all three engines), spoof test the test half's 40 clips
  held out X     spoof support only from the pool clips of the other two engines; spoof test every clip of
                 engine X, pool and test half (none of them can be drawn into the support)
Scores: log-odds of spoof over bonafide (calm_core.method.detection.log_odds_ratio) for CALM (default CalmConfig) and
SAV; the logistic regression's decision function for the probe (all heads concatenated, each L2-normalised).
A pseudo-call is `--call-size` test clips of one class, mostly of one language (bonafide: about one volunteer)
or of one engine and language (spoof), fixed by the seed; its score is the mean of its clips' scores.
CALM is also scored at the threshold `calm fit --positive spoof` would store (EER point of leave-one-out
scores of the support clips): the miss and false-alarm rates a deployment would see on these test clips.
Head features come from the feature cache, so a re-run only refits.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from common import fit_probe, head_matrix, mean_sd, support_draws

from calm_core.backbones import LoadOptions, load_backbone
from calm_core.devsets import build_devset
from calm_core.evaluation.plots import DetCurve, plot_det
from calm_core.features import FeatureStore, default_cache_dir
from calm_core.method.calibration import loo_log_odds
from calm_core.method.classifier import CalmClassifier, CalmConfig
from calm_core.method.detection import det_curve, detection_report, eer, log_odds, per_call

SHOTS = (4, 8, 16, 32)
ENGINES = ("espeak-ng", "festival", "flite")
METHODS = ("calm", "sav", "probe")
NAMES = ["bonafide", "spoof"]  # class indices 0, 1
SPOOF = 1
MIN_POSITIVE_CALLS = 4  # fewer spoof pseudo-calls than this: no per-call figure
MARKER = "<!-- results: written by bench/spoof.py -->"


@dataclass(frozen=True)
class Clips:
    """Every clip of the set, pool and test half, with what the manifest says of it."""

    feats: torch.Tensor  # (N, L, H, D)
    y: torch.Tensor  # (N,) 0 bonafide, 1 spoof
    split: np.ndarray  # (N,) "pool" | "test"
    engine: np.ndarray  # (N,) synthesiser, "" for bonafide
    language: np.ndarray  # (N,)


@dataclass(frozen=True)
class Condition:
    name: str
    train_engines: tuple[str, ...]  # spoof support drawn from the pool clips of these
    test_engines: tuple[str, ...]
    test_splits: tuple[str, ...]  # halves the spoof test clips come from

    def support_pool(self, clips: Clips) -> list[torch.Tensor]:
        """Candidate support clips per class (indices)."""
        pool = clips.split == "pool"
        bonafide = pool & (clips.y.numpy() == 0)
        spoof = pool & np.isin(clips.engine, self.train_engines)
        return [torch.from_numpy(np.flatnonzero(bonafide)), torch.from_numpy(np.flatnonzero(spoof))]

    def test(self, clips: Clips) -> np.ndarray:
        bonafide = (clips.split == "test") & (clips.y.numpy() == 0)
        spoof = np.isin(clips.split, self.test_splits) & np.isin(clips.engine, self.test_engines)
        return np.flatnonzero(bonafide | spoof)


CONDITIONS = [Condition("seen", ENGINES, ENGINES, ("test",))] + [
    Condition(f"held out {e}", tuple(x for x in ENGINES if x != e), (e,), ("pool", "test")) for e in ENGINES
]


def load_clips(data: Path, store: FeatureStore) -> Clips:
    records = json.loads((data / "manifest.json").read_text())["clips"]
    feats = store.extract([data / r["file"] for r in records], progress=False)
    return Clips(
        feats=feats,
        y=torch.tensor([NAMES.index(r["class"]) for r in records]),
        split=np.array([r["split"] for r in records]),
        engine=np.array([r["origin"].get("synthesiser", "") if r["class"] == "spoof" else "" for r in records]),
        language=np.array([r["language"] for r in records]),
    )


def pseudo_calls(clips: Clips, test: np.ndarray, size: int, seed: int) -> list[str]:
    """A call id per test clip: within each class, clips ordered by source (bonafide: language, spoof: engine
    and language), shuffled within a source, then cut into calls of `size` in that order."""
    rng = np.random.default_rng(seed)
    calls = [""] * len(test)
    for c in (0, 1):
        members = [i for i, t in enumerate(test) if int(clips.y[t]) == c]
        tiebreak = rng.permutation(len(members))
        key = [(clips.engine[test[i]], clips.language[test[i]], k) for i, k in zip(members, tiebreak)]
        for rank, (_, i) in enumerate(sorted(zip(key, members))):
            calls[i] = f"{NAMES[c]}-{rank // size}"
    return calls


def probe_scores(support: torch.Tensor, labels: torch.Tensor, test: torch.Tensor) -> np.ndarray:
    return fit_probe(support, labels).decision_function(head_matrix(test))  # log-odds of spoof under the probe


def method_scores(clips: Clips, idx: torch.Tensor, test: np.ndarray, backbone) -> tuple[dict[str, np.ndarray], float]:
    """Test scores of each method fitted on the support clips idx, and the CALM threshold calm fit would store."""
    feats, y = clips.feats[idx], clips.y[idx]
    clf = CalmClassifier.fit(feats, y, NAMES, backbone.layout, backbone.fingerprint, CalmConfig())
    test_feats = clips.feats[test]
    scores = {m: log_odds(clf.scores(test_feats, m).float().numpy(), SPOOF) for m in ("calm", "sav")}
    scores["probe"] = probe_scores(feats, y, test_feats)
    loo = loo_log_odds(feats, y, NAMES, backbone.layout, backbone.fingerprint, CalmConfig(), NAMES[SPOOF])
    return scores, eer(loo, (y == SPOOF).numpy())[1]


def rates_at(scores: np.ndarray, is_spoof: np.ndarray, threshold: float) -> tuple[float, float]:
    """(miss: spoof let through, false alarm: bonafide flagged) when flagging score >= threshold."""
    return float((scores[is_spoof] < threshold).mean()), float((scores[~is_spoof] >= threshold).mean())


def run_condition(clips: Clips, cond: Condition, backbone, shots: int, args: argparse.Namespace, seed: int) -> dict:
    test = cond.test(clips)
    is_spoof = (clips.y[test] == SPOOF).numpy()
    calls = pseudo_calls(clips, test, args.call_size, args.seed)
    _, _, call_spoof = per_call(np.zeros(len(test)), is_spoof, calls)
    units = ("clip", "call") if int(call_spoof.sum()) >= MIN_POSITIVE_CALLS else ("clip",)
    out: dict = {
        "n_test": {"bonafide": int((~is_spoof).sum()), "spoof": int(is_spoof.sum())},
        "n_calls": {"bonafide": int((~call_spoof).sum()), "spoof": int(call_spoof.sum())},
        **{u: {m: {"auc": [], "eer": [], "min_dcf": []} for m in METHODS} for u in units},
        "calibrated": {u: {"miss": [], "false_alarm": []} for u in units},
        "engines": {e: {m: [] for m in METHODS} for e in cond.test_engines if len(cond.test_engines) > 1},
        "pooled": {m: [] for m in METHODS},
    }
    test_engine = clips.engine[test]
    for idx in support_draws(cond.support_pool(clips), shots, args.draws, seed):
        scores, threshold = method_scores(clips, idx, test, backbone)
        for m, s in scores.items():
            out["pooled"][m].append(s.tolist())
            unit_scores = {"clip": (s, is_spoof)}
            if "call" in units:
                _, call_scores, _ = per_call(s, is_spoof, calls)
                unit_scores["call"] = (call_scores, call_spoof)
            for u, (us, up) in unit_scores.items():
                for k, v in detection_report(us, up).items():
                    if k in out[u][m]:
                        out[u][m][k].append(v)
                if m == "calm":
                    miss, fa = rates_at(us, up, threshold)
                    out["calibrated"][u]["miss"].append(miss)
                    out["calibrated"][u]["false_alarm"].append(fa)
            for e in out["engines"]:
                keep = ~is_spoof | (test_engine == e)
                out["engines"][e][m].append(eer(s[keep], is_spoof[keep])[0])
    out["is_spoof"] = is_spoof.tolist()
    out["calls"] = calls
    return out


# ---- report -----------------------------------------------------------------------------------------
def pct(values: list[float]) -> str:
    m, s = mean_sd(values)
    return f"{100 * m:.1f} ± {100 * s:.1f}"


def num(values: list[float]) -> str:
    m, s = mean_sd(values)
    return f"{m:.3f} ± {s:.3f}"


def paired_pct(a: list[float], b: list[float]) -> str:
    """Mean paired difference in points, with a 95 % interval of the mean."""
    d = [100 * (x - y) for x, y in zip(a, b)]
    m, s = mean_sd(d)
    half = 1.96 * s / math.sqrt(len(d))
    return f"{m:+.1f} [{m - half:+.1f}, {m + half:+.1f}]"


def cells(r: dict, metric: str, fmt) -> list[str]:
    return [fmt(r[u][m][metric]) if u in r else "—" for u in ("clip", "call") for m in METHODS]


HEAD = "| shots | CALM clip | SAV clip | probe clip | CALM call | SAV call | probe call |"
RULE = "|---" * 7 + "|"


def model_report(key: str, res: dict) -> list[str]:
    return [f"### {key}", "", *seen_tables(res), *engine_tables(res), *held_out_tables(res), ""]


def seen_tables(res: dict) -> list[str]:
    seen = res["conditions"]["seen"]
    first = next(iter(seen.values()))
    n, c = first["n_test"], first["n_calls"]
    out = [
        f"{res['layout']}. **Attacks seen**: spoof support drawn from all three engines' pool clips; test: "
        f"{n['bonafide']} bonafide + {n['spoof']} spoof clips, {c['bonafide']} + {c['spoof']} pseudo-calls.",
        "",
        "EER (%), mean ± sd over draws; last two columns: paired difference per clip in points [95 % interval]:",
        "",
        HEAD + " CALM − SAV | CALM − probe |",
        RULE + "---|---|",
    ]
    for shots, r in seen.items():
        clip = r["clip"]
        paired = [paired_pct(clip["calm"]["eer"], clip[m]["eer"]) for m in ("sav", "probe")]
        out.append(f"| {shots} | " + " | ".join(cells(r, "eer", pct) + paired) + " |")
    for metric, name in (("min_dcf", "minDCF (ASVspoof 5 costs)"), ("auc", "ROC AUC")):
        out += ["", f"{name}:", "", HEAD, RULE]
        out += [f"| {shots} | " + " | ".join(cells(r, metric, num)) + " |" for shots, r in seen.items()]
    out += [
        "",
        "CALM at the threshold `calm fit --positive spoof` stores (EER point of leave-one-out support "
        "scores), on the test clips: miss = spoof let through, false alarm = bonafide flagged (%):",
        "",
        "| shots | clip miss | clip false alarm | call miss | call false alarm |",
        "|---|---|---|---|---|",
    ]
    for shots, r in seen.items():
        cal = r["calibrated"]
        rates = [pct(cal[u][k]) for u in ("clip", "call") for k in ("miss", "false_alarm")]
        out.append(f"| {shots} | " + " | ".join(rates) + " |")
    return out


def engine_tables(res: dict) -> list[str]:
    seen = res["conditions"]["seen"]
    first = next(iter(seen.values()))
    engines = list(first["engines"])
    tested = [x for s, x in zip(first["is_spoof"], res["test_engines"]["seen"]) if s]
    out = [
        "",
        "EER (%) per clip, attacks seen, against each engine's spoof test clips alone (all bonafide test clips):",
        "",
        "| shots | "
        + " | ".join(f"{m if m == 'probe' else m.upper()} {e} ({tested.count(e)})" for m in METHODS for e in engines)
        + " |",
        "|---" * (1 + len(METHODS) * len(engines)) + "|",
    ]
    for shots, r in seen.items():
        out.append(f"| {shots} | " + " | ".join(pct(r["engines"][e][m]) for m in METHODS for e in engines) + " |")
    return out


def held_out_tables(res: dict) -> list[str]:
    held_out = [(name.removeprefix("held out "), rows) for name, rows in res["conditions"].items() if name != "seen"]
    out = [
        "",
        "**Attacks held out**: spoof support only from the other two engines; test: the bonafide test clips "
        "against every clip of the held-out engine. EER (%); calibrated: CALM's miss / false alarm (%) per clip "
        f"at the stored threshold. Per call only where the held-out engine makes {MIN_POSITIVE_CALLS} or more "
        "pseudo-calls.",
        "",
        "| held out (spoof clips, calls) | shots | CALM clip | SAV clip | probe clip | CALM call | SAV call "
        "| probe call | calibrated miss / FA |",
        "|---" * 9 + "|",
    ]
    for engine, by_shots in held_out:
        for shots, r in by_shots.items():
            cal = r["calibrated"]["clip"]
            label = f"{engine} ({r['n_test']['spoof']}, {r['n_calls']['spoof']})"
            calibrated = f"{pct(cal['miss'])} / {pct(cal['false_alarm'])}"
            out.append(f"| {label} | {shots} | " + " | ".join(cells(r, "eer", pct) + [calibrated]) + " |")
    out += [
        "",
        "minDCF, attacks held out:",
        "",
        "| held out " + HEAD,
        "|---" + RULE,
    ]
    for engine, by_shots in held_out:
        for shots, r in by_shots.items():
            out.append(f"| {engine} | {shots} | " + " | ".join(cells(r, "min_dcf", num)) + " |")
    return out


def report(results: dict, args: argparse.Namespace, figure: str | None) -> str:
    cmd = f"python bench/spoof.py --draws {args.draws} --call-size {args.call_size} --seed {args.seed}"
    out = [
        "## Results",
        "",
        f"Command: `{cmd}` ({args.seconds:.0f} s). Every row: {args.draws} random support draws (the same draws "
        "for both models); CALM, SAV and the probe are fitted on the same draw. minDCF uses ASVspoof 5's costs "
        "(C_miss = 1 for flagging bona fide speech, C_fa = 10 for letting a spoof through, π_spoof = 0.05); "
        "1.0 is no better than flagging everything or nothing.",
        "",
    ]
    if figure:
        out += [
            f"![DET curves]({figure})",
            "",
            f"DET curves of {args.figure_model} at {args.figure_shots} shots, "
            "attacks seen, the test scores of all draws pooled (per clip solid, per pseudo-call dashed).",
            "",
        ]
    for key, res in results.items():
        out += model_report(key, res)
    return "\n".join(out)


def det_figure(res: dict, shots: int, out: Path, title: str) -> Path:
    r = res["conditions"]["seen"][shots]
    is_spoof = np.array(r["is_spoof"] * len(r["pooled"]["calm"]))
    calls = [f"{d}-{c}" for d in range(len(r["pooled"]["calm"])) for c in r["calls"]]
    curves = []
    for colour, m in zip(("C0", "C1", "C2"), METHODS):
        s = np.concatenate(r["pooled"][m])
        _, cs, cp = per_call(s, is_spoof, calls)
        name = m.upper() if m != "probe" else "probe"
        curves.append(DetCurve(f"{name} per clip", *det_curve(s, is_spoof), eer(s, is_spoof)[0], color=colour))
        curves.append(DetCurve(f"{name} per call", *det_curve(cs, cp), eer(cs, cp)[0], dashed=True, color=colour))
    return plot_det(curves, out, title)


def rounded(x):
    """Per-draw figures to 4 decimals: enough for any table, a quarter of the JSON."""
    if isinstance(x, float):
        return round(x, 4)
    if isinstance(x, dict):
        return {k: rounded(v) for k, v in x.items()}
    if isinstance(x, list):
        return [rounded(v) for v in x]
    return x


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", nargs="+", default=["bundled:whisper-tiny.en", "bundled:whisper-base"])
    p.add_argument("--shots", type=int, nargs="+", default=list(SHOTS))
    p.add_argument("--draws", type=int, default=30)
    p.add_argument("--call-size", type=int, default=4, help="test clips per pseudo-call")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, default=Path("docs/spoof.md"))
    p.add_argument("--figure-model", default="whisper-base")
    p.add_argument("--figure-shots", type=int, default=16)
    args = p.parse_args()
    logging.getLogger("calm_core.method.classifier").setLevel(logging.ERROR)
    t0 = time.perf_counter()
    data = build_devset("spoof")
    results = {}
    for model in args.models:
        backbone = load_backbone(model, LoadOptions())
        clips = load_clips(data, FeatureStore(backbone, default_cache_dir(), batch_size=8))
        key = model.removeprefix("bundled:")
        res: dict = {
            "layout": f"{backbone.layout.n_layers} layers x {backbone.layout.n_heads} heads",
            "conditions": {},
            "test_engines": {},
        }
        for ci, cond in enumerate(CONDITIONS):
            pools = cond.support_pool(clips)
            res["test_engines"][cond.name] = clips.engine[cond.test(clips)].tolist()
            res["conditions"][cond.name] = {}
            for shots in args.shots:
                if shots > min(len(x) for x in pools):
                    continue
                t = time.perf_counter()
                r = run_condition(clips, cond, backbone, shots, args, seed=args.seed * 10_000 + 100 * ci + shots)
                res["conditions"][cond.name][shots] = r
                print(
                    f"{key} · {cond.name} · {shots} shots: EER clip calm {pct(r['clip']['calm']['eer'])} "
                    f"sav {pct(r['clip']['sav']['eer'])} probe {pct(r['clip']['probe']['eer'])} "
                    f"({time.perf_counter() - t:.0f} s)",
                    flush=True,
                )
        results[key] = res
    args.seconds = time.perf_counter() - t0
    figure = None
    if args.figure_model in results and args.figure_shots in results[args.figure_model]["conditions"]["seen"]:
        png = args.out.with_name(args.out.stem + "-det.png")
        det_figure(
            results[args.figure_model],
            args.figure_shots,
            png,
            f"spoof set, {args.figure_model}, {args.figure_shots} shots, attacks seen ({args.draws} draws)",
        )
        figure = png.name
    old = args.out.read_text() if args.out.is_file() else ""
    head = old.split(MARKER)[0] if MARKER in old else ""
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(head + MARKER + "\n\n" + report(results, args, figure) + "\n")
    for res in results.values():  # the per-draw test scores only served the figure
        for by_shots in res["conditions"].values():
            for r in by_shots.values():
                del r["pooled"]
    args.out.with_suffix(".json").write_text(json.dumps(rounded(results)))
    print(f"wrote {args.out} and {args.out.with_suffix('.json')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
