"""Losses: sigmoid cross-entropy with logits and mean squared error."""
import numpy as np

from .engine import Tensor, as_tensor
from .ops import _sigmoid

__all__ = ["sigmoid_cross_entropy_with_logits", "mean_squared_error"]

_REDUCTIONS = ("mean", "sum", "none")


def _check_reduction(reduction):
    if reduction not in _REDUCTIONS:
        raise ValueError(f"reduction must be one of {_REDUCTIONS}, got {reduction!r}")


def _labels_like(labels, logits, op):
    array = np.asarray(labels.data if isinstance(labels, Tensor) else labels, dtype=logits.dtype)
    if array.shape != logits.shape:
        raise ValueError(f"{op}: labels shape {array.shape} != logits shape {logits.shape}")
    bad = np.flatnonzero(~np.isfinite(array))
    if bad.size:  # else every gradient turns NaN and the error names a table
        raise ValueError(f"{op}: label {array.reshape(-1)[bad[0]]} at flat position "
                         f"{bad[0]} is not finite")
    return array


def _reduce(loss, reduction):
    if reduction == "none":
        return loss, np.asarray(1.0, loss.dtype)
    total = loss.sum(dtype=loss.dtype)
    if reduction == "sum":
        return np.asarray(total), np.asarray(1.0, loss.dtype)
    count = max(loss.size, 1)
    return np.asarray(total / count, loss.dtype), np.asarray(1.0 / count, loss.dtype)


def sigmoid_cross_entropy_with_logits(logits, labels, reduction="mean"):
    """Logistic loss of logits x against labels z in [0, 1] (TF's stable form)::

        loss = max(x, 0) - x * z + log(1 + exp(-|x|))
        dloss/dx = sigmoid(x) - z

    averaged over every element by default.

    Args:
        logits: Tensor, e.g. [B].
        labels: array of the same shape (a constant: no gradient).
        reduction: ``"mean"`` (default), ``"sum"`` or ``"none"`` (per element).

    >>> x = Tensor(np.array([0.0, 100.0], np.float32))
    >>> float(sigmoid_cross_entropy_with_logits(x, [1.0, 1.0]).data)   # (log 2 + 0) / 2
    0.3465735912322998
    """
    _check_reduction(reduction)
    logits = as_tensor(logits)
    z = _labels_like(labels, logits, "sigmoid_cross_entropy_with_logits")
    x = logits.data
    per_element = np.maximum(x, 0) - x * z + np.log1p(np.exp(-np.abs(x)))
    out, scale = _reduce(per_element, reduction)

    def backward(g):
        return ((_sigmoid(x) - z) * (g * scale),)
    return Tensor.from_op(out, (logits,), backward, "sigmoid_cross_entropy_with_logits")


def mean_squared_error(predictions, targets, reduction="mean"):
    """Squared error ``(p - t)^2``, averaged over every element by default.

    Backward: ``dp = 2 (p - t) / n``, ``dt = -dp`` (n = number of elements;
    ``targets`` may be a constant array or a Tensor).

    >>> float(mean_squared_error(Tensor(np.array([1.0, 3.0], np.float32)), [0.0, 1.0]).data)
    2.5
    """
    _check_reduction(reduction)
    predictions = as_tensor(predictions)
    targets = as_tensor(targets, like=predictions)
    if targets.shape != predictions.shape:
        raise ValueError(f"mean_squared_error: targets shape {targets.shape} != "
                         f"predictions shape {predictions.shape}")
    diff = predictions.data - targets.data
    out, scale = _reduce(diff * diff, reduction)

    def backward(g):
        d = 2 * diff * (g * scale)
        return (d if predictions.requires_grad else None,
                -d if targets.requires_grad else None)
    return Tensor.from_op(out, (predictions, targets), backward, "mean_squared_error")
