"""Sums of squares for gradient clipping, in float64 and in a fixed order.

The squared norm of a row-sparse gradient comes from
``coalesce.summed_grad_sq_norms`` (one float64 per unique row); this module
sums those, and squares dense gradients. Partial sums cover fixed chunks, so
the order of the additions, hence every bit of the norm, is the same for any
thread count.
"""
import numpy as np

from ._jit import next_task, njit, njit_parallel, prange, task_queue, tasks_done, workers

#: Values per partial sum of a dense gradient's squared norm.
NORM_CHUNK = 1 << 14


@njit_parallel
def dense_sq_norm(values):
    """sum_i float64(values[i])**2 for values [n] float32, as a float64.

    Chunk c sums values[c * NORM_CHUNK:(c + 1) * NORM_CHUNK] in order; the
    chunk sums are then added in order of c.
    """
    n = values.shape[0]
    num_chunks = (n + NORM_CHUNK - 1) // NORM_CHUNK
    partial = np.zeros(num_chunks, np.float64)
    num_tasks = num_chunks
    queue = task_queue(num_tasks)
    for worker in prange(workers(queue)):
        c = next_task(queue, worker)
        while c < num_tasks:
            total = 0.0
            for i in range(c * NORM_CHUNK, min(n, (c + 1) * NORM_CHUNK)):
                x = np.float64(values[i])
                total += x * x
            partial[c] = total
            c = next_task(queue, worker)
    tasks_done(queue)
    return ordered_sum(partial)


@njit
def ordered_sum(values):
    """values[0] + values[1] + ... left to right, values [n] float64."""
    total = 0.0
    for i in range(values.shape[0]):
        total += values[i]
    return total
