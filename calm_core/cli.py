"""The `calm` command: fit, add, eval, classify, heads, demo."""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch

from .augment import DEFAULT_RECIPE, RECIPES, SUGGESTED_RECIPE
from .backbones import LoadOptions, load_backbone
from .backbones.base import DTYPES, Backbone
from .calm import SCHEMES
from .channels import CHANNELS, Preprocessing
from .classifier import (
    ABSTAIN_MODES,
    COMBINERS,
    PRESETS,
    RELIABILITY_FROM,
    SPLITS,
    CalmClassifier,
    CalmConfig,
    group_members,
)
from .cli_help import add_global_flags, finish_subcommands, installed_version
from .conditioning import CONDITIONINGS, DEFAULT_CONDITIONING
from .errors import CalmError
from .features import FeatureStore, default_cache_dir
from .refit import FitRecord, clips_of, fit_classifier
from .subclasses import as_group

log = logging.getLogger("calm")


def _model_args(p: argparse.ArgumentParser, required: bool) -> None:
    p.add_argument(
        "--model",
        required=required,
        help="model folder, a hub id already in the local cache, bundled:whisper-tiny.en or bundled:whisper-base",
    )
    p.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N (default cpu)")
    p.add_argument(
        "--dtype",
        choices=DTYPES,
        default=None,
        help="precision (default: the backbone's for the device: Qwen2-Audio nf4 on CUDA, fp32 on CPU)",
    )
    p.add_argument("--batch-size", type=int, default=4, help="clips per forward pass (default 4)")
    p.add_argument("--cache-dir", type=Path, default=default_cache_dir(), help="feature cache folder")
    p.add_argument("--no-cache", action="store_true", help="neither read nor write the feature cache")


def _open_backbone(args: argparse.Namespace, load_layers: int | None, dtype: str | None = None) -> Backbone:
    dtype = dtype or args.dtype
    prompt = Path(args.prompt_file).read_text() if getattr(args, "prompt_file", None) else None
    options = LoadOptions(device=args.device, dtype=dtype, prompt=prompt, load_layers=load_layers)  # type: ignore[arg-type]
    return load_backbone(args.model, options)


def _store(args: argparse.Namespace, backbone: Backbone, prep: Preprocessing) -> FeatureStore:
    return FeatureStore(backbone, None if args.no_cache else args.cache_dir, args.batch_size, prep)


def _top_k(text: str) -> int | str:
    if text == "auto":
        return "auto"
    try:
        k = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: expected a number of heads, 0 for all, or auto") from None
    if k < 0:
        raise argparse.ArgumentTypeError(f"{text!r}: the number of heads must be >= 0")
    return k


def cmd_fit(args: argparse.Namespace) -> int:
    from .data import label_index, load_examples

    given = {
        "tau": args.tau,
        "scheme": args.scheme,
        "tau_w": args.tau_w,
        "top_k": args.top_k,
        "prior_strength": args.prior_strength,
        "sav_shrinkage": args.sav_shrinkage,
        "reliability_from": args.reliability_from,
        "alpha": args.alpha,
        "sav_heads": args.sav_heads,
        "max_layer": args.max_layer,
        "abstain": args.abstain,
        "abstain_keep": args.abstain_keep,
        "split": args.split,
        "combiner": args.combiner,
    }
    # Options given on the command line override the preset's values.
    config = replace(PRESETS[args.preset], **{k: v for k, v in given.items() if v is not None})
    if args.top_k == 0:
        config = replace(config, top_k=None)
    support = load_examples(args.support)
    labels, y = label_index(support)
    if args.positive:
        from .calibration import parse_rule

        group_members(labels, args.positive)  # refuse a wrong class (or rule) before extracting features
        parse_rule(args.calibrate)
    elif args.calibrate != "eer":
        raise CalmError("--calibrate sets the threshold for --positive CLASS: give the positive class too")
    val = load_examples(args.val) if args.val else None
    load_layers = None if config.max_layer is None else config.max_layer + 1
    backbone = _open_backbone(args, load_layers)
    # The paper preset is the paper's method: clips as they are, no augmentation, unless asked for. A detector
    # (--positive, e.g. spoof) keeps them too: the level and edges of speech are evidence there (docs/robustness.md).
    plain = args.preset == "paper"
    conditioning = args.conditioning or ("none" if plain or args.positive else DEFAULT_CONDITIONING)
    augmentation = args.augment or ("none" if plain else DEFAULT_RECIPE)
    prep = Preprocessing(args.channel, conditioning)
    store = _store(args, backbone, prep)
    feats = store.extract_copies([e.path for e in support], augmentation, progress=not args.quiet, desc="support")
    val_feats = val_y = None
    if val:
        val_feats = store.extract([e.path for e in val], progress=not args.quiet, desc="validation")
        val_y = label_index(val, labels)[1]
    # What `calm add` needs to refit with these exact settings later.
    record = FitRecord(
        support=clips_of([e.path for e in support], [e.label for e in support]),
        validation=clips_of([e.path for e in val], [e.label for e in val]) if val else (),
        layers=backbone.loaded_layers, prompt=Path(args.prompt_file).read_text() if args.prompt_file else None,
        device=args.device, cache_dir=None if args.no_cache else str(Path(args.cache_dir).expanduser().resolve()),
        positive=tuple(args.positive or ()), calibrate=args.calibrate,
    )  # fmt: skip
    model_path = str(Path(args.model).expanduser().resolve()) if Path(args.model).exists() else args.model
    clf = fit_classifier(
        feats, y, labels, backbone.layout, backbone.fingerprint, config, record, model_path, prep,
        val_feats, val_y, augmentation,
    )  # fmt: skip
    clf.save(args.out)
    summary = {
        "classifier": str(args.out),
        "classes": labels,
        "support": len(support),
        "validation": len(val) if val else 0,
        "preset": args.preset,
        "reliability": clf.info["reliability_source"],
        "top_k": clf.info["top_k"],
        "heads_kept": int(clf.heads.numel()),
        "conditioning": conditioning,
        "augmentation": augmentation,
        "exit_layer": clf.exit_layer,
        "n_layers": backbone.layout.n_layers,
        "cache": {"hits": store.hits, "misses": store.misses},
    }
    if "decision" in clf.info:
        summary["decision"] = clf.info["decision"]
    print(json.dumps(summary, indent=2))
    return 0


def cmd_add(args: argparse.Namespace) -> int:
    clf = CalmClassifier.load(args.classifier)
    summary = _add(args, clf, args.clips, args.label, args.positive)
    print(json.dumps(summary, indent=2) if args.json else summary["text"])
    return 0


def _add(
    args: argparse.Namespace, clf: CalmClassifier, clips: list[Path], label: str | None, positive: bool
) -> dict[str, Any]:
    """`calm add`'s refit (reviewed clips into a class) and the file written; its summary."""
    from .refit import add_clips, format_add

    record = FitRecord.from_info(clf.info, str(args.classifier))
    model = args.model or str(clf.info.get("model_path") or "")
    cache_dir = args.cache_dir or (Path(record.cache_dir) if record.cache_dir else default_cache_dir())

    def open_backbone(load_layers: int) -> Backbone:
        if not model:
            raise CalmError(f"{args.classifier}: records no model path; pass --model")
        precision = clf.fingerprint.components.get("precision")
        options = LoadOptions(
            device=args.device or record.device,
            dtype=precision,  # type: ignore[arg-type]
            prompt=record.prompt,
            load_layers=load_layers,
        )
        return load_backbone(model, options)

    t0 = time.perf_counter()
    result = add_clips(
        clf, clips, label, open_backbone=open_backbone, cache_dir=cache_dir, batch_size=args.batch_size,
        source=str(args.classifier), model_path=model or None, positive=positive,
    )  # fmt: skip
    out = result.classifier.save(args.out or args.classifier)  # temp file + rename: a reload never sees half
    return format_add(result, clf, out, time.perf_counter() - t0)


def _genuine_class(clf: CalmClassifier, stored: dict[str, Any], label: str | None) -> str:
    """The class the site's genuine clips join: --label, else the one class outside the positive group."""
    group = set(as_group(stored["positive"]))
    outside = [c for c in clf.classes if c not in group]
    if label is not None:
        if label not in outside:
            raise CalmError(f"--label {label!r}: the genuine side's classes are {', '.join(outside)}")
        return label
    if len(outside) != 1:
        raise CalmError(f"--teach: the genuine side has {len(outside)} classes ({', '.join(outside)}); "
                        "name the one these clips belong to with --label")  # fmt: skip
    return outside[0]


def _backbone_for(args: argparse.Namespace, clf: CalmClassifier, exit_layer: int) -> Backbone:
    """The model the classifier was fitted on (or --model), at its precision, loaded up to exit_layer."""
    if args.model is None:
        args.model = clf.info.get("model_path")
        if not args.model:
            raise CalmError(f"{args.classifier}: records no model path; pass --model")
    backbone = _open_backbone(args, exit_layer + 1, dtype=args.dtype or clf.fingerprint.components.get("precision"))
    clf.check_features(backbone.fingerprint, str(args.model))
    return backbone


def cmd_eval(args: argparse.Namespace) -> int:
    from .data import load_examples
    from .evaluation import evaluate, format_report

    clf = CalmClassifier.load(args.classifier)
    depth = clf.exit_layer_for(("calm", "sav"))
    backbone = _backbone_for(args, clf, depth)
    data = load_examples(args.data)
    try:
        y = [clf.class_index(e.label) for e in data]
    except ValueError as e:
        raise CalmError(f"{args.data}: {e}") from None
    prep = Preprocessing.of(clf.info)
    if args.channel:
        prep = replace(prep, channel=args.channel)
    feats = _store(args, backbone, prep).extract([e.path for e in data], depth, progress=not args.quiet, desc="eval")
    result = evaluate(clf, feats, y)
    stored = clf.info.get("decision")
    positive = args.positive or (list(as_group(stored["positive"])) if isinstance(stored, dict) else None)
    if positive:
        from .evaluation import detection, format_detection

        calls = [str(e.call) for e in data] if data[0].call is not None else None
        result["detection"] = detection(clf, feats, y, positive, calls)
        if args.plot:
            result["detection"]["plot"] = str(_plot_det(args, clf, feats, y, positive, calls))
    if args.plot:
        result["confusion_plot"] = str(_plot_confusion(args, result, positive is not None))
    text = format_report(result) + (format_detection(result["detection"]) if "detection" in result else "")
    if args.plot:
        drawn = [result["confusion_plot"], *([result["detection"]["plot"]] if "detection" in result else [])]
        text += "\n\nplots: " + ", ".join(drawn)
    print(json.dumps(result) if args.json else text)
    return 0


def _plot_confusion(args: argparse.Namespace, result: dict[str, Any], beside_det: bool) -> Path:
    """The confusion matrices of CALM and SAV: at --plot, or beside the DET curves (NAME-confusion.EXT)."""
    from .plots import plot_confusion

    out = Path(args.plot)
    if beside_det:
        out = out.with_name(f"{out.stem}-confusion{out.suffix}")
    title = f"{Path(args.classifier).name} on {Path(args.data).name} ({result['n']} clips)"
    return plot_confusion({m: result[m]["confusion"] for m in ("calm", "sav")}, result["labels"], out, title)


def _plot_det(
    args: argparse.Namespace, clf: CalmClassifier, feats: torch.Tensor, y: list[int], positive: list[str],
    calls: list[str] | None,
) -> Path:  # fmt: skip
    """DET curves of CALM and SAV, per clip and (dashed) per call when the clips name their calls."""
    import numpy as np

    from .detection import det_curve, eer, per_call
    from .evaluation import detection_scores, is_positive_class
    from .plots import DetCurve, plot_det

    is_positive = is_positive_class(clf, positive)[np.array(y, dtype=int)]
    curves = []
    for colour, (method, scores) in zip(("C0", "C1"), detection_scores(clf, feats, positive).items()):
        sets = [("per clip", scores, is_positive, False)]
        if calls is not None:
            _, call_scores, call_positive = per_call(scores, is_positive, calls)
            sets.append(("per call", call_scores, call_positive, True))
        for unit, s, p, dashed in sets:
            curves.append(DetCurve(f"{method.upper()} {unit}", *det_curve(s, p), eer(s, p)[0], dashed, colour))
    title = f"{Path(args.classifier).name}: {' + '.join(positive)!r} on {Path(args.data).name} ({len(y)} clips)"
    return plot_det(curves, args.plot, title)


def cmd_calibrate(args: argparse.Namespace) -> int:
    from .calibration import site_clips, site_decision
    from .evaluation import detection_scores

    clf = CalmClassifier.load(args.classifier)
    stored = clf.info.get("decision")
    if not isinstance(stored, dict):
        raise CalmError(f"{args.classifier}: is not a detector (fit it with --positive CLASS, e.g. spoof)")
    if not 0.0 <= args.far < 1.0:
        raise CalmError(f"--far {args.far}: expected a false-alarm rate with 0 <= far < 1, e.g. 0.01")
    files, calls = site_clips(args.genuine)
    if args.teach:
        # The clips join the genuine side's support; the threshold comes from leave-one-out over the new support,
        # as `calm add` sets it (a threshold read off clips that are in the support would be in-sample).
        label = _genuine_class(clf, stored, args.label)
        summary = _add(args, clf, files, label, positive=False)
        summary["decision"] = CalmClassifier.load(summary["classifier"]).info.get("decision")
        print(json.dumps({k: v for k, v in summary.items() if k != "text"}, indent=2))
        return 0
    backbone = _backbone_for(args, clf, clf.exit_layer)
    feats = _store(args, backbone, Preprocessing.of(clf.info)).extract(files, clf.exit_layer, progress=not args.quiet)
    scores = detection_scores(clf, feats, as_group(stored["positive"]))["calm"]
    decision, summary = site_decision(stored, scores, calls if args.per_call else None, args.far, str(args.genuine))
    clf.info["decision"] = decision
    out = clf.save(args.out or args.classifier)
    summary = {"classifier": str(out), **summary}
    if summary["lowest_reachable_far"] > args.far and args.far > 0:
        log.warning("%d %s can show a false-alarm rate of %.3g at best, not %g: give more of the site's traffic",
                    summary["n"], summary["units"], summary["lowest_reachable_far"], args.far)  # fmt: skip
    print(json.dumps(summary, indent=2))
    return 0


def cmd_classify(args: argparse.Namespace) -> int:
    from .audio import load_audio

    clf = CalmClassifier.load(args.classifier)
    backbone = _backbone_for(args, clf, clf.exit_layer)
    prep = Preprocessing.of(clf.info)  # what the support clips went through, augmentation aside
    rows: list[dict[str, Any]] = []
    for path in args.audio:
        t0 = time.perf_counter()
        clip = prep.apply(load_audio(path))
        t1 = time.perf_counter()
        feats = backbone.head_activations([clip], exit_layer=clf.exit_layer)
        t2 = time.perf_counter()
        pred = clf.predict(feats)[0]
        t3 = time.perf_counter()
        rows.append(
            {
                "file": str(path),
                "label": pred.label,
                "sub_class": pred.sub,
                "score": pred.score,
                "margin": pred.margin,
                "top3": [{"label": k, "score": v} for k, v in pred.top(3)],
                "exit_layer": clf.exit_layer,
                "n_layers": clf.layout.n_layers,
                "seconds": clip.size / 16_000,
                "timing_ms": {"decode": (t1 - t0) * 1e3, "forward": (t2 - t1) * 1e3, "calm": (t3 - t2) * 1e3},
            }
        )
    if args.json:  # one JSON object per line and file
        print("\n".join(json.dumps(r) for r in rows))
    else:
        for r in rows:
            top = ", ".join(f"{t['label']} {t['score']:.3f}" for t in r["top3"])
            print(
                f"{r['file']}: {r['label']} (score {r['score']:.3f}, margin {r['margin']:.3f}; top: {top}; "
                f"exit layer {r['exit_layer']}/{r['n_layers']}, {r['timing_ms']['forward']:.0f} ms forward)"
            )
    return 0


def cmd_heads(args: argparse.Namespace) -> int:
    from .plots import plot_head_weights

    clf = CalmClassifier.load(args.classifier)
    out = plot_head_weights(clf, args.out)
    print(json.dumps({"image": str(out), "exit_layer": clf.exit_layer, "n_layers": clf.layout.n_layers}))
    return 0


def cmd_listen(args: argparse.Namespace) -> int:
    try:
        from calmd.client import Subscriber
        from calmd.events import LabelEvent, StatusEvent
    except ImportError as e:
        raise CalmError(f"`calm listen` needs the daemon extra: pip install 'calm-audio[daemon]' ({e})") from e

    deadline = time.monotonic() + args.seconds if args.seconds else None
    count = 0
    with Subscriber(args.endpoint, args.stream or None, status=args.status, events=True) as sub:
        while deadline is None or time.monotonic() < deadline:
            left = None if deadline is None else max(0.0, deadline - time.monotonic())
            event = sub.receive(timeout_s=left if left is not None else 1.0)
            if event is None:
                continue
            if args.json:
                print(json.dumps(event.to_json()), flush=True)
            elif isinstance(event, LabelEvent):
                print(
                    f"{event.end_utc} {event.stream:<12} {event.label:<16} score {event.score:.3f} "
                    f"margin {event.margin:.3f} ({event.start_s:.1f}-{event.end_s:.1f} s, {event.latency_ms:.0f} ms)",
                    flush=True,
                )
            elif isinstance(event, StatusEvent):
                states = ", ".join(f"{k}: {v.state}" for k, v in event.streams.items())
                print(f"{event.time_utc} status: {states}; queue {event.queue_depth}", flush=True)
            else:
                print(f"{event.time_utc} {event.stream:<12} {event.kind} {event.label}", flush=True)
            count += 1
            if args.count and count >= args.count:
                break
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from .demo import run_demo

    return run_demo(args.workdir, main, quiet=args.quiet, tiny=args.tiny, live=args.live)


def cmd_models(args: argparse.Namespace) -> int:
    """Supported families, and the model folders here (given paths, Hugging Face cache, calm cache) calm can read."""
    from .backbones import ADAPTERS
    from .backbones.catalog import adapter_name, find_models

    families = [{"model_type": t, "adapter": adapter_name(a)} for t, a in sorted(ADAPTERS.items())]
    found = find_models(args.path)
    supported = [m for m in found if m.model_type in ADAPTERS]
    if args.json:
        print(json.dumps({"families": families, "models": [m.to_dict() for m in supported]}, indent=2))
        return 0
    print("families (config.json model_type -> adapter):")
    for family in families:
        print(f"  {family['model_type']:<22} {family['adapter']}")
    print("model folders:" if supported else "model folders: none found")
    for m in supported:
        heads = f"{m.layout.n_layers} layers x {m.layout.n_heads} heads" if m.layout else "heads unknown"
        state = "usable" if m.usable else f"NOT usable: {m.problem}"
        print(f"  {m.model_id or m.path}  [{m.model_type}, {heads}, {m.source}] {state}")
        if m.model_id:
            print(f"      {m.path}")
    if len(found) > len(supported):
        print(f"({len(found) - len(supported)} other model folders have no calm adapter)")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="calm", description="Few-shot audio classification with CALM head voting.")
    add_global_flags(parser)  # before or after the subcommand: finish_subcommands gives each of them -v and -q
    parser.add_argument("--version", action="version", version=f"calm {installed_version()}")
    sub = parser.add_subparsers(dest="command", required=True)

    d = CalmConfig()
    fit = sub.add_parser("fit", help="build a classifier from labelled clips")
    _model_args(fit, required=True)
    fit.add_argument("--support", required=True, help="folder with one sub-folder per class, or a JSON/CSV manifest")
    fit.add_argument("--val", help="validation clips for reliability (default: leave-one-out over the support)")
    fit.add_argument("--out", required=True, type=Path, help="classifier file to write (.safetensors)")
    fit.add_argument(
        "--prompt-file",
        help="text prompt with the audio placeholder where the audio goes: <|AUDIO|> (Qwen2-Audio), "
        "<sound> (Audio Flamingo 3), [AUDIO] (Voxtral), <|audio|> (Granite Speech)",
    )
    fit.add_argument(
        "--preset", choices=sorted(PRESETS), default="calm",
        help="calm (default), paper (the paper's exact recipe) or calm-0.1 (0.1's default); options override it",
    )  # fmt: skip
    fit.add_argument("--tau", type=float, help=f"posterior temperature (default {d.tau})")
    fit.add_argument("--scheme", choices=SCHEMES, help=f"reliability scheme (default {d.scheme})")
    fit.add_argument("--tau-w", type=float, help="weight sharpening temperature (default: by scheme)")
    fit.add_argument("--top-k", type=_top_k, help=f"heads per class: a number, 0 for all, or auto (default {d.top_k})")
    fit.add_argument(
        "--prior-strength",
        type=float,
        help=f"separation_f1: weight of the separation prior (default {d.prior_strength})",
    )
    fit.add_argument(
        "--sav-shrinkage", type=float, help=f"pull towards SAV's uniform vote, s/(s+clips) (default {d.sav_shrinkage})"
    )
    fit.add_argument(
        "--reliability-from", choices=RELIABILITY_FROM, help="per-clip schemes: leave-one-out or support (in-sample)"
    )
    fit.add_argument("--alpha", type=float, help="per-clip schemes: reliability shrinkage strength (default 0)")
    fit.add_argument("--sav-heads", type=int, help=f"heads of the SAV baseline (default {d.sav_heads})")
    fit.add_argument("--max-layer", type=int, default=None, help="only use heads of layers 0..N (faster exit)")
    fit.add_argument("--abstain", choices=ABSTAIN_MODES, help="answer 'unknown' below a threshold")
    fit.add_argument("--abstain-keep", type=float, help="share of correct answers kept")
    fit.add_argument(
        "--combiner", choices=COMBINERS,
        help="auto (default): CALM's head vote, and once clips are taught at the site (calm add, the review page) a "
        "probe: logistic regression over every head up to the vote's exit layer, which learns far more from a few "
        "site clips (docs/robustness.md); vote or probe: always that one",
    )  # fmt: skip
    fit.add_argument(
        "--split", choices=SPLITS,
        help="auto: a class whose support is two kinds of sound (a new attack among older ones) gets a prototype "
        "for each, when leave-one-out over the support labels it better (default none)",
    )  # fmt: skip
    fit.add_argument(
        "--positive", metavar="CLASS", action="append",
        help="detector of CLASS (e.g. spoof; repeatable: --positive spoof --positive neural scores the group, "
        "as its best member, against the rest): store the call-score threshold at the EER point of the validation "
        "clips' scores, or of leave-one-out scores of the support clips (one refit per clip); calmd decides with it",
    )  # fmt: skip
    fit.add_argument(
        "--channel", choices=CHANNELS, default="none",
        help="pass clips through a channel first: telephone = 8 kHz, 300-3400 Hz, G.711 mu-law, like call audio",
    )  # fmt: skip
    fit.add_argument(
        "--conditioning", choices=CONDITIONINGS,
        help=f"what every clip goes through before the model, here and in calmd: sound = trimmed to the sound and "
        f"brought to a fixed level, none = as it is (default {DEFAULT_CONDITIONING}; none with --preset paper and "
        "for detectors (--positive): out of domain it helps sound labels and hurts spoof detection)",
    )  # fmt: skip
    fit.add_argument(
        "--augment", choices=list(RECIPES), metavar="RECIPE",
        help=f"also fit on copies of each support clip through other rooms, distances, noises and bands: "
        f"{', '.join(RECIPES)} (default {DEFAULT_RECIPE}). {SUGGESTED_RECIPE} when the support clips were recorded "
        "unlike the live audio (a phone's recordings for a camera's microphone): better out of domain, a little "
        "worse in domain (docs/robustness.md)",
    )  # fmt: skip
    fit.add_argument(
        "--calibrate", default="eer", metavar="RULE",
        help="with --positive: the threshold's rule, eer (default) or far=X (flag at most a share X of the "
        "other class's held-out clips, e.g. far=0.01)",
    )  # fmt: skip
    fit.set_defaults(func=cmd_fit)

    add = sub.add_parser("add", help="add reviewed clips to a class (new or existing) and refit from cached features")
    add.add_argument("--classifier", required=True, type=Path, help="classifier file made by `calm fit`")
    add.add_argument("--label", help="the class the clips belong to (an existing class or a new one)")
    add.add_argument("clips", nargs="*", type=Path, help="audio files, e.g. saved detections (a .json beside is read)")
    add.add_argument(
        "--positive", action="store_true",
        help="detectors: the class joins the positive group (a new kind of attack taught as a class of its own)",
    )  # fmt: skip
    add.add_argument("--out", type=Path, help="write here instead of replacing the classifier file")
    add.add_argument("--model", help="model folder (default: the one the classifier records)")
    add.add_argument("--device", help="cpu, cuda or cuda:N for the new clips (default: the one it was fitted on)")
    add.add_argument("--batch-size", type=int, default=4, help="clips per forward pass (default 4)")
    add.add_argument("--cache-dir", type=Path, help="feature cache folder (default: the one it was fitted with)")
    add.add_argument("--json", action="store_true", help="print one JSON object")
    add.set_defaults(func=cmd_add)

    ev = sub.add_parser("eval", help="CALM and SAV accuracy, F1 and confusion on labelled clips")
    ev.add_argument("--classifier", required=True, type=Path)
    ev.add_argument("--data", required=True, help="folder or manifest of labelled clips")
    ev.add_argument("--json", action="store_true", help="print one JSON object")
    ev.add_argument(
        "--positive", metavar="CLASS", action="append",
        help="also report detection of CLASS (repeatable: a group) against the rest (ROC AUC, EER and its "
        "threshold, minDCF), per clip "
        "and, when a manifest gives each clip a call (column call or group), per call (mean log-odds of its clips); "
        "default: the class the classifier was fitted to detect (calm fit --positive)",
    )  # fmt: skip
    ev.add_argument(
        "--plot",
        type=Path,
        metavar="IMAGE",
        help="draw the confusion matrices (.png, .svg, .pdf); for a detector, the DET curves there "
        "and the confusion matrices beside them as NAME-confusion.EXT",
    )
    ev.add_argument("--channel", choices=CHANNELS, help="channel applied to the clips (default: the classifier's own)")
    _model_args(ev, required=False)
    ev.set_defaults(func=cmd_eval)

    cl = sub.add_parser("classify", help="label audio files")
    cl.add_argument("--classifier", required=True, type=Path)
    cl.add_argument("audio", nargs="+", type=Path)
    cl.add_argument("--json", action="store_true", help="print one JSON object per line and file")
    _model_args(cl, required=False)
    cl.set_defaults(func=cmd_classify)

    ca = sub.add_parser(
        "calibrate", help="re-set a detector's threshold from the site's own genuine traffic (no attacks needed)"
    )
    ca.add_argument("--classifier", required=True, type=Path, help="a detector made by `calm fit --positive CLASS`")
    ca.add_argument("--genuine", required=True, type=Path, help="folder of the site's genuine clips (any layout)")
    ca.add_argument("--far", type=float, default=0.01, help="false-alarm rate to allow on them (default 0.01)")
    ca.add_argument(
        "--per-call", action="store_true",
        help="the clips of one folder are the segments of one call: calibrate the call score calmd decides on",
    )  # fmt: skip
    ca.add_argument(
        "--teach", action="store_true",
        help="also teach them: the clips join the genuine side's support (as `calm add` does) and the threshold is "
        "set again from leave-one-out over the new support; moves the scores, not only the threshold, so EER can "
        "fall (--far is not used)",
    )  # fmt: skip
    ca.add_argument("--label", help="with --teach: the genuine class, when the detector has several")
    ca.add_argument("--out", type=Path, help="write here instead of replacing the classifier file")
    _model_args(ca, required=False)
    ca.set_defaults(func=cmd_calibrate)

    hd = sub.add_parser("heads", help="heat map of head weights per class over (layer, head)")
    hd.add_argument("--classifier", required=True, type=Path)
    hd.add_argument("--out", required=True, type=Path, help="image file (.png, .svg, .pdf)")
    hd.set_defaults(func=cmd_heads)

    mo = sub.add_parser("models", help="supported model families and the model folders here calm can read")
    mo.add_argument(
        "--path", action="append", default=[], type=Path,
        help="also look in this folder (a model folder or a folder of them; repeatable)",
    )  # fmt: skip
    mo.add_argument("--json", action="store_true", help="print one JSON object")
    mo.set_defaults(func=cmd_models)

    li = sub.add_parser("listen", help="print labels published by calmd")
    li.add_argument("--endpoint", default="tcp://127.0.0.1:5556")
    li.add_argument("--stream", action="append", help="only this stream (repeatable)")
    li.add_argument("--json", action="store_true", help="one JSON message per line")
    li.add_argument("--status", action="store_true", help="also print heartbeats")
    li.add_argument("--count", type=int, default=0, help="exit after this many messages")
    li.add_argument("--seconds", type=float, default=0, help="exit after this long")
    li.set_defaults(func=cmd_listen)

    demo = sub.add_parser("demo", help="build a small dataset, fit, evaluate and classify, end to end")
    demo.add_argument("--workdir", type=Path, default=Path.home() / ".cache" / "calm" / "demo")
    demo.add_argument("--tiny", action="store_true", help="tiny random-weight model on synthetic tones (no extras)")
    demo.add_argument("--live", action="store_true", help="end with calmd on the microphone until Ctrl-C")
    demo.set_defaults(func=cmd_demo)
    finish_subcommands(sub.choices)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO, format="%(levelname)s %(name)s: %(message)s"
    )
    try:
        return int(args.func(args))
    except (CalmError, ValueError) as e:
        log.error("%s", e, exc_info=args.verbose)
        return 2


if __name__ == "__main__":
    sys.exit(main())
