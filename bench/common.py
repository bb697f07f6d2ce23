"""What the accuracy benchmarks share: support draws, the linear-probe baseline, mean ± sd."""

from __future__ import annotations

import hashlib
import statistics
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import torch

from calm_core.method import calm


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
