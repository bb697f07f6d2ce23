"""`python -m calmd.review.teach`: the refit behind the live page's Apply, in a process of its own.

It is `calm add` (calm_core.method.refit.add_clips, with the settings the classifier file records) once per class
taught, the model loaded at most once for all of them, and one file written at the end. A process of its
own: the model it loads for the new clips' features is freed when it exits, a failure cannot take calmd
down, and calmd's model worker (whose backbone is not shared between threads) never waits for it.

Prints one JSON object on stdout: the file written, its labels and each class's `calm add` summary.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import sys
import time
from collections.abc import Callable
from functools import lru_cache
from pathlib import Path
from typing import Any

from calm_core.audio.preprocessing import Preprocessing
from calm_core.backbones import LoadOptions, load_backbone
from calm_core.backbones.base import Backbone
from calm_core.errors import CalmError
from calm_core.features import FeatureStore, default_cache_dir
from calm_core.method.classifier import CalmClassifier
from calm_core.method.refit import FitRecord, add_clips, format_add

log = logging.getLogger("calmd.teach")

EXIT_REFUSED = 2  # the refit refused the clips or the classifier (the message is on stderr)


def teach(
    classifier: Path,
    plan: dict[str, list[Path]],
    out: Path,
    model: str,
    device: str,
    positive: frozenset[str] = frozenset(),
) -> dict[str, Any]:
    """Add each class's clips in turn (an existing class or a new one) and write the result to out; a class in
    `positive` joins the detector's positive group (`calm add --positive`)."""
    clf = CalmClassifier.load(classifier)
    record = FitRecord.from_info(clf.info, str(classifier))
    cache_dir = Path(record.cache_dir) if record.cache_dir else default_cache_dir()
    loaded: list[Backbone] = []

    def open_backbone(load_layers: int) -> Backbone:
        if not loaded:  # as `calm add` opens it: the classifier's precision and prompt, layers it reads
            precision = clf.fingerprint.components.get("precision")
            options = LoadOptions(device=device, dtype=precision, prompt=record.prompt, load_layers=load_layers)  # type: ignore[arg-type]
            loaded.append(load_backbone(model, options))
        return loaded[0]

    steps = []
    current = clf
    for label, paths in plan.items():
        t0 = time.perf_counter()
        result = add_clips(current, paths, label, open_backbone=open_backbone, cache_dir=cache_dir,
                           source=str(classifier), model_path=model, positive=label in positive)  # fmt: skip
        steps.append(format_add(result, current, out, time.perf_counter() - t0))
        current = result.classifier
    labelled = labelled_by(current, [p for paths in plan.values() for p in paths], open_backbone, cache_dir,
                           FitRecord.from_info(current.info, str(classifier)).layers)  # fmt: skip
    # The classifier before, on the clips it had not seen and whose class it knew: held-out accuracy.
    unseen = [p for label, paths in plan.items() if label in clf.classes for p in paths]
    held_out = labelled_by(clf, unseen, open_backbone, cache_dir, record.layers) if unseen else {}
    current.save(out)
    return {"classifier": str(out), "labels": current.labels, "exit_layer": current.exit_layer, "steps": steps,
            "labelled": labelled, "held_out": held_out}  # fmt: skip


def labelled_by(
    clf: CalmClassifier, paths: list[Path], open_backbone: Callable[[int], Backbone], cache_dir: Path, layers: int
) -> dict[str, dict[str, Any]]:
    """How the new classifier labels each clip it was just taught (features from the cache the refit filled):
    a prototype is a mean, so a taught clip may still fall nearer another class, and the reviewer should know."""
    store = FeatureStore(open_backbone(layers), cache_dir, 4, Preprocessing.of(clf.info))
    feats = store.extract(paths, layers - 1, progress=False, desc="check")  # (N, L, H, D)
    return {str(p): {"label": pred.label, "score": round(pred.score, 4)} for p, pred in zip(paths, clf.predict(feats))}


def install(version_file: Path, live: Path) -> None:
    """Make the live classifier file a copy of version_file (written beside it with its mode, renamed over it):
    a reload reads the old file or the new one, never half of one."""
    tmp = live.with_name(f".{live.name}.review.tmp")
    shutil.copyfile(version_file, tmp)
    if live.exists():
        shutil.copymode(live, tmp)
    os.replace(tmp, live)


@lru_cache(maxsize=256)
def classes_of(version_file: Path, sha256: str) -> dict[str, Any]:
    """A classifier file's classes and support clips per class, from its header alone (no tensor is read);
    sha256 keys the cache. Empty when the file cannot be read (its history entry shows no classes)."""
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(version_file), framework="numpy") as f:
            meta = json.loads((f.metadata() or {})["calm"])
        support = meta.get("info", {}).get("support_per_class", {})
        return {"labels": list(meta["labels"]), "support": {str(k): int(v) for k, v in support.items()}}
    except (OSError, SafetensorError, KeyError, ValueError, TypeError, AttributeError):
        return {}


def summary_counts(summary: dict[str, Any], label: str) -> str:
    """'0 -> 2 support clips' for a class, from teach()'s steps."""
    for step in summary.get("steps", []):
        if label in step.get("support_after", {}):
            after, before = step["support_after"][label], step.get("support_before", {}).get(label, 0)
            if before != after or label in step.get("new_classes", []):
                return f"{before} -> {after} support clips"
    return "unchanged (already there)"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m calmd.review.teach", description=__doc__.splitlines()[0])
    p.add_argument("--classifier", required=True, type=Path, help="the classifier file calmd serves")
    p.add_argument("--plan", required=True, type=Path, help='JSON: {"class": ["clip", ...], ...}')
    p.add_argument("--out", required=True, type=Path, help="the new classifier file")
    p.add_argument("--model", required=True, help="calmd's model.path")
    p.add_argument("--device", default="cpu", help="calmd's model.device")
    p.add_argument("--positive", action="append", default=[], help="a taught class that joins the positive group")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    try:
        plan = {str(k): [Path(c) for c in v] for k, v in json.loads(args.plan.read_text()).items()}
        summary = teach(args.classifier, plan, args.out, args.model, args.device, frozenset(args.positive))
    except (CalmError, ValueError, OSError) as e:
        print(str(e), file=sys.stderr)
        return EXIT_REFUSED
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
