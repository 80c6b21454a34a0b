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

from ._jit import (loop_width, next_task, njit_inline, njit_parallel, prange, row_buffer,
                   task_queue, tasks_done, workers)
from .coalesce import ROW_CHUNK, summed_grad_row
from .prefetch import AHEAD, prefetch_row


@njit_inline
def ftrl_element(w, accum, linear, j, g, sigma, sigma_new, lr, l1, l2_twice, shrink_twice):
    """In place: w[j], accum[j], linear[j] (float32), given sigma =
    accum[j]**p and sigma_new = (accum[j] + g*g)**p.

    Branch-free, so the loops around it vectorise. ``np.divide`` is ``/``
    (the same float32 division) without the zero check that Numba's default
    error model puts on ``/``: that check, a branch per element, kept the
    loop scalar (measured: 2k rows x 64 in cache, 1.6 ms -> 0.12 ms). A
    zero ``quad`` (accum, l2 and beta all 0, p > 0) gives inf or nan there
    and the select keeps 0: linear is 0 too, as no gradient has reached the
    element yet (``optim.Ftrl`` refuses l2_shrinkage with a zero initial
    accumulator and no l2 or beta, which would move linear without one).
    """
    lin = linear[j] + ((g + shrink_twice * w[j]) - np.divide(sigma_new - sigma, lr) * w[j])
    linear[j] = lin
    shrunk = np.divide(np.copysign(l1, lin) - lin, np.divide(sigma_new, lr) + l2_twice)
    w[j] = shrunk if abs(lin) > l1 else np.float32(0.0)
    accum[j] = accum[j] + g * g


@njit_inline
def ftrl_row(w, accum, linear, g, lr, power, l1, l2, l2_shrinkage, dim):
    """In place: w, accum, linear [dim] float32. l2 includes beta; all
    scalars float32. Two loops, so that the sqrt one has no pow call."""
    two = np.float32(2.0)
    shrink_twice = two * l2_shrinkage
    l2_twice = two * l2
    width = loop_width(w, dim)
    if power == np.float32(0.5):
        for j in range(width):
            ftrl_element(w, accum, linear, j, g[j], np.sqrt(accum[j]),
                         np.sqrt(accum[j] + g[j] * g[j]), lr, l1, l2_twice, shrink_twice)
    else:
        for j in range(width):
            ftrl_element(w, accum, linear, j, g[j], accum[j] ** power,
                         (accum[j] + g[j] * g[j]) ** power, lr, l1, l2_twice, shrink_twice)


@njit_parallel
def ftrl_apply(weight, accum, linear, plan, lr, power, l1, l2, l2_shrinkage, dim):
    """In place: weight, accum, linear [V, D] float32, on the plan's rows
    only. lr > 0, power = -learning_rate_power >= 0, l1, l2 (beta folded
    in), l2_shrinkage >= 0, all float32; dim = D (``_jit.row_dim``)."""
    rows = plan.rows
    num_rows = rows.shape[0]
    num_tasks = (num_rows + ROW_CHUNK - 1) // ROW_CHUNK
    queue = task_queue(num_tasks)
    for worker in prange(workers(queue)):
        g = row_buffer(dim)
        c = next_task(queue, worker)
        while c < num_tasks:
            for u in range(c * ROW_CHUNK, min(num_rows, (c + 1) * ROW_CHUNK)):
                ahead = rows[min(u + AHEAD, num_rows - 1)]
                prefetch_row(weight, ahead, dim)
                prefetch_row(accum, ahead, dim)
                prefetch_row(linear, ahead, dim)
                summed_grad_row(g, plan, u, dim)
                r = rows[u]
                ftrl_row(weight[r], accum[r], linear[r], g, lr, power, l1, l2,
                         l2_shrinkage, dim)
            c = next_task(queue, worker)
    tasks_done(queue)
