"""Refitting a classifier from what its file records: the support clips (path and content hash per class),
the fit settings and where the features are cached. `calm add` puts reviewed clips into a class this way:
only the new clips go through the model, the others come from the feature cache by their hashes.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import torch

from ..audio.preprocessing import Preprocessing
from ..backbones.base import Backbone, HeadLayout
from ..errors import ClassifierFileError, DatasetError
from ..features import FeatureStore, cache_entry, read_cached
from ..fingerprint import Fingerprint, file_sha256
from .classifier import UNKNOWN, CalmClassifier, CalmConfig, parent_of
from .subclasses import as_group

log = logging.getLogger(__name__)

RECORD_VERSION = 1


@dataclass(frozen=True)
class Clip:
    path: str  # absolute, where the clip was when it was fitted or added
    sha256: str  # of the file's bytes: the feature cache's key, and how duplicates are found
    label: str


@dataclass(frozen=True)
class FitRecord:
    """What a classifier file remembers (info["fit"]) so that it can be refitted with the same settings.

    The hyper-parameters are the classifier's own CalmConfig; the precision is in its fingerprint, the channel
    in info["channel"] and the model folder in info["model_path"].
    """

    support: tuple[Clip, ...]  # in fit order: a refit on the same clips in the same order is bit-identical
    validation: tuple[Clip, ...] = ()
    layers: int = 0  # depth of the head features fitted on: all layers, or max_layer + 1
    prompt: str | None = None  # the prompt text when not the backbone's default (the fingerprint holds its hash)
    device: str = "cpu"
    cache_dir: str | None = None  # the feature cache the fit used (None: --no-cache)
    positive: tuple[str, ...] = ()  # calm fit --positive: the detector's positive group (empty: not a detector)
    calibrate: str = "eer"  # and its threshold rule
    taught: int = 0  # clips added since the fit (calm add, the review page): the site's own, for combiner auto
    version: int = field(default=RECORD_VERSION)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_info(cls, info: dict[str, object], source: str) -> FitRecord:
        data = info.get("fit")
        if data is None:
            raise ClassifierFileError(
                f"{source}: records no support set (fitted by an older calm); refit it once with `calm fit` "
                "and `calm add` can extend it from then on"
            )
        try:
            if not isinstance(data, dict):
                raise TypeError(f"info.fit is {type(data).__name__}, expected an object")
            if data.get("version") != RECORD_VERSION:
                raise ValueError(f"info.fit.version {data.get('version')!r} is not {RECORD_VERSION}")
            clips = {k: tuple(Clip(str(c["path"]), str(c["sha256"]), str(c["label"])) for c in data[k]) for k in
                     ("support", "validation")}  # fmt: skip
            record = cls(**{**data, **clips, "positive": as_group(data.get("positive"))})
        except (KeyError, TypeError, ValueError) as e:
            raise ClassifierFileError(f"{source}: invalid support record in the classifier file ({e})") from e
        if not record.support or record.layers < 1:
            raise ClassifierFileError(f"{source}: invalid support record in the classifier file (no clips or layers)")
        return record


def clips_of(paths: Sequence[Path], labels: Sequence[str]) -> tuple[Clip, ...]:
    return tuple(Clip(str(Path(p).expanduser().resolve()), file_sha256(p), lab) for p, lab in zip(paths, labels))


def fit_classifier(
    features: torch.Tensor,
    y: Sequence[int],
    labels: list[str],
    layout: HeadLayout,
    fingerprint: Fingerprint,
    config: CalmConfig,
    record: FitRecord,
    model_path: str,
    prep: Preprocessing,
    val_features: torch.Tensor | None = None,
    val_y: Sequence[int] | None = None,
    augmentation: str = "none",
) -> CalmClassifier:
    """The one fit path of `calm fit` and `calm add`: CALM, the detector's threshold, and what the file records.

    With an augmentation recipe, features hold the support clips themselves and then each copy in turn
    (augmented_features' layout), and y the support clips' classes once."""
    n_copies = len(prep.copies(augmentation))
    y_t = torch.tensor(list(y)).repeat(n_copies)
    groups = torch.arange(len(y)).repeat(n_copies) if n_copies > 1 else None
    val_t = None if val_y is None else torch.tensor(list(val_y))
    # combiner auto: the vote until the site has taught clips, then the probe (docs/robustness.md).
    resolved = config
    if config.combiner == "auto":
        resolved = replace(config, combiner="probe" if record.taught and config.abstain == "none" else "vote")
    clf = CalmClassifier.fit(features, y_t, labels, layout, fingerprint, resolved, val_features, val_t, groups)
    clf.info["combiner"] = resolved.combiner
    clf.info["model_path"] = model_path
    clf.info["channel"] = prep.channel
    clf.info["conditioning"] = prep.conditioning
    clf.info["augmentation"] = augmentation
    if record.positive:
        from .calibration import calibrate

        clf.info["decision"] = calibrate(
            clf, features, y_t, record.positive, val_features, val_t, record.calibrate, groups
        )
    clf.info["fit"] = record.to_json()
    clf.config = config  # auto stays auto: a later refit decides again
    return clf


@dataclass
class Sidecar:
    """What a saved detection's JSON sidecar says, when it is there (information only)."""

    label: str | None = None
    stream: str | None = None
    note: str | None = None  # why it could not be read


def read_sidecar(clip: Path) -> Sidecar | None:
    path = clip.with_suffix(".json")
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        return Sidecar(note=f"{path} is not readable JSON ({e}); ignored")
    if not isinstance(data, dict):
        return Sidecar(note=f"{path} is not a JSON object; ignored")
    label, stream = data.get("label"), data.get("stream")
    return Sidecar(label if isinstance(label, str) else None, stream if isinstance(stream, str) else None)


@dataclass
class AddResult:
    classifier: CalmClassifier
    before: dict[str, int]  # support clips per class
    after: dict[str, int]
    added: list[Clip]
    skipped: list[str]  # why each skipped clip was skipped
    notes: list[str]  # detections relabelled, sidecars ignored, validation gaps
    from_cache: int  # support and validation clips whose features came from the cache
    computed: int  # clips that went through the model (the new ones, and old ones the cache had lost)

    @property
    def new_classes(self) -> list[str]:
        return [c for c in self.after if c not in self.before]


def new_clips(
    record: FitRecord, paths: Sequence[Path], label: str
) -> tuple[list[Clip], list[str], list[str]]:  # fmt: skip
    """The clips to add (hashed, deduplicated), why others were skipped, and what their sidecars said."""
    if not label or label.strip() != label or label == UNKNOWN:
        raise DatasetError(f"--label {label!r}: a class name is a non-empty name without surrounding spaces, "
                           f"other than {UNKNOWN!r} (what calm answers when it abstains)")  # fmt: skip
    known = {c.sha256: c for c in record.support}
    held_out = {c.sha256: c for c in record.validation}
    added: list[Clip] = []
    skipped: list[str] = []
    notes: list[str] = []
    for path in paths:
        if not path.is_file():
            raise DatasetError(f"{path}: no such audio file")
        clip = clips_of([path], [label])[0]
        if clip.sha256 in held_out:
            other = held_out[clip.sha256]
            raise DatasetError(f"{path}: same content as validation clip {other.path} ({other.label!r}); a clip "
                               "cannot be both, or the reliability it measures is no longer held out")  # fmt: skip
        if clip.sha256 in known:
            other = known[clip.sha256]
            if other.label != label:
                raise DatasetError(
                    f"{path}: same content as support clip {other.path}, which is in class {other.label!r}, not "
                    f"{label!r}; a clip belongs to one class (to move it, refit with `calm fit`)"
                )
            twice = "given twice" if other in added else f"already in {label!r}"
            same = "" if other.path == clip.path else f" (same content as {other.path})"
            skipped.append(f"{path}: {twice}{same}; not added twice")
            continue
        known[clip.sha256] = clip
        added.append(clip)
        sidecar = read_sidecar(path)
        if sidecar is not None and sidecar.note:
            notes.append(sidecar.note)
        elif sidecar is not None and sidecar.label:
            where = f" (detected on {sidecar.stream})" if sidecar.stream else ""
            change = "confirmed" if sidecar.label == label else f"now {label}"
            notes.append(f"{path}: was {sidecar.label}{where}, {change}")
    return added, skipped, notes


def gather_features(
    clips: Sequence[Clip],
    fingerprint: Fingerprint,
    cache_dir: Path,
    channel: str,
    depth: int,
    source: str,
) -> tuple[list[torch.Tensor | None], list[int]]:
    """Cached features of clips by content hash (no model, no audio); the positions the cache lacks, which
    must be recomputed from the clip files. Refuses, naming them, clips that are neither cached nor on disk."""
    out: list[torch.Tensor | None] = []
    todo, lost = [], []
    for i, clip in enumerate(clips):
        cached = read_cached(cache_entry(cache_dir, fingerprint.digest, clip.sha256, channel), depth)
        out.append(cached)
        if cached is None:
            todo.append(i)
            path = Path(clip.path)
            if not path.is_file():
                lost.append(f"{clip.path} ({clip.label}; missing)")
            elif file_sha256(path) != clip.sha256:
                lost.append(f"{clip.path} ({clip.label}; changed since it was fitted)")
    if lost:
        shown = "; ".join(lost[:10]) + (f"; and {len(lost) - 10} more" if len(lost) > 10 else "")
        raise DatasetError(
            f"{source}: the features of {_n(len(lost), 'recorded clip')} are not in the feature cache {cache_dir} "
            f"and the clips are not at their recorded paths with the same content: {shown}. Put them back there, give "
            "--cache-dir the cache they were fitted with, or refit from scratch with `calm fit`"
        )
    return out, todo


def add_clips(
    clf: CalmClassifier,
    paths: Sequence[Path],
    label: str | None,
    *,
    open_backbone: Callable[[int], Backbone],
    cache_dir: Path,
    batch_size: int = 4,
    source: str = "classifier",
    model_path: str | None = None,
    positive: bool = False,
) -> AddResult:
    """Refit clf with paths added to class label (new or existing), with exactly its recorded settings.

    positive: the class joins a detector's positive group (a new kind of attack taught as its own class).
    open_backbone(load_layers) is called only when some clip's features must be computed.
    """
    record = FitRecord.from_info(clf.info, source)
    if paths and label is None:
        raise DatasetError("clips to add need the class they belong to: give --label NAME")
    if positive:
        if not record.positive:
            raise DatasetError(f"--positive: {source} is not a detector (fit it with `calm fit --positive CLASS`)")
        if label is None:
            raise DatasetError("--positive puts a class into the positive group: give --label NAME")
        if parent_of(label) not in record.positive and label not in record.positive:
            record = replace(record, positive=(*record.positive, label))
    added, skipped, notes = new_clips(record, paths, label) if label is not None else ([], [], [])
    support = record.support + tuple(added)
    labels = sorted({c.label for c in support})  # as `calm fit` orders them
    short = [c for c, n in _counts(support).items() if n < 2]
    if record.positive and not record.validation and short:
        raise DatasetError(
            f"{source} detects {' + '.join(record.positive)!r} with a threshold from leave-one-out over the support "
            f"clips, which needs 2 clips in every class; {short} would have 1: add at least 2 clips of a new class"
        )
    prep = Preprocessing.of(clf.info)
    augmentation = str(clf.info.get("augmentation", "none"))
    support_clips = list(record.support) + list(added)
    backbone: Backbone | None = None
    reused = computed = 0

    def features_for(clips: list[Clip], p: Preprocessing) -> torch.Tensor:
        """Cached features of clips under p, the rest computed from their files."""
        nonlocal backbone, reused, computed
        feats, todo = gather_features(clips, clf.fingerprint, cache_dir, p.cache_key, record.layers, source)
        if todo:
            if backbone is None:
                backbone = open_backbone(record.layers)
                clf.check_features(backbone.fingerprint, model_path or str(clf.info.get("model_path")))
            store = FeatureStore(backbone, cache_dir, batch_size, p)
            fresh = store.extract([Path(clips[i].path) for i in todo], record.layers - 1, progress=False, desc="clips")
            for i, f in zip(todo, fresh):
                feats[i] = f
        reused, computed = reused + len(clips) - len(todo), computed + len(todo)
        return _stack(feats)

    # The clips as they are (support, added, validation), then the support's augmented copies, if any.
    base = features_for(support_clips + list(record.validation), prep)
    stale = computed - len(added)
    if stale:
        notes.append(f"{_n(stale, 'recorded clip')} not in the feature cache {cache_dir}: recomputed from the files")
    copies = [features_for(support_clips, p) for p in prep.copies(augmentation)[1:]]
    support_feats = torch.cat([base[: len(support_clips)], *copies])
    val = val_y = None
    if record.validation:
        val = base[len(support_clips) :]
        val_y = [labels.index(c.label) for c in record.validation]
        missing = sorted(set(labels) - {c.label for c in record.validation})
        if missing:
            notes.append(f"no validation clips of {missing}: their reliability rests on their support separation")
    refit_record = replace(record, support=support, taught=record.taught + len(added))
    refitted = fit_classifier(
        support_feats, [labels.index(c.label) for c in support], labels, clf.layout, clf.fingerprint, clf.config,
        refit_record, model_path or str(clf.info.get("model_path", "")), prep, val, val_y,
        augmentation,
    )  # fmt: skip
    before = _counts(record.support)
    return AddResult(refitted, before, _counts(support), added, skipped, notes, reused, computed)


def _stack(feats: Sequence[torch.Tensor | None]) -> torch.Tensor:
    if any(f is None for f in feats):
        raise RuntimeError("a clip's features were neither cached nor computed")
    return torch.stack([f for f in feats if f is not None])


def _n(count: int, noun: str) -> str:
    return f"{count} {noun}{'' if count == 1 else 's'}"


def _counts(clips: Sequence[Clip]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for c in clips:
        counts[c.label] = counts.get(c.label, 0) + 1
    return dict(sorted(counts.items()))


def format_add(result: AddResult, old: CalmClassifier, out: Path, seconds: float) -> dict[str, Any]:
    """What `calm add` changed, as a JSON-able summary whose "text" is the report printed to a person."""
    new = result.classifier
    fresh = set(result.new_classes)
    lines = [f"{c}: {result.before.get(c, 0)} -> {n} support clips" + (" (new class)" if c in fresh else "")
             for c, n in result.after.items()]  # fmt: skip
    lines += result.skipped + result.notes
    lines.append(
        f"features: {result.from_cache} clips from the cache, {result.computed} through the model; "
        f"done in {seconds:.1f} s"
    )
    decision = new.info.get("decision")
    if isinstance(decision, dict):
        lines.append(f"detects {' + '.join(as_group(decision['positive']))} (threshold "
                     f"{float(decision['threshold']):.3f}, {decision['scores_from']})")  # fmt: skip
    lines.append(f"wrote {out} (exit layer {new.exit_layer}, was {old.exit_layer})")
    if new.exit_layer > old.exit_layer:
        lines.append(
            f"it needs layers up to {new.exit_layer}: a calmd started on the old file loaded layers up to "
            f"{old.exit_layer} only and will refuse the reload, so restart it (`systemctl restart calmd`)"
        )
    else:
        lines.append("a running calmd picks it up on `systemctl reload calmd` (SIGHUP)")
    return {
        "classifier": str(out),
        "support_before": result.before,
        "support_after": result.after,
        "new_classes": result.new_classes,
        "added": [c.path for c in result.added],
        "skipped": result.skipped,
        "notes": result.notes,
        "features": {"from_cache": result.from_cache, "computed": result.computed},
        "exit_layer": {"before": old.exit_layer, "after": new.exit_layer},
        "seconds": round(seconds, 3),
        "text": "\n".join(lines),
    }
