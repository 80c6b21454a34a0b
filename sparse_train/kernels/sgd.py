"""Plain gradient descent (TF ``GradientDescentOptimizer``): w -= lr * g."""
import numpy as np

from ._jit import njit, njit_parallel, prange
from .coalesce import ROW_CHUNK, summed_grad_row


@njit
def sgd_row(w, g, lr):
    """In place: w [D] float32. w -= lr * g."""
    for j in range(w.shape[0]):
        w[j] -= lr * g[j]


@njit_parallel
def sgd_apply(weight, grad, lr):
    """In place: weight [V, D] float32, on the plan's rows only. lr float32."""
    rows = grad[0]
    for c in prange((rows.shape[0] + ROW_CHUNK - 1) // ROW_CHUNK):
        g = np.empty(weight.shape[1], np.float32)
        for u in range(c * ROW_CHUNK, min(rows.shape[0], (c + 1) * ROW_CHUNK)):
            summed_grad_row(g, grad, u)
            sgd_row(weight[rows[u]], g, lr)
