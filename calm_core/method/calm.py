"""CALM: class-conditional sparse attention vectors, as pure functions on tensors.

Notation follows the paper: N clips, K attention heads, C classes, D head dimension.
A clip's feature is the output of every head at the last prompt token, (N, K, D).
Nothing here loads a model, touches a file or keeps state.
"""

from __future__ import annotations

from typing import Literal, get_args

import torch
import torch.nn.functional as F

Scheme = Literal["separation_f1", "margin_clamped", "margin_softmax", "prob_softmax", "brier_softmax"]
SCHEMES: tuple[str, ...] = get_args(Scheme)
# The paper's schemes score each labelled clip on its own and average over the clips of a class.
PER_CLIP_SCHEMES: tuple[str, ...] = SCHEMES[1:]


def l2_normalize(x: torch.Tensor) -> torch.Tensor:
    return F.normalize(x, p=2.0, dim=-1, eps=1e-12)


def _class_sums(features: torch.Tensor, labels: torch.Tensor, n_classes: int) -> tuple[torch.Tensor, torch.Tensor]:
    one_hot = F.one_hot(labels, n_classes).to(features.dtype)  # (N, C)
    sums = torch.einsum("nc,nkd->ckd", one_hot, features)  # (C, K, D)
    return sums, one_hot.sum(0)  # (C,)


def class_prototypes(features: torch.Tensor, labels: torch.Tensor, n_classes: int) -> torch.Tensor:
    """Mean head vector per class, L2-normalised: (N, K, D) -> (C, K, D)."""
    sums, counts = _class_sums(features, labels, n_classes)
    if bool((counts == 0).any()):
        missing = (counts == 0).nonzero().flatten().tolist()
        raise ValueError(f"classes {missing} have no support clips; every class needs at least one")
    return l2_normalize(sums / counts[:, None, None])


def head_posteriors(queries: torch.Tensor, prototypes: torch.Tensor, tau: float) -> torch.Tensor:
    """P[n, k, c] = softmax_c(cos(q_nk, proto_ck) / tau): (N, K, D), (C, K, D) -> (N, K, C)."""
    cos = torch.einsum("nkd,ckd->nkc", l2_normalize(queries), prototypes)
    return torch.softmax(cos / tau, dim=-1)


def loo_posteriors(
    features: torch.Tensor, labels: torch.Tensor, n_classes: int, tau: float, groups: torch.Tensor | None = None
) -> torch.Tensor:
    """Leave-one-out head posteriors of the support clips themselves, (N, K, C).

    Each clip is scored against its own class prototype recomputed without it, so a
    head is never credited for recognising a clip that is part of its own prototype
    (with few shots that would make every head look perfect). With groups (N,), every clip
    of the scored clip's group is left out: augmented copies of one recording form a group,
    so a copy is never scored against a prototype holding its own source.
    """
    if groups is None:
        groups = torch.arange(features.shape[0])
    _, groups = torch.unique(groups, return_inverse=True)
    n_groups = int(groups.max()) + 1 if groups.numel() else 0
    sums, counts = _class_sums(features, labels, n_classes)
    group_sums, group_counts = _class_sums(features, groups, n_groups)  # (G, K, D), (G,)
    rest = counts[labels] - group_counts[groups]  # (N,) clips left in the own prototype
    if bool((rest < 1).any()):
        raise ValueError("leave-one-out reliability needs at least 2 support clips (groups) in every class")
    prototypes = l2_normalize(sums / counts[:, None, None])
    queries = l2_normalize(features)
    cos = torch.einsum("nkd,ckd->nkc", queries, prototypes)  # (N, K, C)
    own = l2_normalize((sums[labels] - group_sums[groups]) / rest[:, None, None])  # (N, K, D)
    own_cos = (queries * own).sum(-1)  # (N, K)
    cos = cos.scatter(2, labels[:, None, None].expand(-1, cos.shape[1], 1), own_cos[..., None])
    return torch.softmax(cos / tau, dim=-1)


def true_class_margin(posteriors: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """P[n, k, y_n] - max_{c != y_n} P[n, k, c]: (N, K, C) -> (N, K)."""
    idx = labels[:, None, None].expand(-1, posteriors.shape[1], 1)
    p_true = posteriors.gather(2, idx).squeeze(2)
    p_other = posteriors.scatter(2, idx, float("-inf")).amax(-1)
    return p_true - p_other


def reliability(
    posteriors: torch.Tensor,
    labels: torch.Tensor,
    n_classes: int,
    scheme: Scheme = "margin_clamped",
    alpha: float = 0.0,
) -> torch.Tensor:
    """Per-head, per-class reliability r[k, c] from labelled clips: (N, K, C) -> (K, C).

    With alpha > 0, each r[k, c] is shrunk towards the head's mean over classes,
    r * n_c / (n_c + alpha) + mean_c(r) * alpha / (n_c + alpha), so a class with few
    labelled clips borrows strength from how the head does on the other classes.
    """
    if scheme not in PER_CLIP_SCHEMES:
        raise ValueError(f"reliability scheme {scheme!r} is not per-clip; allowed: {', '.join(PER_CLIP_SCHEMES)}")
    if scheme in ("margin_clamped", "margin_softmax"):
        per_clip = true_class_margin(posteriors, labels)  # (N, K)
        if scheme == "margin_clamped":
            per_clip = per_clip.clamp(min=0.0)
    elif scheme == "prob_softmax":
        per_clip = posteriors.gather(2, labels[:, None, None].expand(-1, posteriors.shape[1], 1)).squeeze(2)
    else:  # brier_softmax: negative Brier score, higher is better
        target = F.one_hot(labels, n_classes).to(posteriors.dtype)[:, None, :]
        per_clip = -((posteriors - target) ** 2).sum(-1)
    one_hot = F.one_hot(labels, n_classes).to(posteriors.dtype)  # (N, C)
    counts = one_hot.sum(0)  # (C,)
    if bool((counts == 0).any()):
        missing = (counts == 0).nonzero().flatten().tolist()
        raise ValueError(f"classes {missing} have no labelled clips to estimate reliability from")
    r = (per_clip.T @ one_hot) / counts  # (K, C)
    if alpha > 0:
        keep = counts / (counts + alpha)
        r = r * keep + r.mean(dim=1, keepdim=True) * (1.0 - keep)
    return r


def hard_votes(posteriors: torch.Tensor, tie: float = 1e-6) -> torch.Tensor:
    """Each head's nearest-prototype vote, (N, K, C) -> (N, K); -1 where the best two classes tie.

    Some heads do not depend on the audio at all (in a decoder's first layer, the last prompt
    token sees only the prompt): all their cosines are equal, and argmax would make them vote
    for class 0 on every clip, which F1 would credit as recall for class 0.
    """
    if posteriors.shape[-1] < 2:
        return torch.zeros(posteriors.shape[:-1], dtype=torch.long)
    top = posteriors.topk(2, dim=-1)
    votes = top.indices[..., 0]
    return votes.masked_fill(top.values[..., 0] - top.values[..., 1] <= tie, -1)


def vote_f1(votes: torch.Tensor, labels: torch.Tensor, n_classes: int) -> torch.Tensor:
    """Per-head, per-class F1 of hard nearest-prototype votes: (N, K) class indices -> (K, C).

    A vote of -1 (a tie) is no vote: it misses the clip's class and claims no other.
    F1 checks both sides of a head's claim about class c: recall (it says c on c clips) and
    precision (it says c only on c clips). A head that answers c for everything has high recall
    for c but low precision, so it does not look reliable for c. 0 where the head never says c
    and no clip is c.
    """
    truth = F.one_hot(labels, n_classes).to(torch.float32)  # (N, C)
    said = F.one_hot(votes.clamp(min=0), n_classes).to(torch.float32) * (votes >= 0)[..., None]  # (N, K, C)
    tp = torch.einsum("nkc,nc->kc", said, truth)
    fp = said.sum(0) - tp
    fn = truth.sum(0)[None] - tp
    denom = 2 * tp + fp + fn
    return torch.where(denom > 0, 2 * tp / denom.clamp(min=1e-12), torch.zeros_like(tp))


def separation_f1_reliability(
    separation: torch.Tensor, f1: torch.Tensor, n_held_out: torch.Tensor, prior_strength: float
) -> torch.Tensor:
    """r[k, c] = lam_c * separation[k, c] + (1 - lam_c) * f1[k, c], lam_c = m / (m + n_c): (K, C) -> (K, C).

    separation is the paper's in-sample clamped margin: how far apart a head places its class
    prototypes, measurable from one clip per class. f1 is how well the head's votes hold up on
    clips, which needs held-out clips and is noisy when there are few: n_c counts the held-out
    clips of class c behind it, so 1-2 shots lean on separation and many shots on F1.
    """
    if prior_strength < 0:
        raise ValueError(f"prior_strength must be >= 0, got {prior_strength}")
    n = n_held_out.to(separation.dtype)[None]  # (1, C)
    if prior_strength == 0:
        lam = (n == 0).to(separation.dtype)
    else:
        lam = prior_strength / (prior_strength + n)
    return lam * separation + (1.0 - lam) * f1


def head_weights(
    r: torch.Tensor,
    scheme: Scheme = "margin_clamped",
    top_k: int | None = None,
    tau_w: float = 1.0,
    allowed: torch.Tensor | None = None,
) -> torch.Tensor:
    """Class-specific head weights w[k, c], summing to 1 over heads for each class: (K, C) -> (K, C).

    Only the top_k most reliable allowed heads of each class get weight. separation_f1 and
    margin_clamped sharpen with r ** (1 / tau_w); the *_softmax schemes use softmax(r / tau_w).
    A class whose selected heads all have zero reliability votes uniformly with them.
    """
    n_heads, n_classes = r.shape
    if tau_w <= 0:
        raise ValueError(f"tau_w must be > 0, got {tau_w}")
    allowed_kc = torch.ones_like(r, dtype=torch.bool) if allowed is None else allowed[:, None].expand_as(r)
    n_allowed = int(allowed_kc[:, 0].sum())
    if n_allowed == 0:
        raise ValueError("no heads are allowed: widen max_layer or check the head mask")
    k = n_allowed if top_k is None else min(top_k, n_allowed)
    # Stable sort keeps the shallowest head first among ties, which helps early exit.
    ranked = r.masked_fill(~allowed_kc, float("-inf"))
    order = torch.sort(ranked, dim=0, descending=True, stable=True).indices[:k]  # (k, C)
    selected = torch.zeros_like(allowed_kc).scatter(0, order, True)
    if scheme in ("separation_f1", "margin_clamped"):
        w = r.clamp(min=0.0).pow(1.0 / tau_w) * selected
        total = w.sum(0, keepdim=True)
        uniform = selected.to(r.dtype) / k
        return torch.where(total > 0, w / total.clamp(min=1e-30), uniform)
    if scheme not in SCHEMES:
        raise ValueError(f"unknown reliability scheme {scheme!r}; allowed: {', '.join(SCHEMES)}")
    logits = (r / tau_w).masked_fill(~selected, float("-inf"))
    return torch.softmax(logits, dim=0)


def shrink_to_uniform_vote(
    weights: torch.Tensor, vote_heads: torch.Tensor, n_per_class: torch.Tensor, strength: float
) -> torch.Tensor:
    """w'[:, c] = lam_c * u + (1 - lam_c) * w[:, c], u uniform over vote_heads, lam_c = s / (s + n_c).

    With one clip per class half the say goes to a plain uniform vote (SAV's), whose heads were
    not picked per class and so cannot have been fitted to noise; as clips accumulate, each
    class's own weights take over. (K, C) -> (K, C), still summing to 1 over heads.
    """
    if strength < 0:
        raise ValueError(f"shrinkage strength must be >= 0, got {strength}")
    if strength == 0:
        return weights
    uniform = torch.zeros(weights.shape[0], dtype=weights.dtype)
    uniform[vote_heads] = 1.0 / vote_heads.numel()
    lam = strength / (strength + n_per_class.to(weights.dtype))  # (C,)
    return lam[None] * uniform[:, None] + (1.0 - lam[None]) * weights


def calm_scores(posteriors: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """score[n, c] = sum_k w[k, c] * P[n, k, c]: (N, K, C), (K, C) -> (N, C)."""
    return torch.einsum("nkc,kc->nc", posteriors, weights)


def top_two_margin(scores: torch.Tensor) -> torch.Tensor:
    """Gap between the best and second-best class score, (N, C) -> (N,)."""
    if scores.shape[-1] < 2:
        return scores[..., 0]
    top = scores.topk(2, dim=-1).values
    return top[..., 0] - top[..., 1]


def head_accuracy(posteriors: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Nearest-prototype accuracy of each head: (N, K, C) -> (K,)."""
    return (hard_votes(posteriors) == labels[:, None]).to(posteriors.dtype).mean(0)


def sav_select(
    posteriors: torch.Tensor, labels: torch.Tensor, n_heads: int = 20, allowed: torch.Tensor | None = None
) -> torch.Tensor:
    """SAV baseline: indices of the n_heads allowed heads with the best nearest-prototype accuracy."""
    acc = head_accuracy(posteriors, labels)
    if allowed is not None:
        acc = acc.masked_fill(~allowed, -1.0)
    order = torch.sort(acc, descending=True, stable=True).indices
    return order[: min(n_heads, acc.numel() if allowed is None else int(allowed.sum()))]


def sav_scores(posteriors: torch.Tensor) -> torch.Tensor:
    """SAV uniform voting: share of the heads that vote for each class, (N, K, C) -> (N, C).

    Ties between vote counts are broken by the mean posterior, scaled small enough
    never to change a strict vote order.
    """
    n_classes = posteriors.shape[-1]
    votes = F.one_hot(posteriors.argmax(-1), n_classes).to(posteriors.dtype).mean(1)
    tie_break = posteriors.mean(1) / (posteriors.shape[1] * 4.0)
    return votes + tie_break


def abstain_threshold(values: torch.Tensor, correct: torch.Tensor, keep: float = 0.95) -> float:
    """Threshold below which to answer `unknown`, keeping `keep` of the correct answers.

    values: the score or margin of each validation clip, correct: whether its label was right.
    """
    if not 0.0 < keep <= 1.0:
        raise ValueError(f"abstain keep fraction must be in (0, 1], got {keep}")
    kept = values[correct]
    if kept.numel() == 0:
        return 0.0
    return float(torch.quantile(kept.to(torch.float64), 1.0 - keep))
