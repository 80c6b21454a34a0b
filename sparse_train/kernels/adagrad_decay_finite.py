"""``adagrad_decay.adagrad_decay_apply`` that also tells whether it left a
NaN or an infinity in a row it updated, so the step's finiteness check
(``training.step.check_finite_state``) need not gather and read the
touched rows again (the main job: two tables, weight and accumulator, four
gathers and scans a step). The update of a row has the float ops of
``adagrad_decay_row``, so the same bits; the test reads the row while it is in
cache.
"""
import numpy as np

from ._jit import (loop_width, next_task, njit_inline, njit_parallel, prange, row_buffer,
                   task_queue, tasks_done, workers)
from .coalesce import ROW_CHUNK, summed_grad_row
from .prefetch import AHEAD, prefetch, prefetch_row

#: Rows a flag covers (``flags`` has one entry per chunk of the plan's rows).
FLAG_ROWS = ROW_CHUNK


@njit_inline
def adagrad_decay_row_finite(w, accumulator, power, r, g, lr, initial, rate, step,
                             decay_step, dim):
    """``adagrad_decay.adagrad_decay_row`` (the same float ops), returning
    1 (uint32) if it stored a NaN or an infinity in w or accumulator, else 0.
    In place: w, accumulator [dim] float32 (row r), power [V] int64."""
    width = loop_width(w, dim)
    if step // decay_step > power[r]:
        for j in range(width):
            accumulator[j] = max(accumulator[j] * rate, initial)
        power[r] += 1
    zero = np.float32(0.0)
    found = np.uint32(0)
    for j in range(width):
        accumulator[j] += g[j] * g[j]
        w[j] -= lr * g[j] / np.sqrt(accumulator[j])
        # x - x is 0 for a finite x, NaN for an infinity or a NaN
        found |= np.uint32((w[j] - w[j]) != zero)
        found |= np.uint32((accumulator[j] - accumulator[j]) != zero)
    return found


@njit_parallel
def adagrad_decay_apply_finite(flags, weight, accumulator, power, plan, lr, initial, rate,
                               step, decay_step, dim):
    """In place: flags [ceil(R / FLAG_ROWS)] uint32, flags[c] nonzero iff
    the update left a NaN or an infinity in weight or accumulator on one of
    the rows plan.rows[c * FLAG_ROWS:(c + 1) * FLAG_ROWS]; weight,
    accumulator [V, D] float32 and power [V] int64 as
    ``adagrad_decay.adagrad_decay_apply``. lr, initial, rate float32; step,
    decay_step int64; dim = D (``_jit.row_dim``). A chunk is one task of one
    worker: each flag has one writer."""
    rows = plan.rows
    num_rows = rows.shape[0]
    num_tasks = (num_rows + ROW_CHUNK - 1) // ROW_CHUNK
    queue = task_queue(num_tasks)
    for worker in prange(workers(queue)):
        g = row_buffer(dim)
        c = next_task(queue, worker)
        while c < num_tasks:
            found = np.uint32(0)
            for u in range(c * ROW_CHUNK, min(num_rows, (c + 1) * ROW_CHUNK)):
                ahead = rows[min(u + AHEAD, num_rows - 1)]
                prefetch_row(weight, ahead, dim)
                prefetch_row(accumulator, ahead, dim)
                prefetch(power, ahead)
                summed_grad_row(g, plan, u, dim)
                r = rows[u]
                found |= adagrad_decay_row_finite(weight[r], accumulator[r], power, r, g, lr,
                                                  initial, rate, step, decay_step, dim)
            flags[c] = found
            c = next_task(queue, worker)
    tasks_done(queue)
