"""The `calm` command line: its arguments and flags, and main, which runs a subcommand and turns errors into
a message and exit status 2."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from ..audio.augment import DEFAULT_RECIPE, RECIPES, SUGGESTED_RECIPE
from ..audio.channels import CHANNELS
from ..audio.conditioning import CONDITIONINGS, DEFAULT_CONDITIONING
from ..backbones.base import DTYPES
from ..errors import CalmError
from ..features import default_cache_dir
from ..method.calm import SCHEMES
from ..method.classifier import ABSTAIN_MODES, COMBINERS, PRESETS, RELIABILITY_FROM, SPLITS, CalmConfig
from .commands import (
    cmd_add,
    cmd_calibrate,
    cmd_classify,
    cmd_demo,
    cmd_eval,
    cmd_fit,
    cmd_heads,
    cmd_listen,
    cmd_models,
)
from .help import add_global_flags, finish_subcommands, installed_version

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
    demo.set_defaults(func=cmd_demo, calm=main)  # the demo runs each `calm` step through main
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
