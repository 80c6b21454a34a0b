"""Row-wise Adagrad (FBGEMM ``EXACT_ROWWISE_ADAGRAD``), one accumulator a row:

    a[r] += mean_j(g_j^2)
    w[r] -= lr * g / (sqrt(a[r]) + epsilon)
"""
import numpy as np

from ._jit import (loop_width, next_task, njit_inline, njit_parallel, prange, row_buffer,
                   task_queue, tasks_done, workers)
from .coalesce import ROW_CHUNK, summed_grad_row
from .prefetch import AHEAD, prefetch, prefetch_row


@njit_inline
def rowwise_adagrad_row(w, accumulator, r, g, lr, epsilon, dim):
    """In place: w [dim] float32 (row r), accumulator [V] float32. The sum
    of g^2 is one chain of float32 adds in column order."""
    width = loop_width(w, dim)
    total = np.float32(0.0)
    for j in range(width):
        total += g[j] * g[j]
    rowwise_adagrad_row_given_sum(w, accumulator, r, g, total, lr, epsilon, dim)


@njit_inline
def rowwise_adagrad_row_given_sum(w, accumulator, r, g, total, lr, epsilon, dim):
    """The rule's update given ``total = sum_j g_j^2`` (float32):
    ``a[r] += total / dim; w -= lr * g / (sqrt(a[r]) + epsilon)``, in place."""
    width = loop_width(w, dim)
    accumulator[r] += total / np.float32(dim)
    denominator = np.sqrt(accumulator[r]) + epsilon
    for j in range(width):
        w[j] -= lr * g[j] / denominator


@njit_parallel
def rowwise_adagrad_apply(weight, accumulator, plan, lr, epsilon, dim):
    """In place: weight [V, D], accumulator [V] float32, plan's rows only.
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
                prefetch(accumulator, ahead)
                summed_grad_row(g, plan, u, dim)
                rowwise_adagrad_row(weight[rows[u]], accumulator, rows[u], g, lr,
                                    epsilon, dim)
            c = next_task(queue, worker)
    tasks_done(queue)
