"""Embedding-bag lookups over ragged ids and their table gradient (SPEC §3).

For bag b holding ids i with per-id weights w_i (1 without weights):

    combiner   output of bag b                    gradient to id i
    sum        sum_i w_i e_i                      w_i dy_b
    mean       sum_i w_i e_i / sum_i w_i          w_i dy_b / sum_i w_i
    sqrtn      sum_i w_i e_i / sqrt(sum_i w_i^2)  w_i dy_b / sqrt(sum_i w_i^2)

An empty bag outputs zeros and sends no gradient; so does a bag whose divisor
is zero (all weights zero under mean or sqrtn). A ``padding_idx`` id is left
out of the output, the divisor and the gradient (PyTorch ``padding_idx``).
"""
from typing import NamedTuple

import numpy as np

from .kernels import lookup as _lookup
from .kernels import _jit
from .kernels._jit import table_dim
from .kernels.checks import first_decrease, first_id_out_of_range, first_non_finite
from .sparse import GradPlan, RowSparseGrad
from .variable import Variable

__all__ = ["embedding_bag", "embedding_bag_grad", "check_bags", "CheckedBags", "pool_checked",
           "grad_checked", "drop_grad_rows_below",
           "as_ids", "COMBINERS"]

COMBINERS = {"sum": _lookup.SUM, "mean": _lookup.MEAN, "sqrtn": _lookup.SQRTN}
_NO_WEIGHTS = np.empty(0, np.float32)


def embedding_bag(weight, values, offsets, weights=None, combiner="sum",
                  padding_idx=None, name=None):
    """Pooled lookup of ragged ids: one combined row per bag.

    A 16-bit table (a ``Variable`` of storage ``"bfloat16"`` or
    ``"float16"``, or a float16 array) is read widened to float32; the
    output is float32, accumulated in float32 in the same order.

    Args:
        weight: [V, D] float32 table (an array or a ``Variable``), or a
            16-bit one.
        values: [n] int ids in ``[0, V)``.
        offsets: [B+1] int, non-decreasing, ``offsets[0] == 0``,
            ``offsets[-1] == n``; bag b is ``values[offsets[b]:offsets[b+1]]``.
        weights: optional [n] per-id weights (float32).
        combiner: ``"sum"``, ``"mean"`` or ``"sqrtn"`` (see module docstring).
        padding_idx: optional id skipped everywhere.
        name: feature name used in error messages.

    Returns:
        [B, D] float32.

    >>> table = np.arange(6, dtype=np.float32).reshape(3, 2)
    >>> embedding_bag(table, [0, 2, 1], [0, 2, 3, 3], combiner="mean").tolist()
    [[2.0, 3.0], [2.0, 3.0], [0.0, 0.0]]
    """
    if isinstance(weight, Variable) and weight.is_half:
        table = weight
    elif isinstance(weight, np.ndarray) and weight.dtype == np.float16:
        table = Variable(weight, name or "embedding_bag", trainable=False, dtype="float16")
    else:
        table = _as_table(weight, name)
    return pool_checked(table, check_bags(values, offsets, weights, table.shape[0],
                                          combiner, padding_idx, name))


def pool_checked(table, bags):
    """``embedding_bag`` of ``bags`` already checked by ``check_bags`` for
    this [V, D] float32 table (or a 16-bit ``Variable``): [B, D] float32."""
    if isinstance(table, Variable):
        if table.is_half:
            return _pool_half(table.value, table.storage, bags)
        table = table.value
    out = np.empty((bags.offsets.shape[0] - 1, table.shape[1]), np.float32)
    forward = _jit.by_work(bags.values.shape[0] * table.shape[1], _lookup.embedding_bag_forward,
                           _lookup.embedding_bag_forward_serial)
    forward(out, table, *bags, table_dim(table.shape[1], table.shape[0]))
    return out


def _pool_half(table, storage, bags):
    """``pool_checked`` of a [V, D] 16-bit storage array (``half``)."""
    from .half import storage_bits
    from .kernels.half import BFLOAT16, FLOAT16, embedding_bag_forward_half
    out = np.empty((bags.offsets.shape[0] - 1, table.shape[1]), np.float32)
    embedding_bag_forward_half(out, storage_bits(table), *bags,
                               BFLOAT16 if storage == "bfloat16" else FLOAT16,
                               table_dim(table.shape[1], table.shape[0]))
    return out


def embedding_bag_grad(d_out, values, offsets, num_embeddings, weights=None,
                       combiner="sum", padding_idx=None, name=None):
    """Gradient of ``embedding_bag`` with respect to the table, row-sparse.

    Id i of bag b receives ``w_i * d_out[b] / divisor_b`` (module docstring);
    duplicates are summed in order of position, so the result is coalesced:
    unique indices in increasing order. Its values are computed only
    if read: an optimizer applies the gradient straight from ``d_out``.

    Args:
        d_out: [B, D] upstream gradient of the lookup's output.
        values, offsets, weights, combiner, padding_idx, name: as in
            ``embedding_bag``.
        num_embeddings: V, the table's number of rows.

    Returns:
        ``RowSparseGrad`` with dense_shape ``(num_embeddings, D)``.

    >>> g = embedding_bag_grad(np.ones((2, 2), np.float32), [0, 2, 0], [0, 2, 3], 3)
    >>> g.indices.tolist(), g.values.tolist()
    ([0, 2], [[2.0, 2.0], [1.0, 1.0]])
    """
    num_embeddings = _check_count(num_embeddings, "num_embeddings", name)
    bags = check_bags(values, offsets, weights, num_embeddings, combiner,
                      padding_idx, name)
    d_out = np.asarray(d_out)
    if d_out.dtype.kind not in "fiu":
        raise ValueError(f"{_where(name)}: d_out must be a real array, got dtype {d_out.dtype}")
    d_out = np.array(d_out, dtype=np.float32, copy=True, order="C")
    return grad_checked(d_out, bags, num_embeddings, name)


def grad_checked(d_out, bags, num_embeddings, name=None):
    """``embedding_bag_grad`` of ``bags`` already checked by ``check_bags``.
    ``d_out`` [B, D] float32 C-contiguous is used without a copy: it must not
    change until the gradient is applied (the autodiff engine never writes
    into a gradient it handed out)."""
    num_bags = bags.offsets.shape[0] - 1
    if d_out.ndim != 2 or d_out.shape[0] != num_bags:
        raise ValueError(
            f"{_where(name)}: d_out must have shape [{num_bags}, D] (one row "
            f"per bag), got {d_out.shape}")
    if d_out.dtype != np.float32 or not d_out.flags.c_contiguous:
        raise ValueError(f"{_where(name)}: d_out must be C-contiguous float32")
    values, offsets, has_weights = bags.values, bags.offsets, bags.has_weights
    combiner, padding_idx = bags.combiner, bags.padding_idx
    rows = None
    if (combiner == _lookup.SUM and not has_weights and padding_idx < 0 and values.shape[0]
            and num_embeddings >= _jit.STATIC_DIM_MIN_ROWS):
        # the common case of a large table, without gathers (a small table
        # takes the general plan: the same plan, 20 us slower on the main
        # job's 7k ids, and one kernel less to compile: see _jit.table_dim)
        rows, starts, src_index, src_coef = _lookup.unit_grad_plan(values, offsets)
    if rows is None or rows.shape[0] == 0:
        grad_plan = _jit.by_work(values.shape[0] * d_out.shape[1],
                                 _lookup.embedding_bag_grad_plan,
                                 _lookup.embedding_bag_grad_plan_serial)
        rows, starts, src_index, src_coef = grad_plan(*bags)
    plan = GradPlan(rows, starts, src_index, src_coef, d_out, np.float32(1.0))
    return RowSparseGrad._from_plan(plan, (num_embeddings, d_out.shape[1]))


def drop_grad_rows_below(grad, first_row):
    """``grad`` (a coalesced ``RowSparseGrad``, e.g. from ``embedding_bag_grad``)
    without its rows below ``first_row``: their contributions are dropped
    (a dynamic table's default-value row takes no gradient). The values
    stay lazy; the other rows keep their exact sums.

    >>> g = embedding_bag_grad(np.ones((1, 1), np.float32), [0, 2, 0], [0, 3], 3)
    >>> drop_grad_rows_below(g, 1).indices.tolist()
    [2]
    """
    if not grad.is_coalesced:
        grad = grad.coalesce()
    plan = grad.plan()
    cut = int(np.searchsorted(plan.rows, first_row))
    if cut == 0:
        return grad
    plan = plan._replace(rows=plan.rows[cut:], starts=plan.starts[cut:])
    return RowSparseGrad._from_plan(plan, grad.dense_shape)


def _where(name):
    return f"feature {name!r}" if name else "embedding_bag"


def _as_table(weight, name):
    table = weight.value if isinstance(weight, Variable) else np.asarray(weight)
    if table.ndim != 2 or table.dtype != np.float32 or not table.flags.c_contiguous:
        hint = (" (a bfloat16 table's uint16 bits must come as its Variable, "
                "dtype='bfloat16')" if table.dtype == np.uint16 else "")
        raise ValueError(
            f"{_where(name)}: weight must be a C-contiguous [V, D] float32 "
            f"array, got shape {table.shape} dtype {table.dtype}{hint}")
    return table


def _check_count(value, what, name):
    whole = (not isinstance(value, (bool, np.bool_))
             and isinstance(value, (int, float, np.number)) and bool(np.isfinite(value))
             and int(value) == value)
    if not whole or value < 0:
        raise ValueError(f"{_where(name)}: {what} must be a non-negative integer, got {value!r}")
    return int(value)


_INT64_MAX = np.iinfo(np.int64).max


def as_ids(array, what="values", name=None):
    """``array`` as a C-contiguous [n] int64 array of ids, or ValueError
    naming the feature: it must be 1-D and of an integer dtype (floats are
    refused, never truncated), and unsigned ids must fit int64 (they are
    never wrapped to negative numbers)."""
    array = np.asarray(array)
    if array.ndim != 1:
        raise ValueError(f"{_where(name)}: {what} must be 1-D, got shape {array.shape}")
    if array.size and array.dtype.kind not in "iu":
        raise ValueError(f"{_where(name)}: {what} must be integers, got dtype {array.dtype}")
    if array.size and array.dtype.kind == "u" and array.dtype.itemsize >= 8:
        too_big = np.flatnonzero(array > np.uint64(_INT64_MAX))
        if too_big.size:
            raise ValueError(f"{_where(name)}: {what}[{too_big[0]}] = {array[too_big[0]]} "
                             f"does not fit int64")
    return np.ascontiguousarray(array, dtype=np.int64)



class CheckedBags(NamedTuple):
    """One feature's lookup, validated (``check_bags``): the lookup kernels'
    arguments, in their order (``kernel(out, table, *bags, dim)``)."""
    values: np.ndarray      # [n] int64 ids
    offsets: np.ndarray     # [B+1] int64
    weights: np.ndarray     # [n] float32 per-id weights (empty without)
    has_weights: bool
    combiner: int           # COMBINERS code
    padding_idx: int        # -1: none


def check_bags(values, offsets, weights, num_embeddings, combiner,
               padding_idx=None, name=None):
    """Validated kernel arguments of one feature's lookup, a ``CheckedBags``
    (values, offsets, weights, has_weights, combiner code, padding_idx or -1). Raises
    ValueError naming the feature and the offending value and position."""
    where = _where(name)
    values = as_ids(values, "values", name)
    offsets = as_ids(offsets, "offsets", name)
    if offsets.shape[0] < 1 or offsets[0] != 0:
        raise ValueError(f"{where}: offsets must start at 0 (B+1 entries), got {offsets[:1].tolist()}")
    bad = first_decrease(offsets)
    if bad >= 0:
        raise ValueError(
            f"{where}: offsets must be non-decreasing, but offsets[{bad}] = "
            f"{offsets[bad]} < offsets[{bad - 1}] = {offsets[bad - 1]}")
    if offsets[-1] != values.shape[0]:
        raise ValueError(
            f"{where}: offsets[-1] = {offsets[-1]} must equal len(values) = "
            f"{values.shape[0]}")
    bad = first_id_out_of_range(values, num_embeddings)
    if bad >= 0:
        raise ValueError(
            f"{where}: id {values[bad]} at position {bad} is outside "
            f"[0, {num_embeddings})")
    if combiner not in COMBINERS:
        raise ValueError(f"{where}: combiner must be one of {sorted(COMBINERS)}, got {combiner!r}")
    if padding_idx is None:
        padding = -1
    else:
        padding = _check_count(padding_idx, "padding_idx", name)
        if padding >= num_embeddings:
            raise ValueError(f"{where}: padding_idx {padding} is outside [0, {num_embeddings})")
    if weights is None:
        return CheckedBags(values, offsets, _NO_WEIGHTS, False, COMBINERS[combiner], padding)
    weights = np.asarray(weights)
    if weights.shape != values.shape or (weights.size and weights.dtype.kind not in "fiu"):
        raise ValueError(
            f"{where}: weights must be real with the shape of values {values.shape}, "
            f"got shape {weights.shape} dtype {weights.dtype}")
    weights = np.ascontiguousarray(weights, dtype=np.float32)
    bad = first_non_finite(weights)
    if bad >= 0:
        raise ValueError(f"{where}: weight {weights[bad]} at position {bad} is not finite")
    return CheckedBags(values, offsets, weights, True, COMBINERS[combiner], padding)
