"""FTRL-Proximal (TF ``ApplyFtrlV2`` / ``SparseApplyFtrlV2``), per element,
with ``p = -learning_rate_power`` and ``l2`` already holding ``beta``
(``l2 + beta / (2 lr)``, as TF's Python side passes it):

    g_s     = g + 2 * l2_shrinkage * w      # shrinkage enters linear only
    a_new   = a + g * g                     # the plain gradient
    linear += g_s - (a_new**p - a**p) / lr * w
    quad    = a_new**p / lr + 2 * l2
    w       = (sign(linear) * l1 - linear) / quad   if |linear| > l1   else 0
    a       = a_new

``x**p`` is ``sqrt(x)`` when p == 0.5 (TF's special case: the same bits as
TF's kernel there). Every operation is float32, in TF's order.
"""
import numpy as np

from ._jit import loop_width, njit_inline, njit_parallel, prange, row_buffer
from .coalesce import ROW_CHUNK, summed_grad_row
from .prefetch import AHEAD, prefetch_row


@njit_inline
def accum_power(a, power):
    """``a ** power`` (float32); ``sqrt(a)`` for power 0.5, as TF does."""
    if power == np.float32(0.5):
        return np.sqrt(a)
    return a ** power


@njit_inline
def ftrl_row(w, accum, linear, g, lr, power, l1, l2, l2_shrinkage, dim):
    """In place: w, accum, linear [dim] float32. l2 includes beta; all
    scalars float32."""
    two = np.float32(2.0)
    shrink_twice = two * l2_shrinkage
    l2_twice = two * l2
    width = loop_width(w, dim)
    for j in range(width):
        a_new = accum[j] + g[j] * g[j]
        sigma_power = accum_power(a_new, power)
        lin = linear[j] + ((g[j] + shrink_twice * w[j])
                           - (sigma_power - accum_power(accum[j], power)) / lr * w[j])
        linear[j] = lin
        if abs(lin) > l1:
            quad = sigma_power / lr + l2_twice
            w[j] = ((l1 - lin) if lin > 0 else (-l1 - lin)) / quad
        else:
            w[j] = np.float32(0.0)
        accum[j] = a_new


@njit_parallel
def ftrl_apply(weight, accum, linear, grad, lr, power, l1, l2, l2_shrinkage, dim):
    """In place: weight, accum, linear [V, D] float32, on the plan's rows
    only. lr > 0, power = -learning_rate_power >= 0, l1, l2 (beta folded
    in), l2_shrinkage >= 0, all float32; dim = D (``_jit.row_dim``)."""
    rows = grad[0]
    num_rows = rows.shape[0]
    for c in prange((num_rows + ROW_CHUNK - 1) // ROW_CHUNK):
        g = row_buffer(dim)
        for u in range(c * ROW_CHUNK, min(num_rows, (c + 1) * ROW_CHUNK)):
            ahead = rows[min(u + AHEAD, num_rows - 1)]
            prefetch_row(weight, ahead, dim)
            prefetch_row(accum, ahead, dim)
            prefetch_row(linear, ahead, dim)
            summed_grad_row(g, grad, u, dim)
            r = rows[u]
            ftrl_row(weight[r], accum[r], linear[r], g, lr, power, l1, l2,
                     l2_shrinkage, dim)
