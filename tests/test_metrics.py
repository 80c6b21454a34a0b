"""AUC against a brute-force pair count; logloss against its formula."""
import doctest
import math

import numpy as np
import pytest

import sparse_train.metrics as metrics_module
from sparse_train.metrics import AUC, LOGLOSS_EPSILON, LogLoss, auc, logloss


def brute_force_auc(labels, scores):
    """Every (positive, negative) pair: a win counts 1, a tie 1/2."""
    labels = np.asarray(labels, bool)
    scores = np.asarray(scores, np.float64)
    pos, neg = scores[labels], scores[~labels]
    twice_wins = 2 * int(np.sum(pos[:, None] > neg[None, :])) + int(np.sum(pos[:, None] == neg[None, :]))
    return twice_wins / (2 * len(pos) * len(neg))


def test_auc_equals_pair_count_with_ties_accumulated_over_batches():
    rng = np.random.default_rng(0)
    labels = rng.random(1500) < 0.3
    scores = np.round(rng.random(1500) + 0.4 * labels, 2).astype(np.float32)  # many ties
    expected = brute_force_auc(labels, scores)
    metric = AUC()
    for start in range(0, 1500, 128):  # uneven last batch
        metric.update(labels[start:start + 128].astype(np.int64), scores[start:start + 128])
    assert metric.num_examples == 1500
    assert metric.result() == expected
    assert auc(labels, scores) == expected
    # Not the mean of per-batch AUCs.
    per_batch = [brute_force_auc(labels[s:s + 128], scores[s:s + 128]) for s in range(0, 1500, 128)]
    assert not math.isclose(np.mean(per_batch), expected, rel_tol=1e-9)


def test_auc_ties_count_half():
    assert auc([0, 1, 0, 1], [0.5, 0.5, 0.5, 0.5]) == 0.5
    assert auc([0, 1, 1], [0.2, 0.2, 0.9]) == 0.75
    assert auc([1, 0], [1.0, 0.0]) == 1.0 and auc([1, 0], [0.0, 1.0]) == 0.0


def test_auc_matches_rank_formula_on_logits():
    rng = np.random.default_rng(1)
    labels = rng.integers(0, 2, 400)
    scores = np.round(rng.standard_normal(400), 1)
    ranks = np.empty(400)
    order = np.argsort(scores, kind="stable")
    ranks[order] = np.arange(1, 401)
    for value in np.unique(scores):  # average ranks over ties
        ranks[scores == value] = ranks[scores == value].mean()
    num_pos = labels.sum()
    rank_auc = (ranks[labels == 1].sum() - num_pos * (num_pos + 1) / 2) / (num_pos * (400 - num_pos))
    np.testing.assert_allclose(auc(labels, scores), rank_auc, rtol=1e-12)
    assert auc(labels, scores) == brute_force_auc(labels, scores)


def test_auc_with_one_class_or_nothing_is_nan():
    assert math.isnan(auc([1, 1, 1], [0.1, 0.2, 0.3]))
    assert math.isnan(auc([], []))
    metric = AUC()
    assert math.isnan(metric.result())
    metric.update([0, 0], [0.1, 0.9])
    assert math.isnan(metric.result())
    metric.update([1], [0.5])
    assert metric.result() == 0.5
    metric.reset()
    assert metric.num_examples == 0 and math.isnan(metric.result())


def test_auc_copies_the_batch():
    metric, scores = AUC(), np.array([0.1, 0.9])
    metric.update([0, 1], scores)
    scores[:] = [0.9, 0.1]  # a reused buffer must not change what was seen
    assert metric.result() == 1.0


@pytest.mark.parametrize("labels, scores, match", [
    ([0, 2], [0.1, 0.2], "labels must be 0 or 1"),
    ([0, 1], [0.1, np.nan], "scores hold NaN at position 1"),
    ([0, 1], [0.1], "equal length"),
])
def test_auc_bad_input(labels, scores, match):
    with pytest.raises(ValueError, match=match):
        AUC().update(labels, scores)


def test_logloss_equals_formula_accumulated_over_batches():
    rng = np.random.default_rng(2)
    labels = (rng.random(1000) < 0.25).astype(np.float32)
    probs = rng.random(1000).astype(np.float32)
    probs[:3] = [0.0, 1.0, 1e-12]  # clipped to [eps, 1 - eps]
    p = np.clip(probs.astype(np.float64), LOGLOSS_EPSILON, 1 - LOGLOSS_EPSILON)
    y = labels.astype(np.float64)
    expected = -np.mean(y * np.log(p) + (1 - y) * np.log(1 - p))
    metric = LogLoss()
    for start in range(0, 1000, 300):
        metric.update(labels[start:start + 300], probs[start:start + 300])
    np.testing.assert_allclose(metric.result(), expected, rtol=1e-12)
    np.testing.assert_allclose(logloss(labels, probs), expected, rtol=1e-12)
    assert metric.num_examples == 1000


def test_logloss_clipping_and_edges():
    # A confident wrong prediction costs -log(eps), not infinity.
    np.testing.assert_allclose(logloss([1], [0.0]), -math.log(LOGLOSS_EPSILON), rtol=1e-12)
    np.testing.assert_allclose(logloss([0], [1.0], eps=1e-3), -math.log(1e-3), rtol=1e-12)
    np.testing.assert_allclose(logloss([0.5], [0.5]), math.log(2), rtol=1e-15)  # soft label
    assert math.isnan(LogLoss().result())
    with pytest.raises(ValueError, match=r"probs must be probabilities in \[0, 1\]"):
        logloss([1, 0], [2.3, -1.0])
    with pytest.raises(ValueError, match="eps"):
        LogLoss(eps=0.5)


def test_docstring_examples():
    assert doctest.testmod(metrics_module).failed == 0
