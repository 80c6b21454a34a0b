"""Evaluation metrics accumulated over a whole evaluation set: exact AUC and logloss.

A metric object takes the set batch by batch (``update``) and computes the
metric over ALL examples seen (``result``), never an average of per-batch
values: the AUC of the union of two batches is not the mean of their AUCs.
The functions ``auc`` and ``logloss`` compute the same numbers in one call.

>>> metric = AUC()
>>> metric.update([1, 0], [0.9, 0.2])
>>> metric.update([0, 1], [0.8, 0.1])
>>> metric.result()  # pairs (pos, neg): (.9,.2) (.9,.8) win, (.1,.2) (.1,.8) lose
0.5
"""
import math

import numpy as np

__all__ = ["AUC", "LogLoss", "auc", "logloss", "LOGLOSS_EPSILON"]

#: Default clipping of probabilities in logloss: p -> clip(p, eps, 1 - eps)
#: (the Keras / ``tf.keras.losses.binary_crossentropy`` epsilon).
LOGLOSS_EPSILON = 1e-7


def auc(labels, scores):
    """Exact area under the ROC curve, rank-based (Mann-Whitney U), ties half.

    ::

        AUC = ( #{(p, n): s_p > s_n} + 0.5 * #{(p, n): s_p == s_n} ) / (P * N)

    over every pair of a positive p and a negative n. Computed in O(n log n)
    with one sort and integer pair counts, so it is exact up to the final
    division (the rank formula ``(R_pos - P(P+1)/2) / (P N)`` with average
    ranks for ties gives the same number).

    Args:
        labels: [n] 0/1 (bool, int or float).
        scores: [n] real scores (probabilities or logits; only their order
            matters), no NaN.

    Returns:
        float; NaN when the labels hold a single class (or nothing), where the
        AUC is undefined (scikit-learn raises instead; NaN lets an evaluation
        loop over small shards go on and shows plainly in a log).

    >>> auc([0, 0, 1, 1], [0.1, 0.4, 0.35, 0.8])
    0.75
    >>> auc([0, 1], [0.5, 0.5])
    0.5
    """
    labels, scores = _check_binary(labels, scores, "auc", "scores")
    return _auc(labels, scores)


def logloss(labels, probs, eps=LOGLOSS_EPSILON):
    """Mean binary cross-entropy (logloss) of predicted probabilities::

        p' = clip(p, eps, 1 - eps)
        logloss = -mean( y * log(p') + (1 - y) * log(1 - p') )

    in float64. The clip keeps a confident wrong prediction finite
    (``-log(eps)`` = 16.1 for the default eps = 1e-7).

    Args:
        labels: [n] in [0, 1] (0/1 click labels, or soft labels).
        probs: [n] predicted probabilities in [0, 1] (not logits).
        eps: clipping, in [0, 0.5).

    Returns:
        float (NaN for no examples).

    >>> round(logloss([1, 0], [0.8, 0.2]), 6)  # -log(0.8)
    0.223144
    """
    metric = LogLoss(eps)
    metric.update(labels, probs)
    return metric.result()


class AUC:
    """Exact AUC over every example given to ``update`` (see ``auc``).

    Keeps the labels (bool) and a copy of the scores (their own float dtype)
    until ``result``, which sorts them once: O(n) memory, O(n log n) time.

    >>> metric = AUC()
    >>> metric.update(np.array([0, 1]), np.array([0.3, 0.7], np.float32))
    >>> metric.result(), metric.num_examples
    (1.0, 2)
    """

    def __init__(self):
        self.reset()

    def update(self, labels, scores):
        """Add a batch: labels [b] 0/1, scores [b] real (no NaN)."""
        labels, scores = _check_binary(labels, scores, "AUC.update", "scores")
        self._labels.append(labels)
        self._scores.append(scores.copy())
        self.num_examples += labels.shape[0]

    def result(self):
        """The AUC of all examples so far; NaN with a single class or none."""
        if not self._labels:
            return math.nan
        return _auc(np.concatenate(self._labels), np.concatenate(self._scores))

    def reset(self):
        """Forget every example."""
        self._labels, self._scores = [], []
        self.num_examples = 0


class LogLoss:
    """Mean logloss over every example given to ``update`` (see ``logloss``).

    Adds the per-example losses in float64 (a sum per batch, the batch sums
    with ``math.fsum``) and divides by the total count: O(1) memory.

    Args:
        eps: probabilities are clipped to [eps, 1 - eps]; default 1e-7.

    >>> metric = LogLoss()
    >>> metric.update([1], [0.5]); metric.update([0, 0], [0.5, 0.5])
    >>> round(metric.result(), 6)  # log(2)
    0.693147
    """

    def __init__(self, eps=LOGLOSS_EPSILON):
        eps = float(eps)
        if not 0.0 <= eps < 0.5:
            raise ValueError(f"eps must be in [0, 0.5), got {eps!r}")
        self.eps = eps
        self.reset()

    def update(self, labels, probs):
        """Add a batch: labels [b] in [0, 1], probs [b] in [0, 1]."""
        labels, probs = _check_pairs(labels, probs, "LogLoss.update", "probs")
        if labels.size and (labels.min() < 0.0 or labels.max() > 1.0):
            raise ValueError(f"LogLoss.update: labels must be in [0, 1], got values in "
                             f"[{labels.min()}, {labels.max()}]")
        if probs.size and (probs.min() < 0.0 or probs.max() > 1.0):
            raise ValueError(f"LogLoss.update: probs must be probabilities in [0, 1] (not "
                             f"logits), got values in [{probs.min()}, {probs.max()}]")
        p = np.clip(probs.astype(np.float64), self.eps, 1.0 - self.eps)
        y = labels.astype(np.float64)
        self._batch_sums.append(-float(np.sum(y * np.log(p) + (1.0 - y) * np.log1p(-p))))
        self.num_examples += labels.shape[0]

    def result(self):
        """Mean logloss of all examples so far (NaN for none)."""
        if self.num_examples == 0:
            return math.nan
        return math.fsum(self._batch_sums) / self.num_examples

    def reset(self):
        """Forget every example."""
        self._batch_sums = []
        self.num_examples = 0


def _auc(labels, scores):
    """AUC of bool labels [n] and real scores [n] by tie groups of sorted scores.

    With the scores sorted and grouped into runs of equal score, a positive
    in group k beats every negative of a lower group and ties with the
    negatives of its own group: 2 * wins = sum_k pos_k * (2 * neg_below_k + neg_k).
    """
    num_pos = int(np.count_nonzero(labels))
    num_neg = labels.shape[0] - num_pos
    if num_pos == 0 or num_neg == 0:
        return math.nan
    order = np.argsort(scores, kind="stable")
    sorted_scores = scores[order]
    starts = np.concatenate(([0], np.flatnonzero(sorted_scores[1:] != sorted_scores[:-1]) + 1))
    pos = np.add.reduceat(labels[order].astype(np.int64), starts)
    neg = np.diff(np.append(starts, labels.shape[0])) - pos
    neg_below = np.cumsum(neg) - neg
    twice_wins = int(np.sum(pos * (2 * neg_below + neg)))
    return twice_wins / (2 * num_pos * num_neg)  # exact ints, one rounding


def _check_pairs(labels, values, where, what):
    """labels, values as 1-D arrays of equal length; values real and not NaN."""
    labels = np.asarray(labels)
    values = np.asarray(values)
    if labels.ndim != 1 or values.shape != labels.shape:
        raise ValueError(f"{where}: labels and {what} must be 1-D of equal length, got "
                         f"shapes {labels.shape} and {values.shape}")
    for name, array in (("labels", labels), (what, values)):
        if array.size and array.dtype.kind not in "biuf":
            raise ValueError(f"{where}: {name} must be real, got dtype {array.dtype}")
        if array.dtype.kind == "f" and np.isnan(array).any():
            raise ValueError(f"{where}: {name} hold NaN at position "
                             f"{int(np.flatnonzero(np.isnan(array))[0])}")
    return labels, values


def _check_binary(labels, scores, where, what):
    """(bool labels, float scores), or ValueError for labels other than 0/1."""
    labels, scores = _check_pairs(labels, scores, where, what)
    if labels.size and labels.dtype.kind != "b" and not np.all((labels == 0) | (labels == 1)):
        bad = int(np.flatnonzero((labels != 0) & (labels != 1))[0])
        raise ValueError(f"{where}: labels must be 0 or 1, got {labels[bad]} at position {bad}")
    if scores.dtype.kind != "f":
        scores = scores.astype(np.float64)
    return labels.astype(bool), scores
