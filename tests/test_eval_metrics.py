"""Every evaluation metric against values worked out by hand on small arrays."""

from __future__ import annotations

import math

import numpy as np
import pytest

from pipeline.eval import metrics


def test_abs_rel_by_hand_skips_missing_depth():
    pred = np.array([[1.0, 3.0], [2.0, 9.0]])
    target = np.array([[2.0, 3.0], [4.0, 0.0]])  # 0 = no measurement: left out
    # |1-2|/2 = 0.5, 0, |2-4|/4 = 0.5 -> mean 1/3
    assert metrics.abs_rel(pred, target) == pytest.approx(1 / 3)


def test_delta_accuracy_by_hand():
    pred = np.array([1.0, 1.2, 2.0, 0.0, 5.0])
    target = np.array([1.0, 1.0, 1.0, 1.0, 4.5])
    # ratios 1, 1.2, 2, (pred 0: miss), 1.111 -> 3 of 5 below 1.25
    assert metrics.delta_accuracy(pred, target) == pytest.approx(3 / 5)
    assert metrics.delta_accuracy(pred, target, threshold=2.5) == pytest.approx(4 / 5)  # ratio 2 now counts


def test_depth_metrics_refuse_empty_or_mismatched_input():
    with pytest.raises(ValueError):
        metrics.abs_rel(np.ones(3), np.zeros(3))
    with pytest.raises(ValueError):
        metrics.abs_rel(np.ones(3), np.ones(4))


def test_mean_iou_by_hand_with_ignore_index():
    target = np.array([0, 0, 1, 1, 2, 255])
    pred = np.array([0, 1, 1, 1, 0, 2])
    # class 0: inter 1, union |{0,1,4}| = 3 -> 1/3; class 1: inter 2, union 3 -> 2/3; class 2: inter 0, union 1 -> 0
    # class 3 absent from both: not averaged. The ignored pixel (pred 2) counts nowhere.
    assert metrics.mean_iou(pred, target, num_classes=4) == pytest.approx((1 / 3 + 2 / 3 + 0) / 3)
    assert metrics.mean_iou(target[:5], target[:5], num_classes=4) == pytest.approx(1.0)


def test_token_accuracy_with_mask():
    pred = np.array([[1, 2, 3], [4, 5, 6]])
    target = np.array([[1, 0, 3], [4, 5, 0]])
    assert metrics.token_accuracy(pred, target) == pytest.approx(4 / 6)
    mask = np.array([[True, True, False], [False, False, True]])
    assert metrics.token_accuracy(pred, target, mask) == pytest.approx(1 / 3)


def test_perplexity_by_hand():
    # Uniform over 4 ids: perplexity 4 whatever the target.
    assert metrics.perplexity(np.zeros((3, 4)), np.array([0, 1, 3])) == pytest.approx(4.0)
    # log-probs log(0.5) and log(0.25) -> exp(-(ln .5 + ln .25) / 2) = sqrt(8)
    logits = np.log(np.array([[0.5, 0.25, 0.25], [0.5, 0.25, 0.25]]))
    assert metrics.perplexity(logits, np.array([0, 1])) == pytest.approx(math.sqrt(8))
    assert metrics.perplexity(logits, np.array([0, 1]), mask=np.array([True, False])) == pytest.approx(2.0)
    # Per position (what decoder tasks accumulate batch by batch): -ln .5, -ln .25
    np.testing.assert_allclose(metrics.token_nll(logits, np.array([0, 1])), [math.log(2), math.log(4)])


def test_recall_at_k_by_hand():
    queries = np.array([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    gallery = np.array([[1.0, 0.1], [1.0, 0.0], [0.0, 1.0]])
    # query 0 -> true row 0 (cos .995) but row 1 scores 1.0: rank 2; query 1 -> true row 1 (cos 0): rank 3;
    # query 2 -> true row 2 (cos .707) ties row 1 (.707), below row 0 (.77): rank 3 (ties go against it)
    assert metrics.recall_at_k(queries, gallery, 1) == pytest.approx(0.0)
    assert metrics.recall_at_k(queries, gallery, 2) == pytest.approx(1 / 3)
    assert metrics.recall_at_k(queries, gallery, 3) == pytest.approx(1.0)
    assert metrics.recall_at_k(np.eye(3), np.eye(3), 1) == pytest.approx(1.0)
    # A constant embedding ties everything: no better than last place.
    assert metrics.recall_at_k(np.ones((4, 2)), np.ones((4, 2)), 3) == pytest.approx(0.0)
    assert metrics.chance_recall_at_k(10, 5) == pytest.approx(0.5)


def test_recall_at_k_with_labels_by_hand():
    """Rows 0 and 1 share a label (two clips of one spoken word): either one is a hit for either query."""
    queries = np.array([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0], [1.0, 0.0]])
    gallery = np.array([[0.0, 1.0], [1.0, 0.0], [1.0, 0.2], [1.0, 0.5]])
    labels = np.array([7, 7, 8, 9])
    # q0: best hit row 1 (cos 1) -> rank 1; q1: best hit row 0 (cos 1) -> rank 1; q2: own row 2 (.83) is behind
    # row 3 (.95) -> rank 2; q3: own row 3 (.89) is behind rows 1 (1.0) and 2 (.98), row 1 not its hit -> rank 3.
    assert metrics.recall_at_k(queries, gallery, 1, labels) == pytest.approx(2 / 4)
    assert metrics.recall_at_k(queries, gallery, 2, labels) == pytest.approx(3 / 4)
    assert metrics.recall_at_k(queries, gallery, 3, labels) == pytest.approx(1.0)
    assert metrics.recall_at_k(queries, gallery, 1, np.arange(4)) == metrics.recall_at_k(queries, gallery, 1)
    # Chance with 2, 2, 1, 1 hits among 4 at k=1: (1/2 + 1/2 + 1/4 + 1/4) / 4; with one hit each, k / n.
    assert metrics.chance_recall_at_k(4, 1, np.array([2, 2, 1, 1])) == pytest.approx(0.375)
    assert metrics.chance_recall_at_k(10, 5, np.ones(10)) == pytest.approx(0.5)
    assert metrics.chance_recall_at_k(4, 5, np.array([1, 1, 1, 1])) == pytest.approx(1.0)


def test_classification_accuracy_and_majority():
    assert metrics.classification_accuracy(np.array([0, 1, 2, 2]), np.array([0, 2, 2, 2])) == pytest.approx(0.75)
    assert metrics.majority_class(np.array([3, 1, 1, 3, 2])) == 1  # tie 1 vs 3: the smaller


def test_baselines_by_hand():
    from pipeline.eval import baselines

    assert baselines.mean_value([np.array([1.0, 3.0]), np.array([0.0, 5.0])]) == pytest.approx(3.0)  # 0 = missing
    assert baselines.majority_value([np.array([[2, 2], [1, 255]]), np.array([1, 1])], ignore_index=255) == 1
    maps = baselines.constant_maps(2.5, [np.zeros((2, 3))])
    assert maps[0].shape == (2, 3) and (maps[0] == 2.5).all()
    # Fit tokens: 0 x3, 1 x1 over V = 3: N = 4 tokens of T = 2 ids -> Witten-Bell 3/6, 1/6 and the unseen 2 gets
    # T / (N + T) = 2/6. Score tokens [0, 2]: accuracy 1/2 (always 0); perplexity exp(-(ln 1/2 + ln 1/3) / 2) = sqrt 6
    accuracy, ppl = baselines.unigram_scores([np.array([0, 0, 1]), np.array([0])], [np.array([0, 2])], 3)
    assert accuracy == pytest.approx(0.5) and ppl == pytest.approx(6 ** 0.5)
    assert np.exp(baselines.unigram_log_probs([np.array([0, 1, 1])], 2)) == pytest.approx([1 / 3, 2 / 3])  # all seen


def test_edge_f1_by_hand():
    target = np.array([[0, 1, 1], [0, 0, 1]], bool)
    pred = np.array([[1, 1, 0], [0, 0, 1]], bool)
    # TP 2, predicted 3, true 3 -> precision 2/3, recall 2/3 -> F1 = 2 * 2 / (3 + 3)
    assert metrics.edge_f1(pred, target) == pytest.approx(2 / 3)
    # All-edge: precision 3/6, recall 1 -> 2 * 3 / (6 + 3); no-edge finds nothing: 0
    assert metrics.edge_f1(np.ones_like(target), target) == pytest.approx(2 / 3)
    assert metrics.edge_f1(np.zeros_like(target), target) == 0.0
    assert metrics.edge_f1(np.zeros(4, bool), np.zeros(4, bool)) == 1.0  # nothing to find, nothing found
    with pytest.raises(ValueError):
        metrics.edge_f1(np.ones(3), np.ones(4))


def test_mean_angle_error_by_hand():
    target = np.array([[0.0, 0.0, 1.0], [0.0, 0.0, 1.0], [1.0, 0.0, 0.0], [0.0, 1.0, 0.0]])
    # 0 degrees (length ignored), 90 (orthogonal), 180 (opposite), 45 (between y and z)
    pred = np.array([[0.0, 0.0, 5.0], [0.0, 1.0, 0.0], [-2.0, 0.0, 0.0], [0.0, 1.0, 1.0]])
    assert metrics.mean_angle_error(pred, target) == pytest.approx((0 + 90 + 180 + 45) / 4)
    # Maps (H, W, 3) are scored per pixel; a zero vector has no direction: 90 degrees from anything.
    assert metrics.mean_angle_error(np.zeros((2, 2, 3)), np.ones((2, 2, 3))) == pytest.approx(90.0)


def test_mean_cosine_by_hand():
    pred = np.array([[1.0, 0.0], [1.0, 1.0], [3.0, 4.0]])
    target = np.array([[2.0, 0.0], [1.0, 0.0], [-3.0, -4.0]])
    assert metrics.mean_cosine(pred, target) == pytest.approx((1 + math.sqrt(0.5) - 1) / 3)
    # A feature map (h, w, C) is one vector per patch: the same rows as a (4, C) table.
    features = np.arange(24, dtype=float).reshape(2, 2, 6)
    assert metrics.mean_cosine(features, features) == pytest.approx(1.0)
    assert metrics.mean_cosine(features, -features) == pytest.approx(-1.0)
    with pytest.raises(ValueError):
        metrics.mean_cosine(np.ones((2, 3)), np.ones((3, 3)))


def test_psnr_by_hand():
    target = np.array([[0.0, 10.0], [20.0, 30.0]])
    # MSE (5^2 * 4) / 4 = 25 -> 10 log10(255^2 / 25)
    assert metrics.psnr(target + 5, target) == pytest.approx(10 * math.log10(255**2 / 25))
    assert metrics.psnr(target, target) == math.inf


def test_vector_and_mask_baselines_by_hand():
    from pipeline.eval import baselines

    np.testing.assert_allclose(baselines.mean_vector([np.array([[1.0, 2.0], [3.0, 4.0]]), np.array([5.0, 6.0])]),
                               [3.0, 4.0])
    # Directions, not lengths: (10, 0) and (0, 1) average to the diagonal; the zero vector counts for nothing.
    np.testing.assert_allclose(baselines.mean_direction([np.array([[10.0, 0.0], [0.0, 1.0], [0.0, 0.0]])]),
                               [math.sqrt(0.5), math.sqrt(0.5)])
    with pytest.raises(ValueError):
        baselines.mean_direction([np.array([[1.0, 0.0], [-1.0, 0.0]])])
    sparse = [np.array([0, 0, 0, 1], bool)]
    assert baselines.best_constant_mask(sparse, metrics.edge_f1) is True  # all-edge 2/5 beats no-edge 0
    assert baselines.best_constant_mask([np.zeros(4, bool)], metrics.edge_f1) is False  # no-edge is perfect
