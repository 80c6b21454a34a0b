"""The embedding-bag op: a pooled table lookup whose backward is row-sparse.

Forward is ``functional.embedding_bag`` (SPEC §3); backward is
``functional.embedding_bag_grad``, a ``RowSparseGrad`` of the table whose
values are computed only if read (an optimizer applies it straight from the
upstream gradient). The [V, D] dense gradient never exists.
"""
import numpy as np
import scipy.sparse

from .. import functional as F
from ..sparse import RowSparseGrad
from ..variable import Variable
from .engine import Tensor

__all__ = ["embedding_bag"]


def embedding_bag(weight, values, offsets, weights=None, combiner="sum",
                  padding_idx=None, name=None):
    """Pooled lookup of ragged ids in a table, as an autodiff op.

    For bag b with ids i and per-id weights w_i (1 without weights)::

        out[b] = sum_i w_i * weight[i] / divisor_b
        d weight[i] += w_i * g[b] / divisor_b      (row-sparse)

    with divisor 1 (sum), ``sum_i w_i`` (mean) or ``sqrt(sum_i w_i^2)`` (sqrtn).

    Args:
        weight: the [V, D] table: a ``Variable`` or a ``Tensor`` (float32).
        values: [n] int64 ids; offsets: [B+1] int64; weights: optional [n]
            float32 (not differentiated).
        combiner, padding_idx, name: as in ``functional.embedding_bag``.

    Returns:
        [B, D] Tensor; its backward yields a ``RowSparseGrad`` for the table.

    >>> from sparse_train.autodiff import gradients
    >>> w = Variable(np.ones((5, 2), np.float32), "t")
    >>> out = embedding_bag(w, [1, 3, 1], [0, 2, 3])
    >>> out.data.tolist()
    [[2.0, 2.0], [1.0, 1.0]]
    >>> g = gradients(out.sum(), [w])[0]
    >>> g.indices.tolist(), g.values.tolist()
    ([1, 3], [[2.0, 2.0], [1.0, 1.0]])
    """
    if not isinstance(weight, (Tensor, Variable)):
        raise TypeError(f"embedding_bag: weight must be a Variable or Tensor, got "
                        f"{type(weight).__name__}")
    table = weight if isinstance(weight, Tensor) else Tensor(weight)
    num_embeddings = table.shape[0]
    bags = F.check_bags(values, offsets, weights, num_embeddings, combiner, padding_idx, name)
    if table.variable is not None and table.variable.is_half:  # 16-bit: read widened
        out = F.pool_checked(table.variable, bags)
    elif table.dtype == np.float32:
        out = F.pool_checked(np.ascontiguousarray(table.data), bags)
    else:
        out = _bag_matrix(table.shape[0], values, offsets, weights, combiner,
                          padding_idx, name) @ table.data

    def backward(g):
        # The engine never writes into g afterwards: no copy needed.
        d_out = np.ascontiguousarray(g, dtype=np.float32)
        return (_table_grad(d_out, bags, num_embeddings, name),)
    return Tensor.from_op(out, (table,), backward, "embedding_bag")


#: The last gradient plan made and the checked bags it was made from. DeepFM's
#: linear term and embeddings look up the same fused ids of a batch (the
#: embeddings with mean coefficients as weights, the linear term without):
#: the second backward reuses the first's grouping of the ids (rows,
#: starts, src_index) and brings its own d_out. Plans are never written
#: into (a scale is a ``_replace``).
_last_plan = [None]


def _same(a, b):
    return a is b or (a.shape == b.shape and np.array_equal(a, b))


def _table_grad(d_out, bags, num_embeddings, name):
    """``F.grad_checked(d_out, bags, num_embeddings, name)``, reusing the
    previous call's grouping of the ids when both looked up the same ids
    and offsets (equal arrays) with the sum combiner and no padding: every
    position then contributes (none is dropped), so the grouping depends on
    the ids alone. The coefficients are reused for the same weights, and
    are ones without weights (the plan's ``w_i / 1``); other weights get a
    fresh plan."""
    last, _last_plan[0] = _last_plan[0], None
    plan = None
    if (last is not None and bags.combiner == F.COMBINERS["sum"] and bags.padding_idx < 0
            and d_out.ndim == 2 and d_out.shape[0] == bags.offsets.shape[0] - 1
            and last[2] == num_embeddings and _same(bags.offsets, last[0].offsets)
            and _same(bags.values, last[0].values)):
        old, cached = last[0], last[1]
        if old.has_weights == bags.has_weights and (
                not bags.has_weights or _same(bags.weights, old.weights)):
            plan = cached
        elif not bags.has_weights:
            plan = cached._replace(src_coef=np.ones(cached.src_coef.shape[0], np.float32))
    if plan is not None:
        grad = RowSparseGrad._from_plan(plan._replace(src=d_out),
                                        (num_embeddings, d_out.shape[1]))
    else:
        grad = F.grad_checked(d_out, bags, num_embeddings, name)
    if bags.combiner == F.COMBINERS["sum"] and bags.padding_idx < 0:
        _last_plan[0] = (bags, grad.plan()._replace(src=None), num_embeddings)
    return grad


def _bag_matrix(num_embeddings, values, offsets, weights, combiner, padding_idx, name):
    """The [B, V] sparse matrix A with ``out = A @ weight``, built from the
    backward's own coefficients. Used only for float64 tables (finite-
    difference tests run whole models in double precision; the lookup
    kernels are float32 only)."""
    num_bags = len(offsets) - 1
    grad = F.embedding_bag_grad(np.zeros((num_bags, 1), np.float32), values, offsets,
                                num_embeddings, weights, combiner, padding_idx, name)
    rows, starts, bags, coef = grad.plan()[:4]
    ids = np.repeat(rows, np.diff(starts))
    return scipy.sparse.csr_matrix((coef.astype(np.float64), (bags, ids)),
                                   shape=(num_bags, num_embeddings))
