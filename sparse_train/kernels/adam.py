"""Adam (TF v1 ``AdamOptimizer``) and LazyAdam (TF contrib), per row:

    m = beta1 * m + (1 - beta1) * g
    v = beta2 * v + (1 - beta2) * g * g
    w -= lr_t * m / (sqrt(v) + epsilon)

``lr_t = lr * sqrt(1 - beta2_power) / (1 - beta1_power)`` is computed by the
caller. LazyAdam updates the touched rows; Adam updates every row, untouched
rows with g = 0 (TF decays m and v of all rows for a sparse gradient).
"""
import numpy as np

from ._jit import (borrowed, keep_alive, loop_width, next_task, njit_inline, njit_parallel,
                   njit_serial_twin, prange, row_buffer, task_queue, tasks_done, workers)
from .coalesce import ROW_CHUNK, borrowed_plan, summed_grad_row
from .prefetch import AHEAD, prefetch_row
from .rows import row_fill


@njit_inline
def adam_row(w, m, v, g, lr_t, beta1, beta2, epsilon, dim):
    """In place: w, m, v [dim] float32."""
    width = loop_width(w, dim)
    one = np.float32(1.0)
    for j in range(width):
        m[j] = beta1 * m[j] + (one - beta1) * g[j]
        v[j] = beta2 * v[j] + (one - beta2) * (g[j] * g[j])
        w[j] -= lr_t * m[j] / (np.sqrt(v[j]) + epsilon)


@njit_inline
def _lazy_adam_plan_row(weight, m, v, g, plan, u, lr_t, beta1, beta2, epsilon, dim):
    """The plan's u-th row: prefetch the row AHEAD, sum its gradient into g
    [dim] (scratch), ``adam_row`` in place."""
    rows = plan.rows
    ahead = rows[min(u + AHEAD, rows.shape[0] - 1)]
    prefetch_row(weight, ahead, dim)
    prefetch_row(m, ahead, dim)
    prefetch_row(v, ahead, dim)
    summed_grad_row(g, plan, u, dim)
    r = rows[u]
    adam_row(weight[r], m[r], v[r], g, lr_t, beta1, beta2, epsilon, dim)


@njit_parallel
def lazy_adam_apply(weight, m, v, plan, lr_t, beta1, beta2, epsilon, dim):
    """In place: weight, m, v [V, D] float32, on the plan's rows only.
    lr_t, beta1, beta2, epsilon float32; dim = D (``_jit.row_dim``)."""
    rows = plan.rows
    num_rows = rows.shape[0]
    num_tasks = (num_rows + ROW_CHUNK - 1) // ROW_CHUNK
    queue = task_queue(num_tasks)
    for worker in prange(workers(queue)):
        g = row_buffer(dim)
        c = next_task(queue, worker)
        while c < num_tasks:
            for u in range(c * ROW_CHUNK, min(num_rows, (c + 1) * ROW_CHUNK)):
                _lazy_adam_plan_row(weight, m, v, g, plan, u, lr_t, beta1, beta2, epsilon,
                                    dim)
            c = next_task(queue, worker)
    tasks_done(queue)


@njit_serial_twin
def lazy_adam_apply_serial(weight, m, v, plan, lr_t, beta1, beta2, epsilon, dim):
    """``lazy_adam_apply`` on the calling thread, without a parallel region
    (rows are independent: the same bits); compiles in a third of the time.
    For dense gradients (``optim.LazyAdam``), whose contiguous rows one
    thread updates as fast as two. Arrays ``borrowed``: no reference
    counts on each row's views."""
    g = row_buffer(dim)
    weight, m, v, scratch = borrowed(weight), borrowed(m), borrowed(v), borrowed(g)
    plan = borrowed_plan(plan)
    for u in range(plan.rows.shape[0]):
        _lazy_adam_plan_row(weight, m, v, scratch, plan, u, lr_t, beta1, beta2, epsilon, dim)
    keep_alive(g)


@njit_parallel
def adam_apply(weight, m, v, row_slot, plan, lr_t, beta1, beta2, epsilon, dim):
    """In place: weight, m, v [V, D] float32 on EVERY row; row_slot [V] int64
    scratch, all -1 on entry and on return. dim = D (``_jit.row_dim``).

    Row r takes its summed gradient when the plan touches it, else g = 0.
    """
    rows = plan.rows
    for u in prange(rows.shape[0]):
        row_slot[rows[u]] = u
    num_rows = weight.shape[0]
    num_tasks = (num_rows + ROW_CHUNK - 1) // ROW_CHUNK
    queue = task_queue(num_tasks)
    for worker in prange(workers(queue)):
        g = row_buffer(dim)
        c = next_task(queue, worker)
        while c < num_tasks:
            for r in range(c * ROW_CHUNK, min(num_rows, (c + 1) * ROW_CHUNK)):
                if row_slot[r] >= 0:
                    summed_grad_row(g, plan, row_slot[r], dim)
                else:
                    row_fill(g, np.float32(0.0), dim)
                adam_row(weight[r], m[r], v[r], g, lr_t, beta1, beta2, epsilon, dim)
            c = next_task(queue, worker)
    tasks_done(queue)
    for u in prange(rows.shape[0]):
        row_slot[rows[u]] = -1
