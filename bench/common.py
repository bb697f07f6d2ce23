"""What the accuracy benchmarks share: support draws, the linear-probe baseline, mean ± sd."""

from __future__ import annotations

import statistics
from collections.abc import Iterator

import numpy as np
import torch

from calm_core import calm


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


def mean_sd(values: list[float]) -> tuple[float, float]:
    return statistics.mean(values), statistics.stdev(values) if len(values) > 1 else 0.0
