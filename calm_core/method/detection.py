"""Detection metrics for a two-way decision (is this clip the positive class, e.g. spoof?): pure functions.

Convention: a higher score means "more positive"; a clip is flagged positive when score >= threshold.
  miss(t)        = share of positive clips with score < t
  false alarm(t) = share of negative clips with score >= t
minDCF uses ASVspoof 5's costs (evaluation plan, countermeasure track): C_miss = 1 for rejecting bona fide
speech, C_fa = 10 for accepting a spoof, prior of a spoof pi_spoof = 0.05. With spoof as the positive class,
rejecting bona fide is our false alarm and accepting a spoof is our miss, so
  DCF(t) = C_miss (1 - pi) P_fa(t) + C_fa pi P_miss(t),  normalised by min(C_miss (1 - pi), C_fa pi),
i.e. DCF_norm(t) = 1.9 P_fa(t) + P_miss(t); minDCF is its minimum over thresholds (1.0 = the better of
"flag everything" and "flag nothing").
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from numpy.typing import ArrayLike

EPS = 1e-6


@dataclass(frozen=True)
class DcfCosts:
    c_miss: float = 1.0  # cost of rejecting bona fide (our false alarm)
    c_fa: float = 10.0  # cost of accepting a spoof (our miss)
    p_spoof: float = 0.05


ASVSPOOF5 = DcfCosts()


def log_odds_ratio(s_pos: ArrayLike, s_other: ArrayLike) -> np.ndarray:
    """ln((s_pos + EPS) / (s_other + EPS)), scores clipped at 0: the detection score of one clip or segment.
    The one definition: `calm fit --positive` thresholds it, `calm eval` and calmd's per-call verdicts
    average it. EPS keeps a class scored 0 finite (about -14 or +14)."""
    pos = np.clip(np.asarray(s_pos, dtype=np.float64), 0.0, None)
    other = np.clip(np.asarray(s_other, dtype=np.float64), 0.0, None)
    return np.log((pos + EPS) / (other + EPS))


def log_odds(scores: np.ndarray, positive: int | Sequence[int]) -> np.ndarray:
    """Per-clip log_odds_ratio of the positive group (one class index or several: a new kind of attack taught as
    a class of its own beside `spoof`) over the best class outside it: (N, C) -> (N,). The group scores as its
    best member, so a clip near any one attack's prototypes is flagged, however many other attacks there are."""
    scores = np.asarray(scores, dtype=np.float64)
    members = [positive] if isinstance(positive, (int, np.integer)) else list(positive)
    if not members or len(set(members)) >= scores.shape[1]:
        raise ValueError(f"the positive group {members} must hold at least one class and leave one out")
    pos = scores[:, members].max(axis=1)
    others = np.delete(scores, members, axis=1).max(axis=1)
    return log_odds_ratio(pos, others)


def _split(scores: np.ndarray, is_positive: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    scores = np.asarray(scores, dtype=np.float64)
    is_positive = np.asarray(is_positive, dtype=bool)
    pos, neg = scores[is_positive], scores[~is_positive]
    if pos.size == 0 or neg.size == 0:
        raise ValueError(f"need both positive and negative clips (got {pos.size} positive, {neg.size} negative)")
    return pos, neg


def operating_points(scores: np.ndarray, is_positive: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(thresholds, miss, false_alarm) at every distinct score and +inf (flag nothing)."""
    pos, neg = _split(scores, is_positive)
    thresholds = np.append(np.unique(np.concatenate([pos, neg])), np.inf)
    pos_sorted, neg_sorted = np.sort(pos), np.sort(neg)
    miss = np.searchsorted(pos_sorted, thresholds, side="left") / pos.size  # pos < t
    false_alarm = 1.0 - np.searchsorted(neg_sorted, thresholds, side="left") / neg.size  # neg >= t
    return thresholds, miss, false_alarm


def roc_auc(scores: np.ndarray, is_positive: np.ndarray) -> float:
    """P(a positive clip scores above a negative one), ties counting one half (Mann-Whitney U / n_pos n_neg)."""
    pos, neg = _split(scores, is_positive)
    greater = (pos[:, None] > neg[None, :]).sum()
    ties = (pos[:, None] == neg[None, :]).sum()
    return float((greater + 0.5 * ties) / (pos.size * neg.size))


def eer(scores: np.ndarray, is_positive: np.ndarray) -> tuple[float, float]:
    """Equal error rate and its threshold: the operating point where miss and false alarm are closest,
    their mean (as ASVspoof's reference code computes it)."""
    thresholds, miss, fa = operating_points(scores, is_positive)
    i = int(np.argmin(np.abs(miss - fa)))
    return float((miss[i] + fa[i]) / 2), float(thresholds[i])


def min_dcf(scores: np.ndarray, is_positive: np.ndarray, costs: DcfCosts = ASVSPOOF5) -> tuple[float, float]:
    """Normalised minimum detection cost and its threshold (costs: ASVspoof 5's by default)."""
    thresholds, miss, fa = operating_points(scores, is_positive)
    dcf = costs.c_miss * (1 - costs.p_spoof) * fa + costs.c_fa * costs.p_spoof * miss
    dcf /= min(costs.c_miss * (1 - costs.p_spoof), costs.c_fa * costs.p_spoof)
    i = int(np.argmin(dcf))
    return float(dcf[i]), float(thresholds[i])


def detection_report(scores: np.ndarray, is_positive: np.ndarray, costs: DcfCosts = ASVSPOOF5) -> dict[str, float]:
    e, e_t = eer(scores, is_positive)
    d, d_t = min_dcf(scores, is_positive, costs)
    return {"auc": roc_auc(scores, is_positive), "eer": e, "eer_threshold": e_t, "min_dcf": d, "min_dcf_threshold": d_t}


def per_call(scores: np.ndarray, is_positive: np.ndarray, calls: list[str]) -> tuple[list[str], np.ndarray, np.ndarray]:
    """(call ids in first-seen order, mean clip score per call, whether each call is positive): a call scored
    as calmd scores one, by the mean of its clips' (segments') scores. ValueError for a call that mixes
    positive and negative clips."""
    scores = np.asarray(scores, dtype=np.float64)
    is_positive = np.asarray(is_positive, dtype=bool)
    if not len(calls) == scores.size == is_positive.size:
        raise ValueError(f"{len(calls)} call ids for {scores.size} scores and {is_positive.size} labels")
    ids = list(dict.fromkeys(calls))
    index = {c: i for i, c in enumerate(ids)}
    member = np.array([index[c] for c in calls])
    n = np.bincount(member, minlength=len(ids))
    mean = np.bincount(member, weights=scores, minlength=len(ids)) / n
    positives = np.bincount(member, weights=is_positive.astype(np.float64), minlength=len(ids))
    mixed = [c for c, p, k in zip(ids, positives, n) if 0 < p < k]
    if mixed:
        raise ValueError(f"calls {mixed[:5]} mix positive and negative clips; a call is one or the other")
    return ids, mean, positives > 0


def det_curve(scores: np.ndarray, is_positive: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(false alarm, miss) rates at every threshold, false alarms falling: the points of a DET curve."""
    _, miss, false_alarm = operating_points(scores, is_positive)
    return false_alarm, miss
