"""Gradient clipping between ``compute_gradients`` and ``apply_gradients`` (SPEC §4).

A gradient is a dense array, a ``RowSparseGrad`` or None (passed through).
Norms are taken over the gradient the optimizer will apply: a row-sparse
gradient's duplicate ids are summed first (in order of position), so its
norm is the L2 norm of ``grad.to_dense()``. Row-sparse gradients are scaled
lazily (``RowSparseGrad.scaled``): neither the per-id ``[n, D]`` values nor
the dense ``[V, D]`` gradient is built.

Difference from TensorFlow: ``tf.clip_by_global_norm`` squares the
``IndexedSlices.values`` as they are, so when a plain gather produced
duplicate ids TF's norm counts ``a**2 + b**2`` where ours counts
``(a + b)**2``. Ours is the true norm of the gradient; the two agree when
the ids of each gradient are unique.

Norms are summed in float64 in a fixed order (each gradient in chunks, then
the gradients in list order), so they do not depend on the thread count.

>>> import numpy as np
>>> from sparse_train import RowSparseGrad
>>> table = RowSparseGrad([1, 1], [[1.5], [1.5]], (4, 1))  # row 1 sums to 3
>>> dense = np.array([4.0], np.float32)
>>> (g_table, g_dense), norm = clip_by_global_norm([table, dense], 2.5)
>>> norm  # sqrt(3**2 + 4**2); TF would report sqrt(1.5**2 + 1.5**2 + 4**2)
5.0
>>> g_table.indices.tolist(), g_table.values.tolist(), g_dense.tolist()
([1], [[1.5]], [2.0])
"""
import math

import numpy as np

from .kernels.clip import dense_sq_norm, ordered_sum
from .kernels._jit import row_dim
from .kernels.coalesce import summed_grad_sq_norms
from .optim.base import check_number
from .sparse import RowSparseGrad
from .variable import Variable

__all__ = ["global_norm", "clip_by_global_norm", "clip_gradients", "clip_by_norm",
           "clip_by_value"]


def global_norm(grads):
    """``sqrt(sum_g ||g||^2)`` over every non-None gradient, in float64 (TF
    ``tf.linalg.global_norm``, but duplicate ids of a ``RowSparseGrad`` are
    summed first). Non-finite gradients give a non-finite result.

    Args:
        grads: list of dense arrays, ``RowSparseGrad``s or None.

    >>> global_norm([np.array([3.0, 4.0]), None])
    5.0
    """
    return math.sqrt(ordered_sum(np.array(_sq_norms(grads), np.float64)))


def clip_by_global_norm(grads, clip_norm, use_norm=None):
    """Scale all gradients together so that their global norm is at most ``clip_norm``.

    ::

        global_norm = sqrt(sum_g ||g||^2)      (duplicate ids summed first)
        g_clipped   = g * clip_norm / max(global_norm, clip_norm)

    Like ``tf.clip_by_global_norm`` it takes a list of gradients (use
    ``clip_gradients`` for ``(gradient, variable)`` pairs); unlike it, a
    non-finite norm raises instead of returning NaN gradients.

    Args:
        grads: list of gradients: dense arrays (scaled as float32),
            ``RowSparseGrad`` (scaled lazily, returned coalesced) or None
            (returned as None).
        clip_norm: > 0.
        use_norm: optional norm to use instead of computing it (TF).

    Returns:
        ``(clipped, global_norm)``: a list of the same length, and the norm
        before clipping as a Python float. When ``global_norm <= clip_norm``
        the gradients are returned as given (no copy).

    Raises:
        ValueError: ``clip_norm`` <= 0, or the norm is not finite; the message
            names the gradients (by position) that hold NaN or infinity.
    """
    grads = list(grads)
    return _clip_together(grads, clip_norm, use_norm,
                          [f"gradient {i}" for i in range(len(grads))])


def clip_gradients(grads_and_vars, clip_norm, use_norm=None):
    """``clip_by_global_norm`` over ``(gradient, variable)`` pairs.

    Returns ``([(clipped_gradient, variable)], global_norm)``, ready for
    ``apply_gradients``; a non-finite norm raises ValueError naming the
    variables whose gradients hold NaN or infinity.

    >>> from sparse_train import Variable
    >>> w = Variable(np.zeros(2), "w")
    >>> [(g, v)], norm = clip_gradients([(np.array([6.0, 8.0]), w)], 5.0)
    >>> g.tolist(), v.name, norm
    ([3.0, 4.0], 'w', 10.0)
    """
    pairs = [tuple(pair) for pair in grads_and_vars]
    for pair in pairs:
        if len(pair) != 2 or not isinstance(pair[1], Variable):
            raise ValueError(f"clip_gradients: expected (gradient, Variable) pairs, got {pair!r}")
    clipped, norm = _clip_together([g for g, _ in pairs], clip_norm, use_norm,
                                   [f"variable {v.name!r}" for _, v in pairs])
    return [(g, v) for g, (_, v) in zip(clipped, pairs)], norm


def clip_by_norm(grad, clip_norm):
    """Scale one gradient so that its L2 norm is at most ``clip_norm`` (TF
    ``tf.clip_by_norm`` over all axes)::

        g_clipped = g * clip_norm / max(||g||, clip_norm)

    For a ``RowSparseGrad`` ``||g||`` is taken after summing duplicate ids (TF
    takes it over the un-summed values). None is returned as None; a
    non-finite norm raises ValueError.

    >>> clip_by_norm(np.array([3.0, 4.0]), 1.0).tolist()
    [0.6000000238418579, 0.800000011920929]
    """
    return _clip_together([grad], clip_norm, None, ["the gradient"])[0][0]


def clip_by_value(grad, clip_value_min, clip_value_max):
    """Clamp every gradient value into ``[clip_value_min, clip_value_max]`` (TF
    ``tf.clip_by_value``): ``g = min(max(g, clip_value_min), clip_value_max)``.

    A dense gradient comes back as a new float32 array. For a
    ``RowSparseGrad`` the clamp applies to the SUMMED rows (duplicate ids are
    summed first, so the gradient applied is clamped; TF clamps each
    un-summed value): the result holds the ids of ``grad.coalesce()`` with
    their ``[U, D]`` clamped values. NaN stays NaN (the optimizer
    rejects it, naming the variable). None is returned as None.

    >>> g = clip_by_value(RowSparseGrad([0, 0], np.full((2, 1), 0.75), (2, 1)), -1.0, 1.0)
    >>> g.indices.tolist(), g.values.tolist()
    ([0], [[1.0]])
    """
    low = np.float32(check_number("clip_value_min", clip_value_min))
    high = np.float32(check_number("clip_value_max", clip_value_max))
    if low > high:
        raise ValueError(
            f"clip_value_min must be <= clip_value_max, got {clip_value_min!r} > {clip_value_max!r}")
    if grad is None:
        return None
    if isinstance(grad, RowSparseGrad):
        summed = grad.coalesce()
        return RowSparseGrad(summed.indices, np.clip(summed.values, low, high),
                             grad.dense_shape)
    return np.clip(_as_dense(grad, "the gradient"), low, high)


def _clip_together(grads, clip_norm, use_norm, labels):
    """(scaled grads, norm): the common body of the clip_by_*norm functions."""
    clip_norm = check_number("clip_norm", clip_norm, low=0.0, low_open=True)
    if use_norm is None:
        sq_norms = _sq_norms(grads, labels)
        norm = math.sqrt(ordered_sum(np.array(sq_norms, np.float64)))
        if not math.isfinite(norm):
            bad = [f"{label} ({sq})" for label, sq in zip(labels, sq_norms)
                   if not math.isfinite(sq)]
            raise ValueError(
                f"cannot clip by norm: the gradient norm is not finite; non-finite "
                f"values in {', '.join(bad)}")
    else:
        norm = check_number("use_norm", use_norm, low=0.0)
    scale = clip_norm / max(norm, clip_norm)
    if scale == 1.0:
        return list(grads), norm
    return [_scaled(g, scale, label) for g, label in zip(grads, labels)], norm


def _sq_norms(grads, labels=None):
    """The squared L2 norm of each gradient (0.0 for None), float64."""
    if labels is None:
        labels = [f"gradient {i}" for i in range(len(grads))]
    return [_sq_norm(g, label) for g, label in zip(grads, labels)]


def _sq_norm(grad, label):
    if grad is None:
        return 0.0
    if isinstance(grad, RowSparseGrad):
        plan = grad.plan()
        per_row = np.empty(plan.rows.shape[0], np.float64)
        summed_grad_sq_norms(per_row, plan, row_dim(plan.src.shape[1]))
        return float(ordered_sum(per_row))
    return float(dense_sq_norm(_as_dense(grad, label).reshape(-1)))


def _scaled(grad, scale, label):
    if grad is None:
        return None
    if isinstance(grad, RowSparseGrad):
        return grad.scaled(scale)
    return _as_dense(grad, label) * np.float32(scale)


def _as_dense(grad, label):
    """A dense gradient as a C-contiguous float32 array (no copy when it is one)."""
    if isinstance(grad, tuple) and len(grad) == 2 and isinstance(grad[1], Variable):
        raise TypeError(f"{label} is a (gradient, variable) pair; use clip_gradients for pairs")
    array = np.asarray(grad)
    if array.dtype.kind not in "fiu":
        raise ValueError(f"{label} must be a real array or a RowSparseGrad, got dtype {array.dtype}")
    return np.ascontiguousarray(array, dtype=np.float32)
