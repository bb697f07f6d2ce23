"""Detection metrics against examples worked out by hand."""

import math

import numpy as np
import pytest

from calm_core.method.detection import (
    DcfCosts,
    det_curve,
    detection_report,
    eer,
    log_odds,
    log_odds_ratio,
    min_dcf,
    operating_points,
    per_call,
    roc_auc,
)

# positives (e.g. spoof) 0.9 0.8 0.4; negatives 0.7 0.3 0.2 0.1
SCORES = np.array([0.9, 0.8, 0.4, 0.7, 0.3, 0.2, 0.1])
POSITIVE = np.array([1, 1, 1, 0, 0, 0, 0], dtype=bool)


def test_operating_points_count_misses_below_and_false_alarms_at_or_above() -> None:
    t, miss, fa = operating_points(SCORES, POSITIVE)
    assert t.tolist() == [0.1, 0.2, 0.3, 0.4, 0.7, 0.8, 0.9, math.inf]
    assert miss.tolist() == pytest.approx([0, 0, 0, 0, 1 / 3, 1 / 3, 2 / 3, 1])
    assert fa.tolist() == pytest.approx([1, 0.75, 0.5, 0.25, 0.25, 0, 0, 0])


def test_auc_is_the_share_of_positive_negative_pairs_in_order() -> None:
    # 12 pairs; only (0.4, 0.7) is out of order
    assert roc_auc(SCORES, POSITIVE) == pytest.approx(11 / 12)
    assert roc_auc(np.array([1.0, 1.0]), np.array([True, False])) == 0.5  # a tie counts one half


def test_eer_where_miss_and_false_alarm_meet() -> None:
    # closest at t = 0.7: miss 1/3, false alarm 1/4 -> (1/3 + 1/4) / 2
    value, threshold = eer(SCORES, POSITIVE)
    assert value == pytest.approx(7 / 24) and threshold == 0.7
    assert eer(np.array([3.0, 4.0, 1.0, 2.0]), np.array([1, 1, 0, 0], dtype=bool)) == (0.0, 3.0)


def test_min_dcf_with_asvspoof5_costs() -> None:
    # DCF_norm = (1 * 0.95 * fa + 10 * 0.05 * miss) / 0.5 = 1.9 fa + miss; minimum at t = 0.8: 0 + 1/3
    value, threshold = min_dcf(SCORES, POSITIVE)
    assert value == pytest.approx(1 / 3) and threshold == 0.8
    # equal costs and prior: DCF_norm = fa + miss, minimum 1/4 at t = 0.4
    value, threshold = min_dcf(SCORES, POSITIVE, DcfCosts(c_miss=1, c_fa=1, p_spoof=0.5))
    assert value == pytest.approx(0.25) and threshold == 0.4


def test_min_dcf_of_a_useless_detector_is_one() -> None:
    scores = np.zeros(10)
    assert min_dcf(scores, np.arange(10) < 5)[0] == pytest.approx(1.0)


def test_log_odds_of_the_positive_class_over_the_best_other() -> None:
    scores = np.array([[0.6, 0.3, 0.1], [0.2, 0.2, 0.6]])
    assert log_odds(scores, 0) == pytest.approx([math.log(0.600001 / 0.300001), math.log(0.200001 / 0.600001)])


def test_one_sided_sets_are_refused() -> None:
    with pytest.raises(ValueError, match="both positive and negative"):
        detection_report(np.array([0.1, 0.2]), np.array([True, True]))


def test_per_call_score_is_the_mean_of_its_clips() -> None:
    # calls a (0.9, 0.5) and b (0.2) positive; c (0.4, 0.1) and d (0.3) negative
    scores = np.array([0.9, 0.5, 0.2, 0.4, 0.1, 0.3])
    positive = np.array([1, 1, 1, 0, 0, 0], dtype=bool)
    ids, means, call_positive = per_call(scores, positive, ["a", "a", "b", "c", "c", "d"])
    assert ids == ["a", "b", "c", "d"] and means == pytest.approx([0.7, 0.2, 0.25, 0.3])
    assert call_positive.tolist() == [True, True, False, False]
    # pairs in order: (0.7, 0.25), (0.7, 0.3) of 4 -> AUC 1/2; at t = 0.3 miss 1/2 (0.2), false alarm 1/2 (0.3)
    assert roc_auc(means, call_positive) == 0.5
    assert eer(means, call_positive) == (0.5, pytest.approx(0.3))


def test_a_call_of_both_classes_is_refused() -> None:
    with pytest.raises(ValueError, match=r"calls \['x'\] mix positive and negative"):
        per_call(np.array([0.1, 0.2]), np.array([True, False]), ["x", "x"])


def test_det_curve_runs_from_flag_everything_to_flag_nothing() -> None:
    fa, miss = det_curve(SCORES, POSITIVE)
    assert fa.tolist() == pytest.approx([1, 0.75, 0.5, 0.25, 0.25, 0, 0, 0])
    assert miss.tolist() == pytest.approx([0, 0, 0, 0, 1 / 3, 1 / 3, 2 / 3, 1])


def test_log_odds_ratio_clips_negative_scores_and_keeps_a_zero_score_finite() -> None:
    assert float(log_odds_ratio(0.5, 0.5)) == 0.0
    assert float(log_odds_ratio(-0.2, 0.5)) == pytest.approx(math.log(1e-6 / 0.500001))  # about -13.1
    assert log_odds_ratio(np.array([0.9, 0.0]), np.array([0.1, 0.0])) == pytest.approx(
        [math.log(0.900001 / 0.100001), 0]
    )
