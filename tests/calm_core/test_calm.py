"""The CALM equations against examples worked by hand."""

import math

import pytest
import torch

from calm_core.method import calm


def test_prototypes_are_normalised_class_means() -> None:
    feats = torch.tensor([[[1.0, 0.0]], [[0.0, 1.0]], [[0.0, -3.0]]])  # (N=3, K=1, D=2)
    protos = calm.class_prototypes(feats, torch.tensor([0, 0, 1]), 2)
    s = 1 / math.sqrt(2)
    assert torch.allclose(protos, torch.tensor([[[s, s]], [[0.0, -1.0]]]))


def test_prototypes_refuse_a_class_without_clips() -> None:
    with pytest.raises(ValueError, match=r"classes \[1\]"):
        calm.class_prototypes(torch.ones(2, 1, 2), torch.tensor([0, 0]), 2)


def test_head_posterior_is_softmax_of_cosine_over_tau() -> None:
    protos = torch.tensor([[[1.0, 0.0]], [[0.0, 1.0]]])  # (C=2, K=1, D=2)
    query = torch.tensor([[[3.0, 4.0]]])  # cos 0.6 with class 0, 0.8 with class 1
    post = calm.head_posteriors(query, protos, tau=0.5)
    e0, e1 = math.exp(0.6 / 0.5), math.exp(0.8 / 0.5)
    assert torch.allclose(post, torch.tensor([[[e0 / (e0 + e1), e1 / (e0 + e1)]]]))


def test_leave_one_out_matches_explicit_recomputation() -> None:
    torch.manual_seed(0)
    feats, labels = torch.randn(7, 3, 5), torch.tensor([0, 0, 0, 1, 1, 2, 2])
    got = calm.loo_posteriors(feats, labels, 3, tau=0.1)
    for i in range(7):
        keep = torch.arange(7) != i
        protos = calm.class_prototypes(feats[keep], labels[keep], 3)
        want = calm.head_posteriors(feats[i : i + 1], protos, 0.1)
        assert torch.allclose(got[i], want[0], atol=1e-6)


def test_grouped_leave_one_out_leaves_every_copy_of_the_recording_out() -> None:
    torch.manual_seed(1)
    feats, labels = torch.randn(12, 3, 5), torch.tensor([0, 0, 0, 1, 1, 1] * 2)
    groups = torch.tensor([0, 1, 2, 3, 4, 5] * 2)  # clip i and its augmented copy i + 6
    got = calm.loo_posteriors(feats, labels, 2, tau=0.1, groups=groups)
    for i in range(12):
        keep = groups != groups[i]
        protos = calm.class_prototypes(feats[keep], labels[keep], 2)
        want = calm.head_posteriors(feats[i : i + 1], protos, 0.1)
        assert torch.allclose(got[i], want[0], atol=1e-6)
    # Singleton groups are plain leave-one-out.
    plain = calm.loo_posteriors(feats, labels, 2, tau=0.1)
    assert torch.allclose(calm.loo_posteriors(feats, labels, 2, 0.1, torch.arange(12)), plain, atol=1e-6)


def test_grouped_leave_one_out_needs_two_recordings_per_class() -> None:
    feats, labels = torch.randn(4, 1, 2), torch.tensor([0, 0, 1, 1])
    with pytest.raises(ValueError, match="at least 2"):  # class 1: two copies of one recording
        calm.loo_posteriors(feats, labels, 2, 0.1, groups=torch.tensor([0, 1, 2, 2]))


def test_leave_one_out_needs_two_clips_per_class() -> None:
    with pytest.raises(ValueError, match="at least 2"):
        calm.loo_posteriors(torch.randn(3, 1, 2), torch.tensor([0, 0, 1]), 2, 0.1)


# Two clips of class 0, one of class 1; two heads; three classes.
POST = torch.tensor(
    [
        [[0.6, 0.3, 0.1], [0.2, 0.5, 0.3]],  # clip 0, y=0: margins 0.3, -0.3
        [[0.5, 0.4, 0.1], [0.4, 0.1, 0.5]],  # clip 1, y=0: margins 0.1, -0.1
        [[0.1, 0.7, 0.2], [0.3, 0.3, 0.4]],  # clip 2, y=1: margins 0.5, -0.1
        [[0.2, 0.2, 0.6], [0.5, 0.3, 0.2]],  # clip 3, y=2: margins 0.4, -0.3
    ]
)
LABELS = torch.tensor([0, 0, 1, 2])
POST2, LABELS2 = POST[:3, :, :2], LABELS[:3]  # the first three clips, two classes


def test_margin_clamped_reliability_by_hand() -> None:
    r = calm.reliability(POST2, LABELS2, 2, "margin_clamped")
    # head 0 class 0: mean(max(0,.6-.3), max(0,.5-.4)) = 0.2; head 1 class 0: mean(0, 0.3) = 0.15
    # head 0 class 1: .7-.1 = 0.6; head 1 class 1: 0
    assert torch.allclose(r, torch.tensor([[0.2, 0.6], [0.15, 0.0]]))


def test_margin_uses_best_other_class() -> None:
    r = calm.reliability(POST, LABELS, 3, "margin_softmax")
    assert torch.allclose(r[:, 0], torch.tensor([0.2, -0.2]))
    assert torch.allclose(r[:, 1], torch.tensor([0.5, -0.1]))
    assert torch.allclose(r[:, 2], torch.tensor([0.4, -0.3]))


def test_prob_and_brier_reliability_by_hand() -> None:
    prob = calm.reliability(POST, LABELS, 3, "prob_softmax")
    assert torch.allclose(prob[:, 0], torch.tensor([0.55, 0.3]))
    brier = calm.reliability(POST, LABELS, 3, "brier_softmax")
    # clip 0 head 0: .4^2+.3^2+.1^2 = .26; clip 1 head 0: .5^2+.4^2+.1^2 = .42 -> -0.34
    assert math.isclose(float(brier[0, 0]), -0.34, abs_tol=1e-6)


def test_shrinkage_pulls_towards_head_mean_by_class_count() -> None:
    r = calm.reliability(POST2, LABELS2, 2, "margin_clamped")
    shrunk = calm.reliability(POST2, LABELS2, 2, "margin_clamped", alpha=1.0)
    # class 0 has n=2: r*2/3 + mean*1/3; class 1 has n=1: r/2 + mean/2
    mean = r.mean(1)
    assert torch.allclose(shrunk[:, 0], r[:, 0] * 2 / 3 + mean / 3)
    assert torch.allclose(shrunk[:, 1], r[:, 1] / 2 + mean / 2)


def test_reliability_rejects_unknown_scheme() -> None:
    with pytest.raises(ValueError, match="allowed: margin_clamped"):
        calm.reliability(POST, LABELS, 3, "accuracy")  # type: ignore[arg-type]


def test_weights_top_k_sharpen_and_normalise() -> None:
    r = torch.tensor([[0.4, 0.0], [0.2, 0.0], [0.1, 0.0]])
    w = calm.head_weights(r, "margin_clamped", top_k=2, tau_w=0.5)
    # class 0: top-2 heads 0 and 1, r^2 = .16, .04 -> .8, .2
    assert torch.allclose(w[:, 0], torch.tensor([0.8, 0.2, 0.0]))
    # class 1: all zero -> uniform over its 2 selected heads (ties keep the shallowest)
    assert torch.allclose(w[:, 1], torch.tensor([0.5, 0.5, 0.0]))


def test_softmax_weights_and_allowed_mask() -> None:
    r = torch.tensor([[1.0], [0.0], [5.0]])
    w = calm.head_weights(r, "prob_softmax", top_k=None, tau_w=1.0, allowed=torch.tensor([True, True, False]))
    e = math.exp(1.0)
    assert torch.allclose(w[:, 0], torch.tensor([e / (e + 1), 1 / (e + 1), 0.0]))


def test_scores_margin_and_prediction_by_hand() -> None:
    w = torch.tensor([[0.75, 0.0], [0.25, 1.0]])
    scores = calm.calm_scores(POST2[1:2], w)
    # class 0: .75*.5 + .25*.4 = 0.475; class 1: 1.0*.1 = 0.1
    assert torch.allclose(scores, torch.tensor([[0.475, 0.1]]))
    assert torch.allclose(calm.top_two_margin(torch.tensor([[0.2, 0.7, 0.1]])), torch.tensor([0.5]))


def test_sav_selects_most_accurate_heads_and_votes() -> None:
    # head 0 is right on all 4 clips, head 1 on none
    assert calm.sav_select(POST, LABELS, n_heads=1).tolist() == [0]
    assert calm.head_accuracy(POST, LABELS).tolist() == [1.0, 0.0]
    votes = calm.sav_scores(torch.tensor([[[0.9, 0.1], [0.8, 0.2], [0.3, 0.7]]]))
    assert votes.argmax().item() == 0
    assert 2 / 3 <= float(votes[0, 0]) < 2 / 3 + 1 / 3 / 2


def test_abstain_threshold_keeps_the_requested_share() -> None:
    values = torch.tensor([0.1, 0.2, 0.3, 0.4, 0.5, 0.05])
    correct = torch.tensor([True, True, True, True, True, False])
    t = calm.abstain_threshold(values, correct, keep=0.8)
    assert math.isclose(t, 0.18, abs_tol=1e-6)  # 20th percentile of .1..0.5
    assert int((values[correct] >= t).sum()) == 4


def test_vote_f1_by_hand() -> None:
    # One head; five clips of classes 0,0,1,1,2; it votes 0,1,1,1,1.
    votes = torch.tensor([[0], [1], [1], [1], [1]])
    labels = torch.tensor([0, 0, 1, 1, 2])
    f1 = calm.vote_f1(votes, labels, 3)
    # class 0: tp 1, fp 0, fn 1 -> 2/3; class 1: tp 2, fp 2, fn 0 -> 4/6; class 2: tp 0, fn 1 -> 0
    assert torch.allclose(f1, torch.tensor([[2 / 3, 4 / 6, 0.0]]))


def test_vote_f1_does_not_reward_a_head_that_always_says_one_class() -> None:
    labels = torch.tensor([0, 0, 1, 1, 2, 2])
    always_0 = torch.zeros(6, 1, dtype=torch.long)
    # Recall for class 0 is perfect, but precision is 1/3: F1 = 2 * 2 / (2 * 2 + 4 + 0) = 0.5.
    assert torch.allclose(calm.vote_f1(always_0, labels, 3), torch.tensor([[0.5, 0.0, 0.0]]))


def test_separation_f1_blend_by_hand() -> None:
    separation = torch.tensor([[0.8, 0.2]])
    f1 = torch.tensor([[0.4, 1.0]])
    n = torch.tensor([2, 6])
    r = calm.separation_f1_reliability(separation, f1, n, prior_strength=2.0)
    # lam = 2/4 = 0.5 and 2/8 = 0.25
    assert torch.allclose(r, torch.tensor([[0.5 * 0.8 + 0.5 * 0.4, 0.25 * 0.2 + 0.75 * 1.0]]))
    # Without held-out clips the separation is all there is.
    assert torch.equal(calm.separation_f1_reliability(separation, f1, torch.tensor([0, 0]), 0.0), separation)


def test_shrinking_to_the_uniform_vote_by_hand() -> None:
    w = torch.tensor([[1.0, 0.0], [0.0, 0.5], [0.0, 0.5]])  # (K=3, C=2)
    out = calm.shrink_to_uniform_vote(w, torch.tensor([0, 2]), torch.tensor([1, 3]), strength=1.0)
    # lam = 1/2 for class 0, 1/4 for class 1; u = [0.5, 0, 0.5]
    want = torch.tensor([[0.5 * 0.5 + 0.5 * 1.0, 0.25 * 0.5], [0.0, 0.75 * 0.5], [0.5 * 0.5, 0.25 * 0.5 + 0.75 * 0.5]])
    assert torch.allclose(out, want)
    assert torch.allclose(out.sum(0), torch.ones(2))
    assert torch.equal(calm.shrink_to_uniform_vote(w, torch.tensor([0]), torch.tensor([1, 3]), 0.0), w)


def test_a_head_that_ignores_the_audio_casts_no_vote() -> None:
    # Head 0 gives every clip the same posterior (a tie); head 1 votes 1, 0, 1.
    post = torch.tensor([[[0.5, 0.5], [0.2, 0.8]], [[0.5, 0.5], [0.9, 0.1]], [[0.5, 0.5], [0.3, 0.7]]])
    votes = calm.hard_votes(post)
    assert votes.tolist() == [[-1, 1], [-1, 0], [-1, 1]]
    f1 = calm.vote_f1(votes, torch.tensor([0, 0, 1]), 2)
    # head 0: no votes, F1 0 for both classes (not the recall a constant argmax would earn class 0)
    # head 1: class 0 tp 1, fp 0, fn 1 -> 2/3; class 1 tp 1, fp 1, fn 0 -> 2/3
    assert torch.allclose(f1, torch.tensor([[0.0, 0.0], [2 / 3, 2 / 3]]))
    assert calm.head_accuracy(post, torch.tensor([0, 0, 1])).tolist()[0] == 0.0
