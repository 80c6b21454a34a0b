"""AdagradDecay (DeepRec ``AdagradDecayOptimizer``), per touched row r:

    if step // decay_step > power[r]:     # step = 1-based number of this step
        a[r] = max(a[r] * rate, initial)
        power[r] += 1                      # one period per touch, never a jump
    a[r] += g * g
    w[r] -= lr * g / sqrt(a[r])

``step`` = 0 means "no global step": 0 // decay_step never exceeds a power,
so nothing decays.
"""
import numpy as np

from ._jit import (loop_width, next_task, njit_inline, njit_parallel, prange, row_buffer,
                   task_queue, tasks_done, workers)
from .coalesce import ROW_CHUNK, summed_grad_row
from .prefetch import AHEAD, prefetch, prefetch_row


@njit_inline
def adagrad_decay_row(w, accumulator, power, r, g, lr, initial, rate, step,
                      decay_step, dim):
    """In place: w, accumulator [dim] float32 (row r), power [V] int64."""
    width = loop_width(w, dim)
    if step // decay_step > power[r]:
        for j in range(width):
            accumulator[j] = max(accumulator[j] * rate, initial)
        power[r] += 1
    for j in range(width):
        accumulator[j] += g[j] * g[j]
        w[j] -= lr * g[j] / np.sqrt(accumulator[j])


@njit_parallel
def adagrad_decay_apply(weight, accumulator, power, plan, lr, initial, rate,
                        step, decay_step, dim):
    """In place: weight, accumulator [V, D] float32 and power [V] int64, on
    the plan's rows only. lr, initial, rate float32; step, decay_step int64;
    dim = D (``_jit.row_dim``)."""
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
                prefetch(power, ahead)
                summed_grad_row(g, plan, u, dim)
                r = rows[u]
                adagrad_decay_row(weight[r], accumulator[r], power, r, g, lr,
                                  initial, rate, step, decay_step, dim)
            c = next_task(queue, worker)
    tasks_done(queue)
