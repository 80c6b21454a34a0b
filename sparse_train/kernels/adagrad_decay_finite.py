"""``adagrad_decay.adagrad_decay_apply`` that also tells whether it left a
NaN or an infinity in a row it updated, so the step's finiteness check
(``training.step.check_finite_state``) need not gather and read the
touched rows again (the main job: two tables, weight and accumulator, four
gathers and scans a step). The update of a row is the same
``adagrad_decay_row``, so the same bits; the test reads the row's exponent
bits while they are in cache.
"""
import numpy as np

from ._jit import loop_width, next_task, njit_parallel, prange, row_buffer, task_queue, \
    tasks_done, workers
from .adagrad_decay import adagrad_decay_row
from .coalesce import ROW_CHUNK, summed_grad_row
from .prefetch import AHEAD, prefetch, prefetch_row

#: Rows a flag covers (``flags`` has one entry per chunk of the plan's rows).
FLAG_ROWS = ROW_CHUNK


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
    exponent = np.uint32(0x7F800000)
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
                adagrad_decay_row(weight[r], accumulator[r], power, r, g, lr,
                                  initial, rate, step, decay_step, dim)
                w_bits = weight[r].view(np.uint32)
                a_bits = accumulator[r].view(np.uint32)
                for j in range(loop_width(weight[r], dim)):
                    found |= np.uint32((w_bits[j] & exponent) == exponent)
                    found |= np.uint32((a_bits[j] & exponent) == exponent)
            flags[c] = found
            c = next_task(queue, worker)
    tasks_done(queue)
