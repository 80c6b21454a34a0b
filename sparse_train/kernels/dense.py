"""Elementwise work of a dense layer, fused into single passes over [B, N].

``x @ kernel`` stays with BLAS; these add the bias and apply ReLU in place
(forward), and mask the upstream gradient and sum it over the batch
(backward), each in one pass instead of numpy's three or four.
"""
import numpy as np

from ._jit import next_task, njit_parallel, prange, task_queue, tasks_done, workers

#: Row slices of the bias-gradient sum: a fixed number, so the sum's order
#: (and its bits) does not depend on the thread count.
BIAS_SLICES = 16
#: Rows of [B, N] a parallel task handles (``_jit.task_queue``).
ROW_TASK = 32


@njit_parallel
def bias_relu(out, bias):
    """In place: out [B, N] float32 = relu(out + bias). bias [N] float32.

    NaN propagates (as ``np.maximum``); -0.0 and 0 stay as they are."""
    num_items = out.shape[0]
    num_tasks = (num_items + ROW_TASK - 1) // ROW_TASK
    queue = task_queue(num_tasks)
    for worker in prange(workers(queue)):
        task = next_task(queue, worker)
        while task < num_tasks:
            for i in range(task * ROW_TASK, min(num_items, (task + 1) * ROW_TASK)):
                row = out[i]
                for j in range(row.shape[0]):
                    v = row[j] + bias[j]
                    row[j] = v if not v < 0 else np.float32(0.0)
            task = next_task(queue, worker)
    tasks_done(queue)


@njit_parallel
def relu_grad_and_bias_sums(dpre, partial, g, out):
    """In place: dpre [B, N] = g * (out > 0) (the ReLU's gradient, 0 at the
    kink); partial [BIAS_SLICES, N] float32 = column sums of dpre over each
    slice of rows (the caller adds the slices in order for the bias
    gradient). g, out [B, N] float32."""
    num_rows = g.shape[0]
    size = (num_rows + BIAS_SLICES - 1) // BIAS_SLICES
    num_tasks = BIAS_SLICES
    queue = task_queue(num_tasks)
    for worker in prange(workers(queue)):
        s = next_task(queue, worker)
        while s < num_tasks:
            acc = partial[s]
            acc[:] = 0.0
            for i in range(s * size, min(num_rows, (s + 1) * size)):
                for j in range(g.shape[1]):
                    v = g[i, j] if out[i, j] > 0 else np.float32(0.0)
                    dpre[i, j] = v
                    acc[j] += v
            s = next_task(queue, worker)
    tasks_done(queue)


@njit_parallel
def bias_sums(partial, g):
    """In place: partial [BIAS_SLICES, N] float32 = column sums of g [B, N]
    over each slice of rows (no activation)."""
    num_rows = g.shape[0]
    size = (num_rows + BIAS_SLICES - 1) // BIAS_SLICES
    num_tasks = BIAS_SLICES
    queue = task_queue(num_tasks)
    for worker in prange(workers(queue)):
        s = next_task(queue, worker)
        while s < num_tasks:
            acc = partial[s]
            acc[:] = 0.0
            for i in range(s * size, min(num_rows, (s + 1) * size)):
                for j in range(g.shape[1]):
                    acc[j] += g[i, j]
            s = next_task(queue, worker)
    tasks_done(queue)
