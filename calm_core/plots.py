"""The head-specialisation figure: each class's head weights over (layer, head)."""

from __future__ import annotations

from pathlib import Path

import torch

from .classifier import CalmClassifier


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
