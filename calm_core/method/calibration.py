"""The decision threshold of a detector (is this clip the positive class, e.g. spoof?), picked at the EER
point of scores the classifier never saw: validation clips when given, else leave-one-out over the support.

In-sample scores would not do: with few shots every support clip sits in its own class prototype, so its
log-odds are far more confident than those of a new call and the threshold would land in the wrong place.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..backbones.base import HeadLayout
from ..fingerprint import Fingerprint
from .classifier import CalmClassifier, CalmConfig, group_members
from .detection import eer, log_odds
from .fitting import recordings_per_class
from .subclasses import as_group

RULE = "eer"
SCORE = "mean over segments of ln((p_pos + 1e-6) / (p_best_other + 1e-6)), CALM class scores"


Group = Sequence[str]  # the positive group: class names, e.g. ("spoof",) or ("spoof", "neural")


def group_firsts(groups: torch.Tensor) -> list[int]:
    """The index of each group's first clip (the recording itself), groups in order of first appearance."""
    return [int((groups == g).nonzero()[0]) for g in dict.fromkeys(groups.tolist())]


def loo_log_odds(
    features: torch.Tensor,
    labels: torch.Tensor,
    names: list[str],
    layout: HeadLayout,
    fingerprint: Fingerprint,
    config: CalmConfig,
    positive: str | Group,
    groups: torch.Tensor | None = None,
) -> np.ndarray:
    """Each support clip's log-odds of the positive group, from a classifier fitted (same config) on the other clips:
    (N, L, H, D) -> (N,). N fits; every class needs 2 clips so that one is left when one is held out.
    With groups (augmented copies of one recording), each group is left out whole and its first clip (the
    recording itself) is scored: one score per group, in order of first appearance."""
    index = group_members(names, positive)
    if groups is None:
        groups = torch.arange(features.shape[0])
    counts = recordings_per_class(labels, len(names), groups)
    if bool((counts < 2).any()):
        short = [n for n, c in zip(names, counts.tolist()) if c < 2]
        raise ValueError(f"leave-one-out calibration needs 2 support clips in every class ({short} have fewer); "
                         "give validation clips with --val")  # fmt: skip
    firsts = group_firsts(groups)
    scores = np.empty(len(firsts))
    # A class left with one clip fits with uniform weights, and says so once per fit: not news here.
    quiet = logging.getLogger("calm_core.method.classifier")
    level = quiet.level
    quiet.setLevel(logging.ERROR)
    try:
        for j, i in enumerate(firsts):
            rest = groups != groups[i]
            clf = CalmClassifier.fit(
                features[rest], labels[rest], names, layout, fingerprint, config, groups=groups[rest]
            )
            scores[j] = log_odds(clf.scores(features[i : i + 1]).float().numpy(), index)[0]
    finally:
        quiet.setLevel(level)
    return scores


def parse_rule(text: str) -> tuple[str, float | None]:
    """`eer`, or `far=X`: the lowest threshold that flags at most a share X of negative clips (false alarms)."""
    if text == "eer":
        return "eer", None
    if text.startswith("far="):
        try:
            far = float(text[4:])
        except ValueError:
            far = -1.0
        if 0.0 <= far < 1.0:
            return "far", far
    raise ValueError(f"--calibrate {text!r}: expected eer or far=X with 0 <= X < 1 (e.g. far=0.01)")


def far_threshold(negative_scores: np.ndarray, far: float) -> float:
    """The lowest threshold t with mean(negative_scores >= t) <= far."""
    ordered = np.sort(np.asarray(negative_scores, dtype=np.float64))[::-1]  # highest first
    allowed = int(np.floor(far * ordered.size + 1e-9))  # negatives that may be flagged
    if allowed >= ordered.size:
        return float(ordered[-1])
    # Flag the `allowed` highest negatives at most: just above the next one down.
    return float(np.nextafter(ordered[allowed], np.inf))


def eer_decision(
    scores: np.ndarray, is_positive: np.ndarray, positive: str | Group, scores_from: str, rule: str = RULE
) -> dict[str, Any]:
    """The classifier file's info["decision"]: flag the positive group when the call score >= threshold, the threshold
    at the EER point of these held-out scores, or (rule far=X) at a false-alarm rate of at most X."""
    is_positive = np.asarray(is_positive, dtype=bool)
    value, threshold = eer(scores, is_positive)
    kind, far = parse_rule(rule)
    if kind == "far":
        assert far is not None
        threshold = far_threshold(np.asarray(scores)[~is_positive], far)
    if not np.isfinite(threshold):
        raise ValueError(f"the {scores_from} scores give no finite EER threshold (all {scores.size} alike?)")
    return {
        "positive": list(as_group(positive)),
        "threshold": threshold,
        "rule": rule,
        "scores_from": scores_from,
        "score": SCORE,
        "eer": value,
        "n_positive": int(is_positive.sum()),
        "n_negative": int((~is_positive).sum()),
    }


def calibrate(
    clf: CalmClassifier,
    features: torch.Tensor,
    labels: torch.Tensor,
    positive: str | Group,
    val_features: torch.Tensor | None = None,
    val_labels: torch.Tensor | None = None,
    rule: str = RULE,
    groups: torch.Tensor | None = None,
) -> dict[str, Any]:
    """The decision for a fitted classifier: its threshold from validation clips when given (scored by clf
    itself), else from leave-one-out over the support features it was fitted on (groups: see loo_log_odds)."""
    index = group_members(clf.labels, positive)
    if val_features is not None and val_labels is not None:
        scores = log_odds(clf.scores(val_features).float().numpy(), index)
        return eer_decision(scores, np.isin(val_labels.numpy(), index), positive, "validation", rule)
    # The held-out fits keep the (sub-)classes clf was fitted with: its labels of the support, no new split.
    config = replace(clf.config, split="none")
    labels = clf.support_labels if clf.support_labels is not None else labels
    scores = loo_log_odds(features, labels, clf.labels, clf.layout, clf.fingerprint, config, positive, groups)
    if groups is not None:
        labels = labels[group_firsts(groups)]
    return eer_decision(scores, np.isin(labels.numpy(), index), positive, "leave-one-out support", rule)


def site_clips(root: Path) -> tuple[list[Path], list[str]]:
    """Every audio file under root (recursively) and its call: the folder it sits in, relative to root
    (files directly in root are each their own call)."""
    from ..audio.clipsets import AUDIO_SUFFIXES
    from ..errors import DatasetError

    if not root.is_dir():
        raise DatasetError(f"{root}: expected a folder of the site's own genuine clips (any layout of audio files)")
    files = sorted(p for p in root.rglob("*") if p.is_file() and p.suffix.lower() in AUDIO_SUFFIXES)
    if not files:
        raise DatasetError(f"{root}: holds no audio files ({', '.join(sorted(AUDIO_SUFFIXES))})")
    calls = [str(p.relative_to(root)) if p.parent == root else str(p.parent.relative_to(root)) for p in files]
    return files, calls


def site_decision(
    stored: dict[str, Any], clip_scores: np.ndarray, calls: list[str] | None, far: float, source: str
) -> tuple[dict[str, Any], dict[str, Any]]:
    """A detector's decision re-set from the site's own genuine traffic (no attacks needed): the threshold that
    flags at most a share `far` of its calls (per clip when calls is None), and a summary of what the stored
    and the new thresholds do to that traffic."""
    scores = np.asarray(clip_scores, dtype=np.float64)
    if calls is not None:
        from .detection import per_call

        _, scores, _ = per_call(scores, np.zeros(scores.size, bool), calls)
    threshold = far_threshold(scores, far)
    old = float(stored["threshold"])
    decision = {
        **stored,
        "threshold": threshold,
        "rule": f"far={far:g}",
        "scores_from": f"site genuine {'calls' if calls is not None else 'clips'}: {source}",
        "n_negative": int(scores.size),
        "n_positive": 0,
        "previous_threshold": old,
    }
    summary = {
        "units": "calls" if calls is not None else "clips",
        "n": int(scores.size),
        "far_target": far,
        "lowest_reachable_far": 1.0 / scores.size,
        "flagged_at_stored": float(np.mean(scores >= old)),
        "flagged_at_new": float(np.mean(scores >= threshold)),
        "stored_threshold": old,
        "new_threshold": threshold,
    }
    return decision, summary
