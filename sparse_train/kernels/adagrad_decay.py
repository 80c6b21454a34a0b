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

from ._jit import (borrowed, keep_alive, loop_width, next_task, njit_inline, njit_parallel,
                   njit_serial_twin, prange, row_buffer, task_queue, tasks_done, workers)
from .coalesce import ROW_CHUNK, borrowed_plan, summed_grad_row
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


@njit_inline
def _adagrad_decay_rows(weight, accumulator, power, g, plan, lr, initial, rate, step,
                        decay_step, dim, lo, hi):
    """``adagrad_decay_apply`` of the plan's rows lo:hi; g [dim] float32 scratch."""
    rows = plan.rows
    num_rows = rows.shape[0]
    for u in range(lo, hi):
        ahead = rows[min(u + AHEAD, num_rows - 1)]
        prefetch_row(weight, ahead, dim)
        prefetch_row(accumulator, ahead, dim)
        prefetch(power, ahead)
        summed_grad_row(g, plan, u, dim)
        r = rows[u]
        adagrad_decay_row(weight[r], accumulator[r], power, r, g, lr,
                          initial, rate, step, decay_step, dim)


@njit_parallel
def adagrad_decay_apply(weight, accumulator, power, plan, lr, initial, rate,
                        step, decay_step, dim):
    """In place: weight, accumulator [V, D] float32 and power [V] int64, on
    the plan's rows only. lr, initial, rate float32; step, decay_step int64;
    dim = D (``_jit.row_dim``)."""
    num_rows = plan.rows.shape[0]
    num_tasks = (num_rows + ROW_CHUNK - 1) // ROW_CHUNK
    queue = task_queue(num_tasks)
    for worker in prange(workers(queue)):
        g = row_buffer(dim)
        c = next_task(queue, worker)
        while c < num_tasks:
            _adagrad_decay_rows(weight, accumulator, power, g, plan, lr, initial, rate, step,
                                decay_step, dim, c * ROW_CHUNK,
                                min(num_rows, (c + 1) * ROW_CHUNK))
            c = next_task(queue, worker)
    tasks_done(queue)


@njit_serial_twin
def adagrad_decay_apply_serial(weight, accumulator, power, plan, lr, initial, rate,
                               step, decay_step, dim):
    """``adagrad_decay_apply`` on the calling thread (rows are independent:
    the same bits); for small batches (``_jit.by_work``). Its arrays are
    ``borrowed`` as a parallel region's are: with NRT's reference counts
    on every row view it ran 2x slower than the parallel kernel on one
    thread (main job's update, 1k rows of 16: 72 -> 37 us; the parallel
    kernel 37 us), and it compiles in about half the time (1.0 s against
    1.8 s)."""
    g = row_buffer(dim)
    _adagrad_decay_rows(borrowed(weight), borrowed(accumulator), borrowed(power), borrowed(g),
                        borrowed_plan(plan), lr, initial, rate, step, decay_step, dim,
                        0, plan.rows.shape[0])
    keep_alive(g)
