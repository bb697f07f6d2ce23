"""A discriminative combiner over the heads CALM reads: multinomial logistic regression on every head of the
layers up to CALM's exit layer, each head's output L2-normalised and concatenated. Where a site teaches calm
with a few clips as it hears them, one prototype per class averages them into the clean clips; the probe
learns which directions of which heads tell the classes apart there (docs/robustness.md). It needs the same
layers as CALM's vote, so the forward pass stops at the same layer.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from . import calm

C_REGULARISATION = 1.0  # scikit-learn's C: inverse L2 strength (its default); not tuned on any test clip


@dataclass(frozen=True)
class HeadProbe:
    heads: torch.Tensor  # (H,) flat head indices it reads
    weight: torch.Tensor  # (C, H * D)
    bias: torch.Tensor  # (C,)

    def logits(self, flat: torch.Tensor) -> torch.Tensor:
        """(N, K_all, D) head features (every head up to the exit layer at least) -> (N, C)."""
        x = calm.l2_normalize(flat[:, self.heads].float()).flatten(1)  # (N, H * D)
        return x @ self.weight.T + self.bias

    def scores(self, flat: torch.Tensor) -> torch.Tensor:
        """Class probabilities (N, C)."""
        return torch.softmax(self.logits(flat), dim=-1)


def fit_head_probe(flat: torch.Tensor, labels: torch.Tensor, n_classes: int, heads: torch.Tensor) -> HeadProbe:
    """Logistic regression (L2, C = 1, lbfgs) of labels (N,) on the heads' features flat (N, K, D)."""
    from sklearn.linear_model import LogisticRegression

    x = calm.l2_normalize(flat[:, heads].float()).flatten(1).double().numpy()
    model = LogisticRegression(C=C_REGULARISATION, max_iter=1000).fit(x, labels.numpy())
    coef = torch.from_numpy(model.coef_).float()
    intercept = torch.from_numpy(model.intercept_).float()
    if coef.shape[0] == 1:  # two classes: scikit-learn keeps one row, p(1) = sigmoid(w x + b) = softmax([0, w x + b])
        coef = torch.cat([torch.zeros_like(coef), coef])
        intercept = torch.cat([torch.zeros_like(intercept), intercept])
    weight = torch.zeros(n_classes, coef.shape[1])
    bias = torch.full((n_classes,), -1e4)  # a class without clips (cannot happen in a fit) is never chosen
    seen = torch.from_numpy(model.classes_).long()
    weight[seen], bias[seen] = coef, intercept
    return HeadProbe(heads.clone(), weight, bias)
