"""Monitoring labels under channel shift: fit on clean support clips, test on the same sounds as a room, a
distance, a background, a codec or a camera microphone delivers them. Writes docs/robustness.md.

    python bench/robustness.py [--models bundled:whisper-tiny.en] [--sets instruments events]
                               [--shots 4 8] [--draws 20] [--out docs/robustness.md]

Test shifts (bench/shifts.py, on the fixed test half; recorded backgrounds from Wesnoth's ambience loops):
  clean    the test clip as it is
  window   inside calmd's 4 s fixed window at a random offset, over a -60 dBFS noise floor
  quiet    30 dB quieter (a far or low-gain microphone)
  room     a room (RT60 0.7 s, direct-to-reverberant 0 dB, early reflections)
  noise    a recorded background (campfire, night, ship) at 10 dB SNR
  far      a larger room (RT60 0.9 s, DRR -5 dB), 25 dB quieter, recorded background at 10 dB SNR
  opus     Opus at 12 kbit/s (WebRTC, VoIP)
  aac      AAC at 24 kbit/s (RTSP cameras, streams)
  g711     a G.711 mu-law telephone line
  camera   a camera microphone (band-pass 250 Hz - 5 kHz, soft compression) with a background at 20 dB SNR
Pipelines (each fitted on the same support draw; `cond` = calm_core.audio.conditioning "sound", `aug` = support
augmented with calm_core.audio.augment's "channels" recipe, copies grouped by recording):
  calm, sav, paper, probe            today's methods on the clips as they are
  calm+cond                          conditioned clips
  calm+aug, calm+cond+aug            augmented support (reliability by grouped leave-one-out)
  sav+cond+aug, probe+cond+aug       the baselines given the same conditioned, augmented support
The augmentation's generators (coloured noise, smooth reverberant tails, band limits, gain) differ from
the test shifts', so a gain here is not the augmentation recognising its own copies.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import shifts
import torch
from common import Features, class_pools, fit_pipeline, fmt, paired_interval, support_draws

from calm_core.audio.augment import augment, recipe_channels
from calm_core.audio.clipsets import label_index, load_examples
from calm_core.audio.conditioning import VERSION, condition
from calm_core.audio.decode import decode_file, load_audio, prepare_clip
from calm_core.backbones import LoadOptions, load_backbone
from calm_core.devsets import build_devset
from calm_core.features import default_cache_dir

MARKER = "<!-- results: written by bench/robustness.py -->"
CALLS_START, CALLS_END = "<!-- calls: written by bench/calls.py -->", "<!-- calls end -->"
PER_CLASS = {"instruments": 40}
AMBIENCE = Path("/usr/share/games/wesnoth/1.16/data/core/sounds/ambient")  # Debian wesnoth-1.16-data
BACKGROUNDS = ("campfire.ogg", "night.ogg", "ship.ogg")
SHIFTS = ("clean", "window", "quiet", "room", "noise", "far", "opus", "aac", "g711", "camera")
PIPELINES = (
    "calm", "sav", "paper", "probe", "calm+cond", "calm+aug", "calm+cond+aug", "sav+cond+aug", "probe+cond+aug",
)  # fmt: skip
RECIPE = "channels"


def load_backgrounds() -> list[np.ndarray]:
    out = []
    for name in BACKGROUNDS:
        path = AMBIENCE / name
        if not path.is_file():
            raise SystemExit(f"{path}: missing; install the Debian package wesnoth-1.16-data")
        samples, rate = decode_file(path)
        out.append(prepare_clip(samples, rate, source=str(path), max_seconds=600.0))
    return out


def test_shift(name: str, backgrounds: list[np.ndarray]) -> Callable[[np.ndarray, np.random.Generator], np.ndarray]:
    def background(rng: np.random.Generator) -> np.ndarray:
        return backgrounds[int(rng.integers(len(backgrounds)))]

    table: dict[str, Callable[[np.ndarray, np.random.Generator], np.ndarray]] = {
        "clean": lambda x, rng: x,
        "window": lambda x, rng: shifts.in_window(x, 4.0, rng),
        "quiet": lambda x, rng: shifts.gain(x, -30.0),
        "room": lambda x, rng: shifts.reverberate(x, shifts.room_rir(rng, 0.7, 0.0)),
        "noise": lambda x, rng: shifts.mix_noise(x, background(rng), 10.0, rng),
        "far": lambda x, rng: shifts.mix_noise(
            shifts.gain(shifts.reverberate(x, shifts.room_rir(rng, 0.9, -5.0)), -25.0), background(rng), 10.0, rng
        ),
        "opus": lambda x, rng: shifts.codec(x, "libopus", 12_000),
        "aac": lambda x, rng: shifts.codec(x, "aac", 24_000),
        "g711": lambda x, rng: shifts.g711(x),
        "camera": lambda x, rng: shifts.mix_noise(shifts.camera_mic(x), background(rng), 20.0, rng),
    }
    return table[name]


def devset_halves(name: str, limit: int = 0) -> tuple[list[str], list, list[int], list, list[int]]:
    """A development set's classes, pool half and test half with their class indices; limit > 0 (a quick run)
    keeps the first `limit` test and 2 * `limit` pool clips of each class."""
    data = build_devset(name, default_cache_dir().parent / "devsets" / f"{name}-bench", PER_CLASS.get(name))
    pool, test = load_examples(data / "pool"), load_examples(data / "test")
    names, y = label_index(pool)
    _, ty = label_index(test, names)
    if limit:

        def first(labels: list[int], n: int) -> list[int]:
            return [i for c in range(len(names)) for i in [j for j, v in enumerate(labels) if v == c][:n]]

        keep, keep_pool = first(ty, limit), first(y, 2 * limit)
        test, ty = [test[i] for i in keep], [ty[i] for i in keep]
        pool, y = [pool[i] for i in keep_pool], [y[i] for i in keep_pool]
    return names, pool, y, test, ty


def evaluate_set(name: str, model: str, args: argparse.Namespace, backgrounds: list[np.ndarray]) -> dict:
    backbone = load_backbone(model, LoadOptions())
    names, pool, y, test, ty = devset_halves(name, args.limit)
    pool_audio = [load_audio(e.path) for e in pool]
    test_audio = [load_audio(e.path) for e in test]
    feats = Features(backbone, default_cache_dir().parent / "bench" / "robustness" / backbone.fingerprint.digest[:16])
    tag = f"{name}:{len(test)}:{len(pool)}"
    # Only what the pipelines asked for is extracted: the conditionings they use, the copies if one augments.
    conds = sorted({"sound" if "+cond" in p else "none" for p in args.pipelines})
    copies = recipe_channels(RECIPE) if any("+aug" in p for p in args.pipelines) else ()
    tests: dict[str, dict[str, torch.Tensor]] = {c: {} for c in conds}
    for k, shift in enumerate(SHIFTS):
        fn = test_shift(shift, backgrounds)
        for cond in conds:

            def shifted(i: int, x: np.ndarray, fn=fn, cond=cond, k=k) -> np.ndarray:  # type: ignore[no-untyped-def]
                return condition(fn(x, np.random.default_rng([i, k])), cond)

            tests[cond][shift] = feats.get(f"test:{tag}:{shift}:{cond}/{VERSION}", test_audio, shifted)
    pool_feats: dict[str, list[torch.Tensor]] = {}
    for cond in conds:
        clean = feats.get(f"pool:{tag}:clean:{cond}/{VERSION}", pool_audio, lambda i, x, c=cond: condition(x, c))
        pool_feats[cond] = [clean]
        for ch in copies:

            def copy(i: int, x: np.ndarray, ch=ch, cond=cond) -> np.ndarray:  # type: ignore[no-untyped-def]
                return condition(augment(x, ch), cond)

            pool_feats[cond].append(feats.get(f"pool:{tag}:{ch}:{cond}/{VERSION}", pool_audio, copy))
    y_t, ty_t = torch.tensor(y), torch.tensor(ty)
    layout = f"{backbone.layout.n_layers} layers x {backbone.layout.n_heads} heads"
    res: dict = {"classes": names, "pool": len(pool), "test": len(test), "layout": layout, "shots": {}}
    for shots in args.shots:
        t0 = time.perf_counter()
        acc: dict[str, dict[str, list[float]]] = {p: {s: [] for s in SHIFTS} for p in args.pipelines}
        for idx in support_draws(class_pools(y_t, len(names)), shots, args.draws, args.seed + shots):
            for pipeline in args.pipelines:
                cond = "sound" if "+cond" in pipeline else "none"
                copies = pool_feats[cond] if "+aug" in pipeline else pool_feats[cond][:1]
                support = torch.cat([c[idx] for c in copies])
                labels = y_t[idx].repeat(len(copies))
                groups = torch.arange(len(idx)).repeat(len(copies)) if len(copies) > 1 else None
                fitted = fit_pipeline(pipeline, support, labels, names, backbone, groups)
                preds = {shift: fitted.predict(t) for shift, t in tests[cond].items()}
                for s, p in preds.items():
                    acc[pipeline][s].append(float((p == ty_t).float().mean()))
        res["shots"][shots] = acc
        line = " ".join(f"{p} {ood_mean(acc[p]):.3f}/{np.mean(acc[p]['clean']):.3f}" for p in args.pipelines)
        print(f"{name} · {model} · {shots} shots ({time.perf_counter() - t0:.0f} s): clean→OOD mean {line}", flush=True)
    return res


def ood_mean(by_shift: dict[str, list[float]]) -> float:
    """Mean accuracy over the shifted conditions (every shift but clean), averaged over draws."""
    return float(np.mean([np.mean(v) for s, v in by_shift.items() if s != "clean"]))


def per_draw_ood(by_shift: dict[str, list[float]]) -> list[float]:
    draws = len(by_shift["clean"])
    return [float(np.mean([by_shift[s][d] for s in by_shift if s != "clean"])) for d in range(draws)]


def paired(a: list[float], b: list[float]) -> str:
    m, lo, hi = paired_interval(a, b)
    return f"{m:+.3f} [{lo:+.3f}, {hi:+.3f}]"


def report(results: dict, args: argparse.Namespace) -> str:
    out = ["## Results", "",
           f"Command: `python bench/robustness.py --draws {args.draws}`. Accuracy, mean ± sd over {args.draws} "
           "support draws from the pool half; every pipeline is fitted on the same draw and tested on the same "
           "shifted test clips. **OOD** is the mean over the nine shifted conditions (all but clean), per draw. "
           "Paired differences are per draw: mean [95 % interval of the mean].", ""]  # fmt: skip
    for key, res in results.items():
        out += [f"### {key}", "", f"{len(res['classes'])} classes ({', '.join(res['classes'])}); pool {res['pool']} "
                f"clips, test {res['test']}; {res['layout']}.", ""]  # fmt: skip
        for shots, acc in res["shots"].items():
            out += [f"**{shots} shots**", "", "| pipeline | " + " | ".join(SHIFTS) + " | OOD |",
                    "|---" * (len(SHIFTS) + 2) + "|"]  # fmt: skip
            for p in acc:
                cells = [f"{np.mean(acc[p][s]):.3f}" for s in SHIFTS]
                out.append(f"| {p} | " + " | ".join(cells) + f" | {fmt(per_draw_ood(acc[p]))} |")
            base = "calm" if "calm" in acc else next(iter(acc))  # today's method, else the first pipeline
            base_ood, base_clean = per_draw_ood(acc[base]), acc[base]["clean"]
            out += ["", f"Paired against `{base}` (OOD / clean):", ""]
            for p in [p for p in acc if p != base]:
                out.append(f"- {p}: OOD {paired(per_draw_ood(acc[p]), base_ood)}; clean "
                           f"{paired(acc[p]['clean'], base_clean)}")  # fmt: skip
            out.append("")
    return "\n".join(out)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", nargs="+", default=["bundled:whisper-tiny.en"])
    p.add_argument("--sets", nargs="+", default=["instruments", "events"])
    p.add_argument("--shots", type=int, nargs="+", default=[4, 8])
    p.add_argument("--draws", type=int, default=20)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--limit", type=int, default=0, help="quick run: N test and 2N pool clips per class")
    p.add_argument("--pipelines", nargs="+", default=list(PIPELINES), help="e.g. calm[top_k=40]+cond+aug")
    p.add_argument("--out", type=Path, default=Path("docs/robustness.md"))
    args = p.parse_args()
    logging.getLogger("calm_core.method.classifier").setLevel(logging.ERROR)
    backgrounds = load_backgrounds()
    results = {}
    for model in args.models:
        for name in args.sets:
            results[f"{name} · {model.removeprefix('bundled:')}"] = evaluate_set(name, model, args, backgrounds)
    old = args.out.read_text() if args.out.is_file() else ""
    head = old.split(MARKER)[0] if MARKER in old else ""
    # bench/calls.py's section, between its own markers, is kept as it is
    calls = old[old.index(CALLS_START) : old.index(CALLS_END) + len(CALLS_END)] if CALLS_END in old else ""
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(head + MARKER + "\n\n" + report(results, args) + "\n" + (f"\n{calls}\n" if calls else ""))
    args.out.with_suffix(".json").write_text(json.dumps(results, indent=1))
    print(f"wrote {args.out} and {args.out.with_suffix('.json')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
