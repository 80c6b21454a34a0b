"""``RowSparseGrad``: the gradient of a table, a few rows of it."""
from functools import lru_cache

import numpy as np

from .kernels.checks import first_id_out_of_range
from .kernels._jit import row_dim
from .kernels.coalesce import GradPlan, group_rows, summed_grad_rows

__all__ = ["RowSparseGrad", "GradPlan"]

_ONE = np.float32(1.0)


class RowSparseGrad:
    """Row-sparse gradient of a ``[V, ...]`` variable (TF ``IndexedSlices``).

    Row ``indices[i]`` of the dense gradient receives ``values[i]``; duplicate
    indices add up, so the dense gradient is
    ``dense[r] = sum_{i: indices[i] == r} values[i]``.

    Args:
        indices: [n] ids in ``[0, dense_shape[0])``, stored as int64.
        values: [n, *dense_shape[1:]] real values, stored as float32.
        dense_shape: shape of the variable, e.g. ``(num_embeddings, embedding_dim)``.

    >>> g = RowSparseGrad([3, 1, 3], np.ones((3, 2)), (5, 2))
    >>> c = g.coalesce()
    >>> c.indices.tolist(), c.values.tolist()
    ([1, 3], [[1.0, 1.0], [2.0, 2.0]])
    """

    def __init__(self, indices, values, dense_shape):
        dense_shape = tuple(int(d) for d in dense_shape)
        if len(dense_shape) < 1 or min(dense_shape) < 0:
            raise ValueError(f"RowSparseGrad: invalid dense_shape {dense_shape}")
        indices = np.asarray(indices)
        if indices.ndim != 1 or (indices.size and indices.dtype.kind not in "iu"):
            raise ValueError(
                f"RowSparseGrad: indices must be a 1-D integer array, got "
                f"shape {indices.shape} dtype {indices.dtype}")
        if indices.size and indices.dtype.kind == "u" and indices.dtype.itemsize >= 8:
            too_big = np.flatnonzero(indices > np.uint64(np.iinfo(np.int64).max))
            if too_big.size:  # would wrap to a negative int64
                raise ValueError(
                    f"RowSparseGrad: index {indices[too_big[0]]} at position {too_big[0]} "
                    f"is outside [0, {dense_shape[0]})")
        values = np.asarray(values)
        if values.size and values.dtype.kind not in "fiu":
            raise ValueError(
                f"RowSparseGrad: values must be real, got dtype {values.dtype}")
        if values.shape != (indices.shape[0],) + dense_shape[1:]:
            raise ValueError(
                f"RowSparseGrad: values shape {values.shape} does not match "
                f"{indices.shape[0]} indices of a {dense_shape} variable "
                f"(expected {(indices.shape[0],) + dense_shape[1:]})")
        self._indices = np.ascontiguousarray(indices, dtype=np.int64)
        bad = first_id_out_of_range(self._indices, dense_shape[0])
        if bad >= 0:
            raise ValueError(
                f"RowSparseGrad: index {self._indices[bad]} at position {bad} is "
                f"outside [0, {dense_shape[0]})")
        self._values = np.ascontiguousarray(values, dtype=np.float32)
        self.dense_shape = dense_shape
        self._plan = None
        self._coalesced = False

    @classmethod
    def _from_plan(cls, plan, dense_shape):
        """A coalesced gradient whose values are computed only when read."""
        plan = GradPlan(*plan)
        grad = cls.__new__(cls)
        grad._indices = plan.rows
        grad._values = None
        grad.dense_shape = tuple(dense_shape)
        grad._plan = plan
        grad._coalesced = True
        return grad

    @property
    def indices(self):
        """[n] int64 row ids (unique and increasing, once coalesced); read-only."""
        return _read_only(self._indices)

    @property
    def values(self):
        """[n, *dense_shape[1:]] float32 gradient rows; read-only."""
        if self._values is None:
            out = np.empty((self._indices.shape[0], _row_size(self.dense_shape)),
                           np.float32)
            summed_grad_rows(out, self._plan, row_dim(out.shape[1]))
            self._values = out.reshape((-1,) + self.dense_shape[1:])
        return _read_only(self._values)

    @property
    def is_coalesced(self):
        return self._coalesced

    def plan(self):
        """The summed-gradient plan consumed by update kernels (see
        ``kernels.coalesce``). Built once, O(n), without sorting."""
        if self._plan is None:
            rows, starts, order = group_rows(self._indices)
            src = self._values.reshape(self._indices.shape[0], _row_size(self.dense_shape))
            self._plan = GradPlan(rows, starts, order, np.ones(order.shape[0], np.float32),
                                  src, _ONE)
        return self._plan

    def coalesce(self):
        """Sum duplicate indices, in order of position, into unique indices
        (increasing, like torch's ``coalesce``)."""
        if self._coalesced:
            return self
        return RowSparseGrad._from_plan(self.plan(), self.dense_shape)

    def scaled(self, factor):
        """This gradient times ``factor`` (coalesced; values stay lazy)."""
        plan = self.plan()
        scale = np.float32(plan.scale * np.float32(factor))
        return RowSparseGrad._from_plan(plan._replace(scale=scale), self.dense_shape)

    def to_dense(self):
        """The dense [dense_shape] float32 gradient (duplicates summed)."""
        grad = self.coalesce()
        dense = np.zeros(self.dense_shape, np.float32)
        dense[grad.indices] = grad.values
        return dense

    @property
    def nnz(self):
        """Number of (index, row) pairs held."""
        return int(self._indices.shape[0])

    def __repr__(self):
        state = "coalesced" if self._coalesced else "uncoalesced"
        return (f"RowSparseGrad(nnz={self.nnz}, dense_shape={self.dense_shape}, "
                f"{state})")


def _read_only(array):
    """A read-only view: a gradient cannot be changed after its checks."""
    view = array.view()
    view.flags.writeable = False
    return view


def _row_size(dense_shape):
    return int(np.prod(dense_shape[1:], dtype=np.int64))


@lru_cache(maxsize=32)
def identity_plan_parts(num_rows):
    """(rows, starts, src_index, src_coef) of a dense gradient: every row
    touched once, by itself. Cached per size; never mutated."""
    rows = np.arange(num_rows, dtype=np.int64)
    return rows, np.arange(num_rows + 1, dtype=np.int64), rows, np.ones(num_rows, np.float32)
