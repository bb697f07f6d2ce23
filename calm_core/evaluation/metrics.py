"""Metrics for CALM and the SAV baseline on the same features."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from sklearn.metrics import accuracy_score, classification_report, confusion_matrix, f1_score

from ..method.classifier import UNKNOWN, CalmClassifier, Method, group_members, parent_of
from ..method.detection import ASVSPOOF5, detection_report, log_odds, per_call


def method_metrics(y_true: list[int], y_pred: list[int], labels: list[str]) -> dict[str, Any]:
    idx = list(range(len(labels)))
    report = classification_report(y_true, y_pred, labels=idx, target_names=labels, output_dict=True, zero_division=0)
    return {
        "accuracy": float(accuracy_score(y_true, y_pred)),
        "macro_f1": float(f1_score(y_true, y_pred, labels=idx, average="macro", zero_division=0)),
        "per_class": {
            name: {k: float(report[name][k]) for k in ("precision", "recall", "f1-score", "support")} for name in labels
        },
        "confusion": confusion_matrix(y_true, y_pred, labels=idx).tolist(),
    }


def evaluate(clf: CalmClassifier, features: torch.Tensor, y_true: list[int]) -> dict[str, Any]:
    """Accuracy, macro-F1, per-class report and confusion matrix for CALM and SAV, plus abstention.
    y_true indexes clf.classes (sub-classes folded into their class: clf.class_index)."""
    classes = clf.classes
    result: dict[str, Any] = {"n": len(y_true), "labels": classes}
    methods: tuple[Method, ...] = ("calm", "sav")
    for method in methods:
        preds = clf.predict(features, method)
        result[method] = method_metrics(y_true, [classes.index(p.best) for p in preds], classes)
        if method == "calm" and clf.abstain_threshold is not None:
            answered = [(p.label, y) for p, y in zip(preds, y_true) if p.label != UNKNOWN]
            result["calm"]["abstain"] = {
                "threshold": clf.abstain_threshold,
                "coverage": len(answered) / max(1, len(preds)),
                "selective_accuracy": (
                    sum(classes[y] == label for label, y in answered) / len(answered) if answered else None
                ),
            }
    result["exit_layer"] = {"calm": clf.exit_layer, "sav": clf.sav_exit_layer}
    return result


def format_report(result: dict[str, Any]) -> str:
    labels: list[str] = result["labels"]
    width = max(12, *(len(x) for x in labels))
    lines = [f"clips: {result['n']}", "", f"{'':<{width}} {'CALM':>8} {'SAV':>8}"]
    for key, name in (("accuracy", "accuracy"), ("macro_f1", "macro-F1")):
        lines.append(f"{name:<{width}} {result['calm'][key]:>8.3f} {result['sav'][key]:>8.3f}")
    lines.append(f"{'exit layer':<{width}} {result['exit_layer']['calm']:>8} {result['exit_layer']['sav']:>8}")
    if "abstain" in result["calm"]:
        a = result["calm"]["abstain"]
        sel = "n/a" if a["selective_accuracy"] is None else f"{a['selective_accuracy']:.3f}"
        lines.append(
            f"CALM abstains below {a['threshold']:.4f}: coverage {a['coverage']:.3f}, accuracy when answering {sel}"
        )
    for method in ("calm", "sav"):
        m = result[method]
        lines += ["", f"{method.upper()} per class:", f"{'':<{width}} {'prec':>6} {'recall':>6} {'f1':>6} {'n':>5}"]
        for name in labels:
            r = m["per_class"][name]
            lines.append(
                f"{name:<{width}} {r['precision']:>6.3f} {r['recall']:>6.3f} "
                f"{r['f1-score']:>6.3f} {int(r['support']):>5}"
            )
        lines += ["", f"{method.upper()} confusion (rows: true, columns: predicted class number):"]
        lines.append(" " * (width + 4) + " ".join(f"{i:>4}" for i in range(len(labels))))
        for i, (name, row) in enumerate(zip(labels, m["confusion"])):
            lines.append(f"{i:>2} {name:<{width}} " + " ".join(f"{v:>4}" for v in row))
    return "\n".join(lines)


def detection_scores(clf: CalmClassifier, features: torch.Tensor, positive: Sequence[str]) -> dict[str, np.ndarray]:
    """Per-clip log-odds of the positive group over the best class outside it (the score calmd's per-call
    verdicts average), for CALM and SAV."""
    members = group_members(clf.labels, positive)
    methods: tuple[Method, ...] = ("calm", "sav")
    return {m: log_odds(clf.scores(features, m).float().numpy(), members) for m in methods}


def is_positive_class(clf: CalmClassifier, positive: Sequence[str]) -> np.ndarray:
    """(P,) whether each of clf.classes is on the positive side (a class with any sub-class in the group)."""
    members = {parent_of(clf.labels[i]) for i in group_members(clf.labels, positive)}
    return np.array([c in members for c in clf.classes], dtype=bool)


def detection(
    clf: CalmClassifier, features: torch.Tensor, y_true: list[int], positive: Sequence[str],
    calls: list[str] | None = None,
) -> dict[str, Any]:  # fmt: skip
    """AUC, EER and minDCF (ASVspoof 5 costs) of the positive group against every other class, for CALM and SAV,
    per clip and, when clips carry call ids, per call (the mean of its clips' log-odds). y_true indexes
    clf.classes."""
    scores = detection_scores(clf, features, positive)
    is_positive = is_positive_class(clf, positive)[np.asarray(y_true, dtype=int)]
    name = " + ".join(positive)
    result: dict[str, Any] = {"positive": name, "n_positive": int(is_positive.sum()), "costs": ASVSPOOF5.__dict__}
    for method, s in scores.items():
        result[method] = detection_report(s, is_positive)
    if calls is not None:
        per: dict[str, Any] = {}
        for method, s in scores.items():
            ids, call_scores, call_positive = per_call(s, is_positive, calls)
            per[method] = detection_report(call_scores, call_positive)
        per.update(n=len(ids), n_positive=int(call_positive.sum()))
        result["per_call"] = per
    return result


def format_detection(result: dict[str, Any]) -> str:
    c = result["costs"]
    lines = [
        "",
        f"detection of {result['positive']!r} ({result['n_positive']} positive clips; score: log-odds of "
        f"{result['positive']!r}; minDCF with ASVspoof 5 costs C_miss={c['c_miss']:g}, C_fa={c['c_fa']:g}, "
        f"pi_spoof={c['p_spoof']:g})",
        f"{'':<16} {'CALM':>9} {'SAV':>9}",
    ]
    lines += _detection_rows(result)
    if "per_call" in result:
        per = result["per_call"]
        lines += ["", f"per call ({per['n']} calls, {per['n_positive']} positive; score: mean log-odds of its clips)",
                  f"{'':<16} {'CALM':>9} {'SAV':>9}", *_detection_rows(per)]  # fmt: skip
    return "\n".join(lines)


def _detection_rows(result: dict[str, Any]) -> list[str]:
    rows = (("auc", "ROC AUC"), ("eer", "EER"), ("eer_threshold", "EER threshold"),
            ("min_dcf", "minDCF"), ("min_dcf_threshold", "minDCF threshold"))  # fmt: skip
    return [f"{name:<16} {result['calm'][key]:>9.4f} {result['sav'][key]:>9.4f}" for key, name in rows]
