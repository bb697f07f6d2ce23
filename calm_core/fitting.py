"""Fit-time choices of CALM: where head reliability comes from, and how many heads each class keeps.

Both use the labelled clips the user gave (support, and validation clips when given) and
nothing else. The number of heads per class, when left to `auto`, is chosen by leave-one-out
over the support clips: each clip in turn is classified by a classifier fitted on the others
(its reliability recomputed without it), so the choice never sees the clip it is scored on.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

from . import calm

if TYPE_CHECKING:
    from .classifier import CalmConfig

TOP_K_CANDIDATES = (5, 10, 20, 40)  # heads per class tried by top_k = "auto"
DEFAULT_TOP_K = 20  # the paper's setting; preferred among candidates that tie


@dataclass(frozen=True)
class Reliability:
    r: torch.Tensor  # (K, C) per-head, per-class reliability
    posteriors: torch.Tensor  # (M, K, C) head posteriors of the clips it was measured on
    labels: torch.Tensor  # (M,) their classes
    source: str  # where it came from, for the classifier file's info


def head_reliability(
    config: CalmConfig,
    flat: torch.Tensor,
    labels: torch.Tensor,
    prototypes: torch.Tensor,
    val_flat: torch.Tensor | None = None,
    val_labels: torch.Tensor | None = None,
) -> Reliability:
    """Per-head, per-class reliability from support features (N, K, D) and optional validation clips."""
    n_classes = prototypes.shape[0]
    counts = torch.bincount(labels, minlength=n_classes)
    in_sample = calm.head_posteriors(flat, prototypes, config.tau)  # (N, K, C)
    has_val = val_flat is not None and val_labels is not None
    if config.scheme == "separation_f1":
        separation = calm.reliability(in_sample, labels, n_classes, "margin_clamped")
        if has_val:
            assert val_flat is not None and val_labels is not None
            post = calm.head_posteriors(val_flat, prototypes, config.tau)
            f1 = calm.vote_f1(calm.hard_votes(post), val_labels, n_classes)
            n_held_out = torch.bincount(val_labels, minlength=n_classes)
            return Reliability(
                calm.separation_f1_reliability(separation, f1, n_held_out, config.prior_strength),
                post, val_labels, "support separation + validation F1",
            )  # fmt: skip
        if bool((counts >= 2).all()):
            loo = calm.loo_posteriors(flat, labels, n_classes, config.tau)
            # In-sample votes flatter a head (the clip is in its own prototype), leave-one-out
            # votes judge it on a prototype one clip poorer than the real one: take the middle.
            f1 = 0.5 * (
                calm.vote_f1(calm.hard_votes(in_sample), labels, n_classes)
                + calm.vote_f1(calm.hard_votes(loo), labels, n_classes)
            )
            r = calm.separation_f1_reliability(separation, f1, counts - 1, config.prior_strength)
            return Reliability(r, loo, labels, "support separation + leave-one-out F1")
        return Reliability(separation, in_sample, labels, "support separation (a class has 1 clip)")
    if has_val:
        assert val_flat is not None and val_labels is not None
        post = calm.head_posteriors(val_flat, prototypes, config.tau)
        return Reliability(
            calm.reliability(post, val_labels, n_classes, config.scheme, config.alpha), post, val_labels, "validation"
        )
    if config.reliability_from == "support":
        r = calm.reliability(in_sample, labels, n_classes, config.scheme, config.alpha)
        return Reliability(r, in_sample, labels, "support (in-sample)")
    if bool((counts >= 2).all()):
        loo = calm.loo_posteriors(flat, labels, n_classes, config.tau)
        r = calm.reliability(loo, labels, n_classes, config.scheme, config.alpha)
        return Reliability(r, loo, labels, "leave-one-out")
    return Reliability(
        torch.zeros(flat.shape[1], n_classes), in_sample, labels, "none (a class has 1 clip): uniform weights"
    )


@dataclass(frozen=True)
class FittedWeights:
    prototypes: torch.Tensor  # (C, K, D)
    reliability: Reliability
    weights: torch.Tensor  # (K, C), summing to 1 over heads
    sav_heads: torch.Tensor  # (S,) the SAV baseline's heads
    top_k: int | None
    top_k_correct: dict[int, int]  # leave-one-out correct clips per candidate, when top_k was "auto"


def fit_weights(
    config: CalmConfig,
    flat: torch.Tensor,
    labels: torch.Tensor,
    n_classes: int,
    allowed: torch.Tensor,
    val_flat: torch.Tensor | None = None,
    val_labels: torch.Tensor | None = None,
) -> FittedWeights:
    """Prototypes, reliability, SAV heads and class-specific head weights from labelled features (N, K, D)."""
    prototypes = calm.class_prototypes(flat, labels, n_classes)  # (C, K, D)
    counts = torch.bincount(labels, minlength=n_classes)
    rel = head_reliability(config, flat, labels, prototypes, val_flat, val_labels)
    # SAV picks its heads the same way whatever CALM's settings: validation clips when
    # given, else leave-one-out, so every CALM preset is compared with the same baseline.
    if val_flat is not None and val_labels is not None:
        sav_post, sav_labels = calm.head_posteriors(val_flat, prototypes, config.tau), val_labels
    elif bool((counts >= 2).all()):
        sav_post, sav_labels = calm.loo_posteriors(flat, labels, n_classes, config.tau), labels
    else:
        sav_post, sav_labels = calm.head_posteriors(flat, prototypes, config.tau), labels
    acc = calm.head_accuracy(sav_post, sav_labels).masked_fill(~allowed, -1.0)
    sav_heads = torch.sort(acc, descending=True, stable=True).indices[: min(config.sav_heads, int(allowed.sum()))]
    top_k: int | None
    if config.top_k == "auto":
        top_k, tried = select_top_k(config, flat, labels, n_classes, allowed)
    else:
        top_k, tried = config.top_k, {}
    w = _weights(config, rel.r, top_k, allowed, sav_heads, counts)
    return FittedWeights(prototypes, rel, w, sav_heads, top_k, tried)


def _weights(
    config: CalmConfig,
    r: torch.Tensor,
    top_k: int | None,
    allowed: torch.Tensor,
    sav_heads: torch.Tensor,
    counts: torch.Tensor,
) -> torch.Tensor:
    w = calm.head_weights(r, config.scheme, top_k, config.weight_temperature, allowed)
    return calm.shrink_to_uniform_vote(w, sav_heads, counts, config.sav_shrinkage)


def select_top_k(
    config: CalmConfig, flat: torch.Tensor, labels: torch.Tensor, n_classes: int, allowed: torch.Tensor
) -> tuple[int, dict[int, int]]:
    """Heads per class by leave-one-out over the support clips: (chosen k, correct clips per candidate).

    Each clip is scored by weights fitted, exactly as `fit_weights` does, on the other clips.
    Needs 2 clips in every class (one held out, one left); with fewer it returns the default.
    Ties go to the candidate nearest the default on a log scale.
    """
    from dataclasses import replace

    n_allowed = int(allowed.sum())
    candidates = sorted({min(k, n_allowed) for k in TOP_K_CANDIDATES})
    counts = torch.bincount(labels, minlength=n_classes)
    if bool((counts < 2).any()):
        return min(DEFAULT_TOP_K, n_allowed), {}
    correct = dict.fromkeys(candidates, 0)
    for i in range(flat.shape[0]):
        rest = torch.arange(flat.shape[0]) != i
        # Reliability and SAV's heads do not depend on k: fit them once per held-out clip.
        fitted = fit_weights(replace(config, top_k=DEFAULT_TOP_K), flat[rest], labels[rest], n_classes, allowed)
        rest_counts = torch.bincount(labels[rest], minlength=n_classes)
        post = calm.head_posteriors(flat[i : i + 1], fitted.prototypes, config.tau)  # (1, K, C)
        for k in candidates:
            w = _weights(config, fitted.reliability.r, k, allowed, fitted.sav_heads, rest_counts)
            correct[k] += int(calm.calm_scores(post, w).argmax(1).item() == labels[i].item())
    best = max(correct.values())
    tied = [k for k, c in correct.items() if c == best]
    chosen = min(tied, key=lambda k: abs(math.log(k / DEFAULT_TOP_K)))
    return chosen, correct
