"""What the accuracy benchmarks share: support draws, one fitter for every pipeline name (CALM, SAV, the paper,
the probes), mean ± sd."""

from __future__ import annotations

import hashlib
import statistics
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from calm_core.method import calm
from calm_core.method.classifier import PRESETS, CalmClassifier
from calm_core.method.detection import log_odds


def support_draws(pools: list[torch.Tensor], shots: int, n: int, seed: int) -> Iterator[torch.Tensor]:
    """n random supports: `shots` indices from each class's pool of indices, one generator for all draws."""
    gen = torch.Generator().manual_seed(seed)
    for _ in range(n):
        yield torch.cat([p[torch.randperm(len(p), generator=gen)[:shots]] for p in pools])


def class_pools(labels: torch.Tensor, n_classes: int) -> list[torch.Tensor]:
    return [torch.nonzero(labels == c).flatten() for c in range(n_classes)]


def head_matrix(features: torch.Tensor) -> np.ndarray:
    """(N, L, H, D) -> (N, L * H * D): every head L2-normalised, then concatenated."""
    return calm.l2_normalize(features.flatten(1, 2)).flatten(1).numpy()


def fit_probe(support: torch.Tensor, labels: torch.Tensor):
    """The linear-probe baseline: logistic regression (scikit-learn, L2, C = 1) on all heads concatenated."""
    from sklearn.linear_model import LogisticRegression

    return LogisticRegression(C=1.0, max_iter=1000).fit(head_matrix(support), labels.numpy())


def parse_method(text: str) -> tuple[str, dict]:
    """`calm` or `calm[top_k=40,tau=0.05]`: a method and CalmConfig overrides (top_k=all: every head)."""
    if "[" not in text:
        return text, {}
    method, rest = text.rstrip("]").split("[")
    overrides: dict = {}
    for item in rest.split(","):
        key, value = item.split("=")
        overrides[key] = None if value == "all" else (int(value) if value.isdigit() else float(value))
    return method, overrides


@dataclass
class Fitted:
    """One pipeline fitted on one support: CALM or SAV through a CalmClassifier, or the all-heads probe."""

    clf: CalmClassifier | None
    probe: Any  # a fitted sklearn LogisticRegression, or None
    kind: str  # which scores of the classifier: "calm" or "sav"

    def predict(self, features: torch.Tensor) -> torch.Tensor:
        """(N,) class indices."""
        if self.clf is None:
            return torch.from_numpy(self.probe.predict(head_matrix(features)))
        return self.clf.scores(features, self.kind).argmax(1)

    def positive_score(self, features: torch.Tensor, positive: Sequence[str]) -> np.ndarray:
        """(N,) log-odds of the positive group (the probe: its decision value, fitted on 0 = negative, 1 = positive)."""
        if self.clf is None:
            return self.probe.decision_function(head_matrix(features))
        group = [i for i, n in enumerate(self.clf.labels) if n.split("/")[0] in positive]
        return log_odds(self.clf.scores(features, self.kind).float().numpy(), group)


def fit_pipeline(pipeline: str, support: torch.Tensor, labels: torch.Tensor, names: list[str], backbone,  # type: ignore[no-untyped-def]
                 groups: torch.Tensor | None = None, split: bool = False) -> Fitted:  # fmt: skip
    """The pipeline's method (before the first `+`): `probe` (logistic regression over every head), `sav`,
    `paper` (the paper's preset) or `calm`, with `[k=v]` CalmConfig overrides; `+probe` anywhere in the name fits
    CALM's probe combiner; split=True lets the fit split classes into sub-classes (--split auto). Other `+` parts
    (`+cond`, `+aug`) are the caller's: they choose the features."""
    method, overrides = parse_method(pipeline.split("+")[0])
    if method == "probe":
        return Fitted(None, fit_probe(support, labels), "calm")
    config = replace(PRESETS["paper" if method == "paper" else "calm"], **overrides)
    config = replace(config, combiner="probe" if "+probe" in pipeline else "vote", split="auto" if split else "none")
    clf = CalmClassifier.fit(support, labels, names, backbone.layout, backbone.fingerprint, config, groups=groups)
    return Fitted(clf, None, "sav" if method == "sav" else "calm")


def fmt(values: list[float]) -> str:
    m, s = mean_sd(values)
    return f"{m:.3f} ± {s:.3f}"


def paired_interval(a: list[float], b: list[float]) -> tuple[float, float, float]:
    """Mean of the per-draw differences a - b and its 95 % interval (normal approximation)."""
    d = [x - y for x, y in zip(a, b)]
    m, s = mean_sd(d)
    half = 1.96 * s / len(d) ** 0.5
    return m, m - half, m + half


def mean_sd(values: list[float]) -> tuple[float, float]:
    return statistics.mean(values), statistics.stdev(values) if len(values) > 1 else 0.0


class Features:
    """Head features of shifted, conditioned clips, computed once and kept on disk by a key."""

    def __init__(self, backbone, cache: Path) -> None:  # type: ignore[no-untyped-def]
        self.backbone = backbone
        self.cache = cache
        cache.mkdir(parents=True, exist_ok=True)

    def get(self, key: str, clips: list[np.ndarray], make: Callable[[int, np.ndarray], np.ndarray]) -> torch.Tensor:
        path = self.cache / f"{hashlib.sha256(key.encode()).hexdigest()[:24]}.pt"
        if path.is_file():
            return torch.load(path)
        prepared = [make(i, c) for i, c in enumerate(clips)]
        order = sorted(range(len(prepared)), key=lambda i: prepared[i].size)
        out: list[torch.Tensor | None] = [None] * len(prepared)
        for start in range(0, len(order), 8):
            batch = order[start : start + 8]
            feats = self.backbone.head_activations([prepared[i] for i in batch])
            for i, f in zip(batch, feats):
                out[i] = f
        stacked = torch.stack([t for t in out if t is not None])
        torch.save(stacked, path)
        return stacked
