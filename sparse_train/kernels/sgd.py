"""Plain gradient descent (TF ``GradientDescentOptimizer``): w -= lr * g."""
import numpy as np

from ._jit import njit_inline, njit_parallel, prange
from .coalesce import ROW_CHUNK, summed_grad_row
from .prefetch import AHEAD, prefetch_row


@njit_inline
def sgd_row(w, g, lr):
    """In place: w [D] float32. w -= lr * g."""
    for j in range(w.shape[0]):
        w[j] -= lr * g[j]


@njit_parallel
def sgd_apply(weight, grad, lr):
    """In place: weight [V, D] float32, on the plan's rows only. lr float32."""
    rows = grad[0]
    num_rows = rows.shape[0]
    for c in prange((num_rows + ROW_CHUNK - 1) // ROW_CHUNK):
        g = np.empty(weight.shape[1], np.float32)
        for u in range(c * ROW_CHUNK, min(num_rows, (c + 1) * ROW_CHUNK)):
            prefetch_row(weight, rows[min(u + AHEAD, num_rows - 1)])
            summed_grad_row(g, grad, u)
            sgd_row(weight[rows[u]], g, lr)
