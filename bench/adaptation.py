"""Teaching calm where it listens: the site-adaptation curve. Fit on clean clips from elsewhere, add m clips
per class as the site hears them (m = 0, 1, 2, 4), test on other recordings as the site hears them.
Writes the headline section of docs/robustness.md (between its own markers) and docs/site.json.

    python bench/adaptation.py [--model bundled:whisper-tiny.en] [--shots 8] [--site-clips 0 1 2 4] [--draws 20]

Monitoring (instruments, events): a site is every shift at once, as a camera or a microphone across a room
gives it: its own room (reverberation, distance), its own recorded background heard before, during and
after the sound (room tone), its own band and codec, and (one site) mains hum. Site clips for the support
are other recordings of the pool, through the same site (other random draws of its room and background);
the test half goes through it too. Nothing of a site is in the support at m = 0.

Calls (the `calls` set): every (held-out synthesiser, held-out human source) pair. The support holds `shots`
clips per class of the other sources; the site adds m clips of the new engine and m clips of the held-out
human source (its pool half), and the test is their other half, in calls of 4 clips. `merged` puts the
engine's clips into `spoof` (one prototype averages them away); `sub` teaches them as a class of their own,
`spoof/new`, inside the positive group (what `calm add --label spoof/new` or `calm add --positive` does).
Thresholds: the EER point of leave-one-out support scores, as `calm fit --positive spoof` stores it.

Pipelines: calm (clips as they are), calm+cond (conditioning "sound"), sav, paper (the paper's preset), probe
(logistic regression on all heads, L2-normalised: a discriminative reference, not offered by calmd).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import shifts
import torch
from common import Features, class_pools, fit_pipeline, mean_sd, paired_interval, support_draws
from robustness import devset_halves, load_backgrounds

from calm_core.audio.conditioning import VERSION, condition
from calm_core.audio.decode import SAMPLE_RATE, load_audio
from calm_core.audio.telephone import band_limit
from calm_core.backbones import LoadOptions, load_backbone
from calm_core.devsets import build_devset, default_devset_dir
from calm_core.devsets.calls import GENUINE_SOURCES, SPOOF_SOURCES
from calm_core.features import default_cache_dir
from calm_core.method.calibration import loo_log_odds
from calm_core.method.detection import eer, per_call

START, END = "<!-- site: written by bench/adaptation.py -->", "<!-- site end -->"
MONITOR_PIPELINES = ("calm", "calm+cond", "calm+probe", "calm+cond+probe", "sav", "paper", "probe")
CALL_PIPELINES = ("calm merged", "calm split", "calm sub", "calm+probe sub", "sav sub", "paper sub", "probe merged")
THRESHOLDED = ("calm merged", "calm split", "calm sub", "calm+probe sub")
THRESHOLD_RULES = ("stored", "taught only", "taught weighted", "class midpoint", "test EER")


@dataclass(frozen=True)
class Site:
    """One place calm listens at: everything at once."""

    name: str
    rt60_s: float
    drr_db: float  # direct-to-reverberant ratio: lower is farther
    background: int  # which recorded background (robustness.BACKGROUNDS)
    snr_db: float  # sound over the background, jittered by +-3 dB per clip
    band: tuple[float, float]  # Hz
    codec: tuple[str, int] | None  # FFmpeg encoder and bit rate
    hum_db: float | None = None  # 50 Hz mains hum (and harmonics) relative to the sound's level
    tone_s: float = 0.75  # room tone before and after the sound


SITES = (
    Site("hall camera", 0.9, -5.0, 0, 10.0, (250.0, 5000.0), ("aac", 24_000)),
    Site("far mic", 0.7, -3.0, 1, 8.0, (150.0, 6000.0), ("libopus", 16_000), hum_db=-30.0),
    Site("kitchen phone", 0.4, 3.0, 2, 15.0, (300.0, 3400.0), ("libopus", 12_000)),
)


def at_site(x: np.ndarray, site: Site, backgrounds: list[np.ndarray], rng: np.random.Generator) -> np.ndarray:
    """x as heard at the site: room tone, room, background, hum, band and codec."""
    pad = np.zeros(int(site.tone_s * SAMPLE_RATE), np.float32)
    y = np.concatenate([pad, x.astype(np.float32), pad])
    rt60 = site.rt60_s * float(rng.uniform(0.8, 1.2))
    y = shifts.reverberate(y, shifts.room_rir(rng, rt60, site.drr_db))
    y = shifts.mix_noise(y, backgrounds[site.background], site.snr_db + float(rng.uniform(-3, 3)), rng)
    if site.hum_db is not None:
        t = np.arange(y.size) / SAMPLE_RATE
        hum = sum(np.sin(2 * np.pi * f * t + rng.uniform(0, 2 * np.pi)) / k for k, f in enumerate((50, 100, 150), 1))
        level = shifts.rms(y) * 10 ** (site.hum_db / 20)
        y = y + (hum / max(shifts.rms(hum), 1e-9) * level).astype(np.float32)
    y = band_limit(y, SAMPLE_RATE, *site.band).astype(np.float32)
    if site.codec is not None:
        y = shifts.codec(y, *site.codec)
    peak = float(np.max(np.abs(y))) if y.size else 0.0
    return (y / peak * 0.9).astype(np.float32) if peak > 0.99 else y


# ---- monitoring ---------------------------------------------------------------------------------------------
def monitor(name: str, backbone, args: argparse.Namespace, backgrounds: list[np.ndarray]) -> dict:  # type: ignore[no-untyped-def]
    names, pool, y, test, ty = devset_halves(name, args.limit)
    pool_audio = [load_audio(e.path) for e in pool]
    test_audio = [load_audio(e.path) for e in test]
    store = Features(backbone, default_cache_dir().parent / "bench" / "site" / backbone.fingerprint.digest[:16])
    tag = f"{name}:{len(test)}:{len(pool)}"
    sites = [s for s in SITES if s.name in args.sites]
    conds = sorted({"sound" if "+cond" in p else "none" for p in args.pipelines})
    feats: dict = {}
    for cond in conds:
        feats[("pool", "clean", cond)] = store.get(f"pool:{tag}:clean:{cond}/{VERSION}", pool_audio,
                                                   lambda i, x, c=cond: condition(x, c))  # fmt: skip
        feats[("test", "clean", cond)] = store.get(f"test:{tag}:clean:{cond}/{VERSION}", test_audio,
                                                   lambda i, x, c=cond: condition(x, c))  # fmt: skip
        for site in sites:
            k = SITES.index(site)  # the seeds stay with the site whichever sites run
            for part, audio, salt in (("pool", pool_audio, 2), ("test", test_audio, 1)):

                def heard(i: int, x: np.ndarray, site=site, k=k, salt=salt, c=cond) -> np.ndarray:  # type: ignore[no-untyped-def]
                    return condition(at_site(x, site, backgrounds, np.random.default_rng([i, k, salt])), c)

                feats[(part, site.name, cond)] = store.get(f"{part}:{tag}:{site.name}:{cond}/{VERSION}", audio, heard)
        print(f"{name}: features ({cond}) ready", flush=True)
    y_t, ty_t = torch.tensor(y), torch.tensor(ty)
    pools = class_pools(y_t, len(names))
    # acc[pipeline][site][m] = per-draw accuracies; site "clean" is the in-domain reference (m = 0 only)
    acc: dict = {p: {s.name: {m: [] for m in args.site_clips} for s in sites} for p in args.pipelines}
    for p in args.pipelines:
        acc[p]["clean"] = {0: []}
    t0 = time.perf_counter()
    gen = torch.Generator().manual_seed(args.seed + 17)
    for draw, idx in enumerate(support_draws(pools, args.shots, args.draws, args.seed + args.shots)):
        # The site clips of this draw: other recordings than the support's, the same for every pipeline and site.
        rest = [p[~torch.isin(p, idx)] for p in pools]
        site_idx = [r[torch.randperm(len(r), generator=gen)[: max(args.site_clips)]] for r in rest]
        for p in args.pipelines:
            method, cond = p.replace("+cond", ""), "sound" if "+cond" in p else "none"
            clean_sup, clean_lab = feats[("pool", "clean", cond)][idx], y_t[idx]
            # m = 0: the same at every site
            predict0 = fit_pipeline(method, clean_sup, clean_lab, names, backbone).predict
            acc[p]["clean"][0].append(float((predict0(feats[("test", "clean", cond)]) == ty_t).float().mean()))
            for site in sites:
                test_feats = feats[("test", site.name, cond)]
                for m in args.site_clips:
                    predict = predict0
                    if m:
                        extra = torch.cat([s[:m] for s in site_idx])
                        sup = torch.cat([clean_sup, feats[("pool", site.name, cond)][extra]])
                        predict = fit_pipeline(method, sup, torch.cat([clean_lab, y_t[extra]]), names, backbone).predict
                    acc[p][site.name][m].append(float((predict(test_feats) == ty_t).float().mean()))
        if draw == 0:
            print(f"{name}: first draw {time.perf_counter() - t0:.0f} s", flush=True)
    return {"classes": names, "pool": len(pool), "test": len(test), "acc": acc,
            "layout": f"{backbone.layout.n_layers} layers x {backbone.layout.n_heads} heads"}  # fmt: skip


# ---- calls --------------------------------------------------------------------------------------------------
def calls(backbone, args: argparse.Namespace, shots: int) -> dict:  # type: ignore[no-untyped-def]
    data_dir = build_devset("calls")
    if args.per_source:  # a quick run on a smaller build of the set (the one bench/calls.py --per-source makes)
        data_dir = build_devset("calls", Path(f"{default_devset_dir('calls')}-{args.per_source}"), args.per_source)
    manifest = json.loads((data_dir / "manifest.json").read_text())["clips"]
    paths = [data_dir / c["file"] for c in manifest]
    is_spoof = np.array([c["class"] == "spoof" for c in manifest])
    source = np.array([c["source"] for c in manifest])
    split = np.array([c["split"] for c in manifest])
    store = Features(backbone, default_cache_dir().parent / "bench" / "calls" / backbone.fingerprint.digest[:16])
    key = f"calls-{args.per_source}" if args.per_source else "calls"  # bench/calls.py's key: one cache for both
    feats = store.get(f"{key}:none", [load_audio(p) for p in paths], lambda i, x: x)
    rng = np.random.default_rng(args.seed)
    # fa/miss: at the stored threshold; rules: at the other places a threshold could sit (THRESHOLDED only)
    rows: dict = {p: {m: {"call_eer": [], "clip_eer": [], "fa": [], "miss": [],
                          **({"rules": {r: {"fa": [], "miss": []} for r in THRESHOLD_RULES[1:]}}
                             if p in THRESHOLDED else {})}
                      for m in args.call_site_clips} for p in CALL_PIPELINES}  # fmt: skip
    t0 = time.perf_counter()
    for s in SPOOF_SOURCES:
        for g in GENUINE_SOURCES:
            seen_g = np.flatnonzero(~is_spoof & (source != g))
            seen_s = np.flatnonzero(is_spoof & (source != s))
            site_g = np.flatnonzero((source == g) & (split == "pool"))
            site_s = np.flatnonzero((source == s) & (split == "pool"))
            test_g = np.flatnonzero((source == g) & (split == "test"))
            test_s = np.flatnonzero((source == s) & (split == "test"))
            test = np.r_[test_g, test_s]
            positive = np.r_[np.zeros(test_g.size, bool), np.ones(test_s.size, bool)]
            call_ids = [f"g{k // 4}" for k in range(test_g.size)] + [f"s{k // 4}" for k in range(test_s.size)]
            for _ in range(args.call_draws):
                base = np.r_[rng.choice(seen_g, shots, replace=False),
                             rng.choice(seen_s, shots, replace=False)]  # fmt: skip
                add_g = rng.permutation(site_g)
                add_s = rng.permutation(site_s)
                for m in args.call_site_clips:
                    sup = np.r_[base, add_g[:m], add_s[:m]]
                    merged = np.r_[is_spoof[base], np.zeros(m, bool), np.ones(m, bool)].astype(int)
                    sub = merged.copy()
                    sub[len(base) + m :] = 2  # the new engine as a class of its own
                    for p in CALL_PIPELINES:
                        labels = sub if (p.endswith("sub") and m > 0) else merged
                        names = ["bonafide", "spoof", "spoof/new"][: int(labels.max()) + 1]
                        scores, loo = _call_scores(p, feats, sup, labels, names, test, backbone)
                        _, call_scores, call_pos = per_call(scores, positive, call_ids)
                        r = rows[p][m]
                        r["clip_eer"].append(eer(scores, positive)[0])
                        r["call_eer"].append(eer(call_scores, call_pos)[0])
                        if loo is None:
                            continue
                        rules = threshold_rules(loo, labels > 0, len(base), call_scores, call_pos)
                        for rule, t in rules.items():
                            at = r if rule == "stored" else r["rules"][rule]
                            at["fa"].append(float(np.mean(call_scores[~call_pos] >= t)))
                            at["miss"].append(float(np.mean(call_scores[call_pos] < t)))
        print(f"calls: engine {s} done ({time.perf_counter() - t0:.0f} s)", flush=True)
    return {"rows": rows, "shots": shots,
            "layout": f"{backbone.layout.n_layers} layers x {backbone.layout.n_heads} heads"}  # fmt: skip


def _call_scores(p: str, feats: torch.Tensor, sup: np.ndarray, labels: np.ndarray, names: list[str],
                 test: np.ndarray, backbone) -> tuple[np.ndarray, np.ndarray | None]:  # type: ignore[no-untyped-def]  # fmt: skip
    method = p.split()[0]
    lab = torch.from_numpy(labels).long()
    if method == "probe":  # the spoof group against the rest
        return fit_pipeline(method, feats[sup], (lab > 0).long(), names, backbone).positive_score(feats[test], []), None
    fitted = fit_pipeline(method, feats[sup], lab, names, backbone, split=p.endswith("split"))
    clf = fitted.clf
    assert clf is not None
    scores = fitted.positive_score(feats[test], ["spoof"])
    if p not in THRESHOLDED:
        return scores, None
    # As calm_core.method.calibration.calibrate does it: the fitted (sub-)classes, no new split.
    config, units = replace(clf.config, split="none"), clf.support_labels
    assert units is not None
    return scores, loo_log_odds(feats[sup], units, clf.labels, backbone.layout, backbone.fingerprint, config, ["spoof"])


def threshold_rules(loo: np.ndarray, is_spoof: np.ndarray, n_base: int, call_scores: np.ndarray,
                    call_pos: np.ndarray) -> dict[str, float]:  # fmt: skip
    """Where a detector's threshold could sit, from the support's leave-one-out scores (the site's m clips of each
    kind come after the n_base others). `stored` is what calm fit stores; `test EER` is no rule but the floor:
    the EER point of the test calls themselves."""
    taught, n_taught = slice(n_base, None), loo.size - n_base
    reps = np.r_[np.ones(n_base, int), np.full(n_taught, max(1, round(n_base / max(1, n_taught))))]
    stored = eer(loo, is_spoof)[1]
    return {
        "stored": stored,
        # 2 taught clips of each kind at least: an EER point of their own
        "taught only": eer(loo[taught], is_spoof[taught])[1] if n_taught >= 4 else stored,
        "taught weighted": eer(np.repeat(loo, reps), np.repeat(is_spoof, reps))[1],
        "class midpoint": float(np.median(loo[is_spoof]) + np.median(loo[~is_spoof])) / 2,
        "test EER": eer(call_scores, call_pos)[1],
    }


# ---- report -------------------------------------------------------------------------------------------------
def pm(values: list[float], scale: float = 1.0) -> str:
    m, s = mean_sd([scale * v for v in values])
    return f"{m:.3f} ± {s:.3f}" if scale == 1.0 else f"{m:.1f} ± {s:.1f}"


def diff(a: list[float], b: list[float], scale: float = 1.0) -> str:
    m, lo, hi = paired_interval([scale * v for v in a], [scale * v for v in b])
    return f"{m:+.3f} [{lo:+.3f}, {hi:+.3f}]" if scale == 1.0 else f"{m:+.1f} [{lo:+.1f}, {hi:+.1f}]"


def int_keys(value: Any) -> Any:
    """site.json as it was written: JSON made the m keys ("0", "2") strings."""
    if isinstance(value, dict):
        return {int(k) if isinstance(k, str) and k.isdigit() else k: int_keys(v) for k, v in value.items()}
    return value


def calls_section(res: dict, args: argparse.Namespace, first: bool) -> list[str]:
    """The report of one calls run; first: the headline run, the others a larger support from elsewhere."""
    rows, cms, shots = res["rows"], args.call_site_clips, res["shots"]
    title = ("calls: a new engine and a new voice taught at the site" if first
             else f"calls, a larger support from elsewhere (`--call-shots {shots}`)")  # fmt: skip
    n_folds = len(SPOOF_SOURCES) * len(GENUINE_SOURCES)
    out = [f"### {title} ({res['layout']})", "",
            f"{n_folds} folds (held-out engine × held-out human source), {args.call_draws} draws each; support "
            f"{shots} clips per class from the other sources, plus m clips of the new engine and m of "
            "the new human source. Per-call EER %, and at the stored threshold genuine calls flagged % and "
            "synthetic calls missed %, mean ± sd over folds × draws.", "",
            "| pipeline | " + " | ".join(f"call EER, m = {m}" for m in cms) + " | "
            + " | ".join(f"flagged / missed, m = {m}" for m in cms) + " |",
            "|---" * (1 + 2 * len(cms)) + "|"]  # fmt: skip
    for p in CALL_PIPELINES:
        cells = [pm(rows[p][m]["call_eer"], 100) for m in cms]
        cells += [f"{100 * np.mean(rows[p][m]['fa']):.1f} / {100 * np.mean(rows[p][m]['miss']):.1f}"
                  if rows[p][m]["fa"] else "–" for m in cms]  # fmt: skip
        out.append(f"| {p} | " + " | ".join(cells) + " |")
    big, base = cms[-1], rows["calm merged"][cms[-1]]["call_eer"]
    out += ["", f"Paired call-EER differences at m = {big} (points): "
            + "; ".join(f"{p} − calm merged {diff(rows[p][big]['call_eer'], base, 100)}"
                        for p in CALL_PIPELINES[1:]), ""]  # fmt: skip
    taught = [m for m in cms if m]
    out += [
        "Where the threshold sits, for calm merged: genuine calls flagged % / synthetic calls missed %, "
        "mean over folds × draws, for rules that use only the support's leave-one-out scores (`stored` is "
        "what `calm fit --positive` stores; `taught only` sets the EER point on the site's m clips of each "
        "kind; `taught weighted` counts them as much as the other support clips; `class midpoint` is "
        "halfway between the two classes' median scores) and, as the floor no rule can see, the test calls' "
        "own EER point.",
        "",
        "| rule | " + " | ".join(f"m = {m}" for m in taught) + " |",
        "|---" * (1 + len(taught)) + "|",
    ]
    for rule in THRESHOLD_RULES:
        points = [rows["calm merged"][m] if rule == "stored" else rows["calm merged"][m]["rules"][rule] for m in taught]
        out.append(f"| {rule} | " + " | ".join(f"{100 * np.mean(c['fa']):.1f} / {100 * np.mean(c['miss']):.1f}"
                                              for c in points) + " |")  # fmt: skip
    out.append("")
    return out


def report(results: dict, args: argparse.Namespace) -> str:
    ms = args.site_clips
    sites = [s for s in SITES if s.name in args.sites]
    out = [START, "", "## Teaching at the site: the adaptation curve", "",
           f"Command: `python bench/adaptation.py --draws {args.draws}` ({args.model.removeprefix('bundled:')}). "
           f"Support: {args.shots} clean clips per class from the pool half, plus m clips per class as the site "
           "hears them (other recordings, the same site); test: the test half as the site hears it. A site is "
           "every shift at once: " + "; ".join(
               f"**{s.name}** (RT60 {s.rt60_s} s, DRR {s.drr_db:+.0f} dB, recorded background at {s.snr_db:.0f} "
               f"dB SNR heard {s.tone_s} s before and after the sound, {s.band[0]:.0f}–{s.band[1]:.0f} Hz"
               + (f", {s.codec[0].replace('lib', '')} {s.codec[1] // 1000} kbit/s" if s.codec else "")
               + (f", mains hum at {s.hum_db:.0f} dB" if s.hum_db is not None else "") + ")" for s in sites)
           + f". Accuracy, mean ± sd over {args.draws} support draws (the site clips drawn anew each time); "
           "paired differences are per draw, mean [95 % interval].", ""]  # fmt: skip
    for name, res in results.get("monitor", {}).items():
        acc = res["acc"]
        out += [f"### {name} ({len(res['classes'])} classes, pool {res['pool']}, test {res['test']}, "
                f"{res['layout']})", "",
                "| pipeline | clean, in domain | " + " | ".join(f"{s.name}, m = {m}" for s in sites for m in ms)
                + " | worst site, m = 0 | worst site, m = 2 |",
                "|---" * (2 + len(sites) * len(ms) + 2) + "|"]  # fmt: skip
        for p in acc:
            cells = [f"{np.mean(acc[p]['clean'][0]):.3f}"]
            cells += [f"{np.mean(acc[p][s.name][m]):.3f}" for s in sites for m in ms]
            worst = [min(np.mean(acc[p][s.name][m]) for s in sites) for m in (0, 2) if m in ms]
            out.append(f"| {p} | " + " | ".join(cells + [f"{w:.3f}" for w in worst]) + " |")
        out += ["", "Paired against `calm` (per site, m = 0 and the largest m):", ""]
        for p in [p for p in acc if p != "calm"] if "calm" in acc else []:
            parts = [f"{s.name} m={m}: {diff(acc[p][s.name][m], acc['calm'][s.name][m])}"
                     for s in sites for m in (0, ms[-1])]  # fmt: skip
            out.append(f"- {p}: " + "; ".join(parts))
        if "calm" in acc and 2 in ms:
            gains = [f"{s.name}: {diff(acc['calm'][s.name][2], acc['calm'][s.name][0])}" for s in sites]
            out += ["", "What 2 site clips per class buy `calm` (paired, m = 2 − m = 0): " + "; ".join(gains), ""]
    for key in sorted(k for k in results if k.startswith("calls")):
        out += calls_section(results[key], args, first=key == "calls")
    out.append(END)
    return "\n".join(out)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="bundled:whisper-tiny.en")
    p.add_argument("--sets", nargs="+", default=["instruments", "events", "calls"],
                   help="what to run; the others keep their last results from site.json beside --out")  # fmt: skip
    p.add_argument("--shots", type=int, default=8)
    p.add_argument("--site-clips", type=int, nargs="+", default=[0, 1, 2, 4])
    p.add_argument("--draws", type=int, default=20)
    p.add_argument("--call-shots", type=int, nargs="+", default=[8, 24], help="base support per class, one run each")
    p.add_argument("--call-site-clips", type=int, nargs="+", default=[0, 2, 8])
    p.add_argument("--call-draws", type=int, default=2, help="support draws per fold (16 folds)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--pipelines", nargs="+", default=list(MONITOR_PIPELINES), choices=MONITOR_PIPELINES)
    p.add_argument("--sites", nargs="+", default=[s.name for s in SITES], choices=[s.name for s in SITES])
    p.add_argument("--limit", type=int, default=0, help="quick run: N test and 2N pool clips per class")
    p.add_argument("--per-source", type=int, default=0, help="quick run: the calls set built with N clips per source")
    p.add_argument("--out", type=Path, default=Path("docs/robustness.md"))
    args = p.parse_args()
    logging.getLogger("calm_core.method.classifier").setLevel(logging.ERROR)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    backbone = load_backbone(args.model, LoadOptions())
    stored = args.out.with_name("site.json")
    results: dict = int_keys(json.loads(stored.read_text())) if stored.is_file() else {}
    results.setdefault("monitor", {})
    kept = [k for k in results["monitor"] if k not in args.sets]
    kept += [k for k in results if k.startswith("calls") and "calls" not in args.sets]
    if kept:
        print(f"kept from {stored}: {', '.join(kept)}", flush=True)
    backgrounds = load_backgrounds()
    for name in args.sets:
        if name == "calls":
            for k in [k for k in results if k.startswith("calls")]:
                del results[k]
            for i, shots in enumerate(args.call_shots):
                results["calls" if i == 0 else f"calls_{shots}"] = calls(backbone, args, shots)
        else:
            results["monitor"][name] = monitor(name, backbone, args, backgrounds)
        stored.write_text(json.dumps(results, indent=1, default=float))
    text = report(results, args)
    old = args.out.read_text() if args.out.is_file() else ""
    if START in old and END in old:
        text = old.split(START)[0] + text + old.split(END, 1)[1]
    else:
        marker = "\n## "  # the headline goes before the first section
        head, _, tail = old.partition(marker)
        text = head + text + "\n\n" + (marker.lstrip("\n") + tail if tail else "")
    args.out.write_text(text)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
