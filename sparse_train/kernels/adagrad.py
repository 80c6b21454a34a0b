"""Adagrad (TF v1 ``AdagradOptimizer`` with an optional epsilon).

    a += g * g
    w -= lr * g / (sqrt(a) + epsilon)
"""
import numpy as np

from ._jit import (loop_width, next_task, njit_inline, njit_parallel, prange, row_buffer,
                   task_queue, tasks_done, workers)
from .coalesce import ROW_CHUNK, summed_grad_row
from .prefetch import AHEAD, prefetch_row


@njit_inline
def adagrad_row(w, accumulator, g, lr, epsilon, dim):
    """In place: w, accumulator [dim] float32."""
    width = loop_width(w, dim)
    for j in range(width):
        accumulator[j] += g[j] * g[j]
        w[j] -= lr * g[j] / (np.sqrt(accumulator[j]) + epsilon)


@njit_parallel
def adagrad_apply(weight, accumulator, plan, lr, epsilon, dim):
    """In place: weight, accumulator [V, D] float32, on the plan's rows only.
    lr, epsilon float32; dim = D (``_jit.row_dim``)."""
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
                prefetch_row(accumulator, ahead, dim)
                summed_grad_row(g, plan, u, dim)
                r = rows[u]
                adagrad_row(weight[r], accumulator[r], g, lr, epsilon, dim)
            c = next_task(queue, worker)
    tasks_done(queue)
