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
    from .settings import CalmConfig

TOP_K_CANDIDATES = (5, 10, 20, 40)  # heads per class tried by top_k = "auto"
DEFAULT_TOP_K = 20  # the paper's setting; preferred among candidates that tie


@dataclass(frozen=True)
class Reliability:
    r: torch.Tensor  # (K, C) per-head, per-class reliability
    posteriors: torch.Tensor  # (M, K, C) head posteriors of the clips it was measured on
    labels: torch.Tensor  # (M,) their classes
    source: str  # where it came from, for the classifier file's info


@dataclass(frozen=True)
class HeldOut:
    """Head posteriors of labelled clips scored against prototypes they are not part of: validation clips,
    else the support clips by leave-one-out, else (a class with 1 clip) the support clips in-sample."""

    posteriors: torch.Tensor  # (M, K, C)
    labels: torch.Tensor  # (M,)
    kind: str  # "validation", "leave-one-out" or "in-sample"


def held_out_posteriors(
    config: CalmConfig,
    flat: torch.Tensor,
    labels: torch.Tensor,
    prototypes: torch.Tensor,
    val_flat: torch.Tensor | None = None,
    val_labels: torch.Tensor | None = None,
    groups: torch.Tensor | None = None,
) -> HeldOut:
    n_classes = prototypes.shape[0]
    if val_flat is not None and val_labels is not None:
        return HeldOut(calm.head_posteriors(val_flat, prototypes, config.tau), val_labels, "validation")
    if bool((recordings_per_class(labels, n_classes, groups) >= 2).all()):
        posteriors = calm.loo_posteriors(flat, labels, n_classes, config.tau, groups)
        return HeldOut(posteriors, labels, "leave-one-out")
    return HeldOut(calm.head_posteriors(flat, prototypes, config.tau), labels, "in-sample")


def recordings_per_class(labels: torch.Tensor, n_classes: int, groups: torch.Tensor | None = None) -> torch.Tensor:
    """Distinct recordings per class, (C,): clips, or groups of augmented copies of one recording."""
    if groups is None:
        return torch.bincount(labels, minlength=n_classes)
    firsts = torch.unique(groups * n_classes + labels)  # one entry per (group, class)
    return torch.bincount(firsts % n_classes, minlength=n_classes)


def head_reliability(
    config: CalmConfig,
    flat: torch.Tensor,
    labels: torch.Tensor,
    prototypes: torch.Tensor,
    held: HeldOut,
    groups: torch.Tensor | None = None,
) -> Reliability:
    """Per-head, per-class reliability from support features (N, K, D) and their held-out posteriors."""
    n_classes = prototypes.shape[0]
    in_sample = calm.head_posteriors(flat, prototypes, config.tau)  # (N, K, C)
    if config.scheme == "separation_f1":
        separation = calm.reliability(in_sample, labels, n_classes, "margin_clamped")
        if held.kind == "validation":
            f1 = calm.vote_f1(calm.hard_votes(held.posteriors), held.labels, n_classes)
            n_held_out = torch.bincount(held.labels, minlength=n_classes)
            return Reliability(
                calm.separation_f1_reliability(separation, f1, n_held_out, config.prior_strength),
                held.posteriors, held.labels, "support separation + validation F1",
            )  # fmt: skip
        if held.kind == "leave-one-out":
            # In-sample votes flatter a head (the clip is in its own prototype), leave-one-out
            # votes judge it on a prototype one clip poorer than the real one: take the middle.
            f1 = 0.5 * (
                calm.vote_f1(calm.hard_votes(in_sample), labels, n_classes)
                + calm.vote_f1(calm.hard_votes(held.posteriors), labels, n_classes)
            )
            counts = recordings_per_class(labels, n_classes, groups)
            r = calm.separation_f1_reliability(separation, f1, counts - 1, config.prior_strength)
            return Reliability(r, held.posteriors, labels, "support separation + leave-one-out F1")
        return Reliability(separation, in_sample, labels, "support separation (a class has 1 clip)")
    if held.kind == "validation":
        r = calm.reliability(held.posteriors, held.labels, n_classes, config.scheme, config.alpha)
        return Reliability(r, held.posteriors, held.labels, "validation")
    if config.reliability_from == "support":
        r = calm.reliability(in_sample, labels, n_classes, config.scheme, config.alpha)
        return Reliability(r, in_sample, labels, "support (in-sample)")
    if held.kind == "leave-one-out":
        r = calm.reliability(held.posteriors, labels, n_classes, config.scheme, config.alpha)
        return Reliability(r, held.posteriors, labels, "leave-one-out")
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


def _reliability_and_sav(
    config: CalmConfig,
    flat: torch.Tensor,
    labels: torch.Tensor,
    n_classes: int,
    allowed: torch.Tensor,
    val_flat: torch.Tensor | None = None,
    val_labels: torch.Tensor | None = None,
    groups: torch.Tensor | None = None,
) -> tuple[torch.Tensor, Reliability, torch.Tensor]:
    """Prototypes (C, K, D), reliability and SAV's heads: everything a fit needs before the weights."""
    prototypes = calm.class_prototypes(flat, labels, n_classes)  # (C, K, D)
    held = held_out_posteriors(config, flat, labels, prototypes, val_flat, val_labels, groups)
    rel = head_reliability(config, flat, labels, prototypes, held, groups)
    # SAV picks its heads from the held-out posteriors whatever CALM's settings, so every CALM
    # preset is compared with the same baseline.
    sav_heads = calm.sav_select(held.posteriors, held.labels, config.sav_heads, allowed)
    return prototypes, rel, sav_heads


def fit_weights(
    config: CalmConfig,
    flat: torch.Tensor,
    labels: torch.Tensor,
    n_classes: int,
    allowed: torch.Tensor,
    val_flat: torch.Tensor | None = None,
    val_labels: torch.Tensor | None = None,
    groups: torch.Tensor | None = None,
) -> FittedWeights:
    """Prototypes, reliability, SAV heads and class-specific head weights from labelled features (N, K, D).
    groups (N,) marks augmented copies of one recording: they are left out together and count once."""
    prototypes, rel, sav_heads = _reliability_and_sav(
        config, flat, labels, n_classes, allowed, val_flat, val_labels, groups
    )
    top_k: int | None
    if config.top_k == "auto":
        if groups is not None:
            raise ValueError("top_k 'auto' is not supported with augmented support clips; give top_k a number")
        top_k, tried = select_top_k(config, flat, labels, n_classes, allowed)
    else:
        top_k, tried = config.top_k, {}
    counts = recordings_per_class(labels, n_classes, groups)
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
    n_allowed = int(allowed.sum())
    candidates = sorted({min(k, n_allowed) for k in TOP_K_CANDIDATES})
    counts = torch.bincount(labels, minlength=n_classes)
    if bool((counts < 2).any()):
        return min(DEFAULT_TOP_K, n_allowed), {}
    correct = dict.fromkeys(candidates, 0)
    for i in range(flat.shape[0]):
        rest = torch.arange(flat.shape[0]) != i
        # Reliability and SAV's heads do not depend on k: fit them once per held-out clip.
        prototypes, rel, sav_heads = _reliability_and_sav(config, flat[rest], labels[rest], n_classes, allowed)
        rest_counts = torch.bincount(labels[rest], minlength=n_classes)
        post = calm.head_posteriors(flat[i : i + 1], prototypes, config.tau)  # (1, K, C)
        for k in candidates:
            w = _weights(config, rel.r, k, allowed, sav_heads, rest_counts)
            correct[k] += int(calm.calm_scores(post, w).argmax(1).item() == labels[i].item())
    best = max(correct.values())
    tied = [k for k, c in correct.items() if c == best]
    chosen = min(tied, key=lambda k: abs(math.log(k / DEFAULT_TOP_K)))
    return chosen, correct


def loo_predictions(
    config: CalmConfig, flat: torch.Tensor, labels: torch.Tensor, n_classes: int, allowed: torch.Tensor,
    top_k: int | None,
) -> torch.Tensor:  # fmt: skip
    """Each support clip's best class from CALM fitted, as `fit_weights` fits, on the other clips: (N,)."""
    out = torch.empty(flat.shape[0], dtype=torch.long)
    for i in range(flat.shape[0]):
        rest = torch.arange(flat.shape[0]) != i
        prototypes, rel, sav_heads = _reliability_and_sav(config, flat[rest], labels[rest], n_classes, allowed)
        rest_counts = torch.bincount(labels[rest], minlength=n_classes)
        post = calm.head_posteriors(flat[i : i + 1], prototypes, config.tau)  # (1, K, C)
        w = _weights(config, rel.r, top_k, allowed, sav_heads, rest_counts)
        out[i] = calm.calm_scores(post, w).argmax(1)[0]
    return out
