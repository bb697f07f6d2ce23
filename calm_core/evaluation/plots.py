"""Figures: each class's head weights over (layer, head); DET curves of a detector; confusion matrices."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from statistics import NormalDist

import numpy as np
import torch

from ..method.classifier import CalmClassifier


def weight_grid(clf: CalmClassifier) -> torch.Tensor:
    """Head weights on the model's full grid, zero for heads not kept: (C, n_layers, n_heads)."""
    grid = torch.zeros(len(clf.labels), clf.layout.n_total)
    grid[:, clf.heads] = clf.weights.T
    return grid.view(len(clf.labels), clf.layout.n_layers, clf.layout.n_heads)


def plot_head_weights(clf: CalmClassifier, out: str | Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    grid = weight_grid(clf).numpy()
    n = len(clf.labels)
    cols = min(n, 4)
    rows = -(-n // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(3.2 * cols, 3.0 * rows), squeeze=False, constrained_layout=True)
    vmax = float(grid.max()) or 1.0
    image = None
    for i, ax in enumerate(axes.flat):
        if i >= n:
            ax.axis("off")
            continue
        image = ax.imshow(grid[i], aspect="auto", origin="lower", cmap="magma", vmin=0.0, vmax=vmax)
        ax.axhline(clf.exit_layer + 0.5, color="cyan", linewidth=0.8, linestyle="--")
        ax.set_title(clf.labels[i], fontsize=9)
        ax.set_xlabel("head")
        ax.set_ylabel("layer")
    fig.suptitle(f"CALM head weights per class (dashed: exit layer {clf.exit_layer} of {clf.layout.n_layers})")
    if image is not None:
        fig.colorbar(image, ax=axes, shrink=0.8, label="weight")
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=120)
    plt.close(fig)
    return out


@dataclass(frozen=True)
class DetCurve:
    name: str  # legend, e.g. "CALM per clip"
    false_alarm: np.ndarray  # rates at each threshold (detection.det_curve)
    miss: np.ndarray
    eer: float
    dashed: bool = False
    color: str | None = None  # matplotlib colour; None: the next in the cycle


DET_TICKS = (0.001, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.4, 0.6, 0.8, 0.9, 0.95, 0.99)


def _probit(p: np.ndarray, lo: float = 1e-9, hi: float = 1 - 1e-9) -> np.ndarray:
    """Normal deviate of each rate. Rates of 0 and 1 have none: they are moved far past the axes, so a curve
    leaves the plot there instead of running along its edge."""
    inv = NormalDist().inv_cdf
    return np.array([inv(float(x)) for x in np.clip(p, lo, hi)])


def plot_det(curves: list[DetCurve], out: str | Path, title: str, hi: float = 0.99) -> Path:
    """DET curves: miss against false-alarm rate on normal-deviate axes (as NIST and ASVspoof draw them), where
    a detector with Gaussian scores is a straight line; each curve's EER is marked on the diagonal. The axes
    start at the tick below half the smallest non-zero rate (0.1 % at least): with few clips nothing finer can
    be seen."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rates = np.concatenate([np.concatenate([c.false_alarm, c.miss]) for c in curves])
    smallest = 0.5 * float(rates[rates > 0].min(initial=1.0))
    lo = max([t for t in DET_TICKS if t <= smallest], default=DET_TICKS[0])
    fig, ax = plt.subplots(figsize=(5.2, 5.2), constrained_layout=True)
    for curve in curves:
        (line,) = ax.plot(
            _probit(curve.false_alarm), _probit(curve.miss), linestyle="--" if curve.dashed else "-", color=curve.color,
            label=f"{curve.name} (EER {100 * curve.eer:.1f} %)",
        )  # fmt: skip
        e = _probit(np.array([curve.eer]), lo, hi)
        ax.plot(e, e, "o", color=line.get_color(), markersize=5, clip_on=False)
    ticks = [t for t in DET_TICKS if lo <= t <= hi]
    positions = _probit(np.array(ticks))
    labels = [f"{100 * t:.2g}" for t in ticks]
    ax.plot(positions[[0, -1]], positions[[0, -1]], color="0.7", linewidth=0.8, zorder=0)  # miss = false alarm
    for axis in (ax.xaxis, ax.yaxis):
        axis.set_ticks(positions, labels)
    ax.set_xlim(positions[0], positions[-1])
    ax.set_ylim(positions[0], positions[-1])
    ax.set_xlabel("false alarm rate (%)")
    ax.set_ylabel("miss rate (%)")
    ax.set_title(title, fontsize=9)
    ax.grid(True, color="0.9")
    ax.legend(fontsize=8, loc="upper right")
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=120)
    plt.close(fig)
    return out


def plot_confusion(matrices: dict[str, list[list[int]]], labels: list[str], out: str | Path, title: str) -> Path:
    """One confusion matrix per method side by side: rows the true class, columns the predicted one, each
    cell shaded by its share of the row (the class's recall on the diagonal) and labelled with its count."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = len(labels)
    side = max(3.2, 0.45 * n + 1.6)
    fig, axes = plt.subplots(
        1, len(matrices), figsize=(side * len(matrices), side), squeeze=False, constrained_layout=True
    )
    image = None
    for ax, (method, matrix) in zip(axes.flat, matrices.items()):
        counts = np.array(matrix, dtype=float)  # (C, C)
        share = counts / np.maximum(counts.sum(1, keepdims=True), 1)
        image = ax.imshow(share, cmap="Blues", vmin=0.0, vmax=1.0)
        if n <= 20:  # past that the numbers would not be readable
            for i in range(n):
                for j in range(n):
                    if counts[i, j]:
                        dark = share[i, j] > 0.6
                        ax.text(j, i, f"{int(counts[i, j])}", ha="center", va="center", fontsize=7,
                                color="white" if dark else "black")  # fmt: skip
        accuracy = np.trace(counts) / max(counts.sum(), 1)
        ax.set_title(f"{method.upper()}: accuracy {accuracy:.3f}", fontsize=9)
        ax.set_xticks(range(n), labels, rotation=60, ha="right", fontsize=7)
        ax.set_yticks(range(n), labels, fontsize=7)
        ax.set_xlabel("predicted")
        ax.set_ylabel("true")
    if image is not None:
        fig.colorbar(image, ax=axes, shrink=0.8, label="share of the true class")
    fig.suptitle(title, fontsize=9)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=120)
    plt.close(fig)
    return out
