"""What each `calm` subcommand does: fit, add, eval, calibrate, classify, heads, listen, demo, models."""

from __future__ import annotations

import argparse
import json
import logging
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch

from ..audio.augment import DEFAULT_RECIPE
from ..audio.conditioning import DEFAULT_CONDITIONING
from ..audio.preprocessing import Preprocessing
from ..backbones import LoadOptions, load_backbone
from ..backbones.base import Backbone
from ..errors import CalmError
from ..features import FeatureStore, default_cache_dir
from ..method.classifier import (
    PRESETS,
    CalmClassifier,
    group_members,
)
from ..method.refit import FitRecord, clips_of, fit_classifier
from ..method.subclasses import as_group

log = logging.getLogger("calm")


def _open_backbone(args: argparse.Namespace, load_layers: int | None, dtype: str | None = None) -> Backbone:
    dtype = dtype or args.dtype
    prompt = Path(args.prompt_file).read_text() if getattr(args, "prompt_file", None) else None
    options = LoadOptions(device=args.device, dtype=dtype, prompt=prompt, load_layers=load_layers)  # type: ignore[arg-type]
    return load_backbone(args.model, options)


def _store(args: argparse.Namespace, backbone: Backbone, prep: Preprocessing) -> FeatureStore:
    return FeatureStore(backbone, None if args.no_cache else args.cache_dir, args.batch_size, prep)


def cmd_fit(args: argparse.Namespace) -> int:
    from ..audio.clipsets import label_index, load_examples

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
        from ..method.calibration import parse_rule

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
    from ..method.refit import add_clips, format_add

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
    from ..audio.clipsets import load_examples
    from ..evaluation.metrics import evaluate, format_report

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
        from ..evaluation.metrics import detection, format_detection

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
    from ..evaluation.plots import plot_confusion

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

    from ..evaluation.metrics import detection_scores, is_positive_class
    from ..evaluation.plots import DetCurve, plot_det
    from ..method.detection import det_curve, eer, per_call

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
    from ..evaluation.metrics import detection_scores
    from ..method.calibration import site_clips, site_decision

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
    from ..audio.decode import load_audio

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
    from ..evaluation.plots import plot_head_weights

    clf = CalmClassifier.load(args.classifier)
    out = plot_head_weights(clf, args.out)
    print(json.dumps({"image": str(out), "exit_layer": clf.exit_layer, "n_layers": clf.layout.n_layers}))
    return 0


def cmd_listen(args: argparse.Namespace) -> int:
    try:
        from ..messages.client import Subscriber
        from ..messages.events import EdgeEvent, LabelEvent, StatusEvent
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
            elif isinstance(event, EdgeEvent):
                print(f"{event.time_utc} {event.stream:<12} {event.kind} {event.label}", flush=True)
            else:  # a call verdict (not subscribed to here)
                print(f"{event.time_utc} call {event.call} {event.decision} score {event.score}", flush=True)
            count += 1
            if args.count and count >= args.count:
                break
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from .demo import run_demo

    return run_demo(args.workdir, args.calm, quiet=args.quiet, tiny=args.tiny, live=args.live)


def cmd_models(args: argparse.Namespace) -> int:
    """Supported families, and the model folders here (given paths, Hugging Face cache, calm cache) calm can read."""
    from ..backbones import ADAPTERS
    from ..backbones.catalog import adapter_name, find_models

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
