"""Feature-interaction ops on a [B, F, D] stack of field embeddings."""
import numpy as np

from ..kernels import fm as _fm
from .engine import Tensor, as_tensor

__all__ = ["fm_interaction", "dot_interaction"]


def _check_stack(x, op):
    if x.ndim != 3:
        raise ValueError(f"{op} takes a [B, F, D] stack of embeddings, got shape {x.shape}")


def fm_interaction(x, reduce_sum=True):
    """Second-order factorization-machine term (Rendle 2010, eq. 5).

    With ``s = sum_f x[:, f]`` ([B, D])::

        out[b, d] = 0.5 * (s[b, d]^2 - sum_f x[b, f, d]^2)   # = sum_{f<f'} x_f,d x_f',d
        out[b]    = sum_d out[b, d]                           # reduce_sum=True
        dx[b, f, d] = g[b(, d)] * (s[b, d] - x[b, f, d])

    Args:
        x: [B, F, D] Tensor.
        reduce_sum: sum over D (the FM logit term, [B]); False keeps [B, D]
            (the bi-interaction of NFM).

    >>> e = Tensor(np.array([[[1.0, 2.0], [3.0, 4.0]]], np.float32))
    >>> fm_interaction(e).data.tolist()   # <(1, 2), (3, 4)> = 11
    [11.0]
    """
    x = as_tensor(x)
    _check_stack(x, "fm_interaction")
    # one pass each way in a kernel (160 + 90 -> 34 + 15 us a step on the
    # main job), with NumPy's bits (``kernels.fm``); else NumPy
    fast = (reduce_sum and x.data.dtype == np.float32 and x.shape[1] >= 1
            and _fm.MIN_DIM <= x.shape[2] <= _fm.MAX_DIM)
    if fast:
        data = np.ascontiguousarray(x.data)
        out = np.empty(x.shape[0], np.float32)
        total = np.empty((x.shape[0], x.shape[2]), np.float32)
        _fm.fm_forward(out, total, data)
    else:
        total = x.data.sum(axis=1)
        out = 0.5 * (total * total - np.einsum("bfd,bfd->bd", x.data, x.data))
        if reduce_sum:
            out = out.sum(axis=1)

    def backward(g):
        if fast and g.dtype == np.float32 and g.ndim == 1:
            dx = np.empty(data.shape, np.float32)
            _fm.fm_backward(dx, np.ascontiguousarray(g), total, data)
            return (dx,)
        g = g[:, None, None] if reduce_sum else g[:, None, :]
        dx = total[:, None, :] - x.data
        if dx.dtype == np.result_type(g, dx):  # in place: one [B, F, D] buffer, not two
            return (np.multiply(dx, g, out=dx),)
        return (dx * g,)
    return Tensor.from_op(out, (x,), backward, "fm_interaction")


def _pairs(num_fields, self_interaction):
    """Row and column ids of the upper triangle of an F x F matrix, row-major."""
    return np.triu_indices(num_fields, k=0 if self_interaction else 1)


def dot_interaction(x, self_interaction=False):
    """Pairwise dot products of the F vectors of each example (DLRM, Naumov
    et al. 2019, ``interact_features`` with ``arch_interaction_op="dot"``)::

        Z[b] = x[b] @ x[b]^T                      # [F, F]
        out[b] = Z[b][i, j] for i < j (i <= j with self_interaction), row-major
        dx[b] = (G[b] + G[b]^T) @ x[b]            # G[b][i, j] = g[b, pair (i, j)]

    Args:
        x: [B, F, D] Tensor.
        self_interaction: also output the squared norms ``Z[b][i, i]``.

    Returns:
        [B, F (F - 1) / 2] (or [B, F (F + 1) / 2]) Tensor.

    >>> e = Tensor(np.array([[[1.0, 0.0], [2.0, 1.0], [0.0, 3.0]]], np.float32))
    >>> dot_interaction(e).data.tolist()   # (x0.x1, x0.x2, x1.x2)
    [[2.0, 0.0, 3.0]]
    """
    x = as_tensor(x)
    _check_stack(x, "dot_interaction")
    num_fields = x.shape[1]
    rows, cols = _pairs(num_fields, self_interaction)
    gram = np.matmul(x.data, np.swapaxes(x.data, 1, 2))
    out = gram[:, rows, cols]

    def backward(g):
        dgram = np.zeros((g.shape[0], num_fields, num_fields), g.dtype)
        dgram[:, rows, cols] = g
        dgram = dgram + np.swapaxes(dgram, 1, 2)
        return (np.matmul(dgram, x.data),)
    return Tensor.from_op(out, (x,), backward, "dot_interaction")
