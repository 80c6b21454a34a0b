"""Every update rule on a 16-bit table (SPEC section 7): per touched row,
widen the row to float32, apply the float32 rule of its own kernel module
(the same row function, so the same operations in the same order as on a
float32 table), narrow it back (``half.narrow_row``).

Scheduled as the float32 kernels are: threads claim chunks of
``ROW_CHUNK`` rows from a ``task_queue``; widening and narrowing are vector
code (``half_rows``); rows are prefetched ``AHEAD`` rows early (SGD and
row-wise Adagrad: further, ``SGD_AHEAD``, ``ROWWISE_AHEAD``). Measured on
W1 (1M x 64, uniform ids, 1 thread, CPU time, ``scripts/bench_half.py``):
the bfloat16 SGD step went from 1.16x to 1.4-1.5x the float32 step's
speed (host loaded, load average 6-8 on 2 cores); with ``SGD_AHEAD`` and
``ROWWISE_AHEAD``, ``half_rows.squared_sums``' tiles and F16C, 1.58x for
SGD and 1.61x for row-wise Adagrad (bfloat16, nearest; 1.50x and 1.32x
before, the same interleaved runs, medians of 4, load average 3.4-6.4).

weight [V, D] uint16 holds bit patterns of ``narrowing.fmt``; slots stay
float32. Compiled only when a 16-bit table is updated: a float32 model
never calls these kernels.
"""
import numpy as np

from ._jit import (next_task, njit_parallel, prange, row_buffer, task_queue, tasks_done,
                   workers)
from .adagrad import adagrad_row
from .adagrad_decay import adagrad_decay_row
from .adam import adam_row
from .coalesce import ROW_CHUNK, summed_grad_row
from .ftrl import ftrl_row
from .half import narrow_row, widen_row
from .half_rows import SUM_LANES, squared_sums
from .prefetch import AHEAD, prefetch, prefetch_row
from .rows import row_fill
from .rowwise_adagrad import rowwise_adagrad_row_given_sum
from .sgd import sgd_row


#: Rows prefetched ahead by the SGD and row-wise Adagrad updates: a 16-bit
#: row is half the cache lines of a float32 one, so more rows fit the same
#: misses in flight. W1 bfloat16 (1 thread, update phase, medians of 3
#: interleaved runs, load average 2-4): SGD 8 / 16 / 24 / 32 / 48 / 64
#: ahead 2.95 / 2.52 / 2.57 / 2.48 / 2.48 / 2.57 ms; row-wise Adagrad (one
#: float32 a row besides) 8 / 16 / 32 ahead 4.01 / 3.83 / 4.00 ms. Adagrad
#: (a float32 accumulator row too) keeps ``AHEAD``: 8 / 16 / 32 ahead
#: 8.3 / 8.5 / 9.1 ms.
SGD_AHEAD, ROWWISE_AHEAD = 32, 16


@njit_parallel
def sgd_apply_half(weight, plan, lr, narrowing, dim):
    """In place: weight [V, D] uint16, plan's rows only. w -= lr * g."""
    rows = plan.rows
    num_rows = rows.shape[0]
    num_tasks = (num_rows + ROW_CHUNK - 1) // ROW_CHUNK
    queue = task_queue(num_tasks)
    for worker in prange(workers(queue)):
        g = row_buffer(dim)
        w = row_buffer(dim)
        c = next_task(queue, worker)
        while c < num_tasks:
            for u in range(c * ROW_CHUNK, min(num_rows, (c + 1) * ROW_CHUNK)):
                prefetch_row(weight, rows[min(u + SGD_AHEAD, num_rows - 1)], dim)
                summed_grad_row(g, plan, u, dim)
                r = rows[u]
                widen_row(w, weight[r], narrowing.fmt, dim)
                sgd_row(w, g, lr, dim)
                narrow_row(weight[r], w, narrowing, r, dim)
            c = next_task(queue, worker)
    tasks_done(queue)


@njit_parallel
def adagrad_apply_half(weight, accumulator, plan, lr, epsilon, narrowing, dim):
    """In place: weight [V, D] uint16, accumulator [V, D] float32, plan's
    rows only (``adagrad.adagrad_row`` on the widened row)."""
    rows = plan.rows
    num_rows = rows.shape[0]
    num_tasks = (num_rows + ROW_CHUNK - 1) // ROW_CHUNK
    queue = task_queue(num_tasks)
    for worker in prange(workers(queue)):
        g = row_buffer(dim)
        w = row_buffer(dim)
        c = next_task(queue, worker)
        while c < num_tasks:
            for u in range(c * ROW_CHUNK, min(num_rows, (c + 1) * ROW_CHUNK)):
                ahead = rows[min(u + AHEAD, num_rows - 1)]
                prefetch_row(weight, ahead, dim)
                prefetch_row(accumulator, ahead, dim)
                summed_grad_row(g, plan, u, dim)
                r = rows[u]
                widen_row(w, weight[r], narrowing.fmt, dim)
                adagrad_row(w, accumulator[r], g, lr, epsilon, dim)
                narrow_row(weight[r], w, narrowing, r, dim)
            c = next_task(queue, worker)
    tasks_done(queue)


@njit_parallel
def adagrad_decay_apply_half(weight, accumulator, power, plan, lr, initial, rate,
                             step, decay_step, narrowing, dim):
    """In place: weight [V, D] uint16, accumulator [V, D] float32, power [V]
    int64, plan's rows only (``adagrad_decay.adagrad_decay_row``)."""
    rows = plan.rows
    num_rows = rows.shape[0]
    num_tasks = (num_rows + ROW_CHUNK - 1) // ROW_CHUNK
    queue = task_queue(num_tasks)
    for worker in prange(workers(queue)):
        g = row_buffer(dim)
        w = row_buffer(dim)
        c = next_task(queue, worker)
        while c < num_tasks:
            for u in range(c * ROW_CHUNK, min(num_rows, (c + 1) * ROW_CHUNK)):
                ahead = rows[min(u + AHEAD, num_rows - 1)]
                prefetch_row(weight, ahead, dim)
                prefetch_row(accumulator, ahead, dim)
                prefetch(power, ahead)
                summed_grad_row(g, plan, u, dim)
                r = rows[u]
                widen_row(w, weight[r], narrowing.fmt, dim)
                adagrad_decay_row(w, accumulator[r], power, r, g, lr, initial, rate, step,
                                  decay_step, dim)
                narrow_row(weight[r], w, narrowing, r, dim)
            c = next_task(queue, worker)
    tasks_done(queue)


@njit_parallel
def lazy_adam_apply_half(weight, m, v, plan, lr_t, beta1, beta2, epsilon, narrowing, dim):
    """In place: weight [V, D] uint16, m, v [V, D] float32, plan's rows only
    (``adam.adam_row``)."""
    rows = plan.rows
    num_rows = rows.shape[0]
    num_tasks = (num_rows + ROW_CHUNK - 1) // ROW_CHUNK
    queue = task_queue(num_tasks)
    for worker in prange(workers(queue)):
        g = row_buffer(dim)
        w = row_buffer(dim)
        c = next_task(queue, worker)
        while c < num_tasks:
            for u in range(c * ROW_CHUNK, min(num_rows, (c + 1) * ROW_CHUNK)):
                ahead = rows[min(u + AHEAD, num_rows - 1)]
                prefetch_row(weight, ahead, dim)
                prefetch_row(m, ahead, dim)
                prefetch_row(v, ahead, dim)
                summed_grad_row(g, plan, u, dim)
                r = rows[u]
                widen_row(w, weight[r], narrowing.fmt, dim)
                adam_row(w, m[r], v[r], g, lr_t, beta1, beta2, epsilon, dim)
                narrow_row(weight[r], w, narrowing, r, dim)
            c = next_task(queue, worker)
    tasks_done(queue)


@njit_parallel
def adam_apply_half(weight, m, v, row_slot, plan, lr_t, beta1, beta2, epsilon,
                    narrowing, dim):
    """In place: weight [V, D] uint16, m, v [V, D] float32 on EVERY row
    (untouched rows with g = 0, as ``adam.adam_apply``); row_slot [V] int64
    scratch, all -1 on entry and on return."""
    rows = plan.rows
    for u in prange(rows.shape[0]):
        row_slot[rows[u]] = u
    num_rows = weight.shape[0]
    for c in prange((num_rows + ROW_CHUNK - 1) // ROW_CHUNK):
        g = row_buffer(dim)
        w = row_buffer(dim)
        for r in range(c * ROW_CHUNK, min(num_rows, (c + 1) * ROW_CHUNK)):
            if row_slot[r] >= 0:
                summed_grad_row(g, plan, row_slot[r], dim)
            else:
                row_fill(g, np.float32(0.0), dim)
            widen_row(w, weight[r], narrowing.fmt, dim)
            adam_row(w, m[r], v[r], g, lr_t, beta1, beta2, epsilon, dim)
            narrow_row(weight[r], w, narrowing, r, dim)
    for u in prange(rows.shape[0]):
        row_slot[rows[u]] = -1


#: Rows whose squared-gradient sums row-wise Adagrad runs side by side
#: (``half_rows.squared_sums``). Each row's sum is a chain of ``dim``
#: dependent float32 adds in column order (the rule's order, kept for the
#: bits): one row at a time the update waits on that chain (64 adds of 4
#: cycles for D = 64, longer than the row's memory traffic).
ROWWISE_BLOCK = SUM_LANES


@njit_parallel
def rowwise_adagrad_apply_half(weight, accumulator, plan, lr, epsilon, narrowing, dim):
    """In place: weight [V, D] uint16, accumulator [V] float32, plan's rows
    only (``rowwise_adagrad.rowwise_adagrad_row``, blocks of
    ``ROWWISE_BLOCK`` rows: the same operations per row)."""
    rows = plan.rows
    num_rows = rows.shape[0]
    num_tasks = (num_rows + ROW_CHUNK - 1) // ROW_CHUNK
    queue = task_queue(num_tasks)
    for worker in prange(workers(queue)):
        block = np.zeros((ROWWISE_BLOCK, weight.shape[1]), np.float32)
        totals = np.empty(ROWWISE_BLOCK, np.float32)
        w = row_buffer(dim)
        c = next_task(queue, worker)
        while c < num_tasks:
            end = min(num_rows, (c + 1) * ROW_CHUNK)
            for first in range(c * ROW_CHUNK, end, ROWWISE_BLOCK):
                count = min(ROWWISE_BLOCK, end - first)
                for k in range(count):
                    summed_grad_row(block[k], plan, first + k, dim)
                squared_sums(totals, block, dim)  # lanes past count: unused
                for k in range(count):
                    u = first + k
                    ahead = rows[min(u + ROWWISE_AHEAD, num_rows - 1)]
                    prefetch_row(weight, ahead, dim)
                    prefetch(accumulator, ahead)
                    r = rows[u]
                    widen_row(w, weight[r], narrowing.fmt, dim)
                    rowwise_adagrad_row_given_sum(w, accumulator, r, block[k], totals[k],
                                                  lr, epsilon, dim)
                    narrow_row(weight[r], w, narrowing, r, dim)
            c = next_task(queue, worker)
    tasks_done(queue)


@njit_parallel
def ftrl_apply_half(weight, accum, linear, plan, lr, power, l1, l2, l2_shrinkage,
                    narrowing, dim):
    """In place: weight [V, D] uint16, accum, linear [V, D] float32, plan's
    rows only (``ftrl.ftrl_row``; l2 holds beta, as there)."""
    rows = plan.rows
    num_rows = rows.shape[0]
    num_tasks = (num_rows + ROW_CHUNK - 1) // ROW_CHUNK
    queue = task_queue(num_tasks)
    for worker in prange(workers(queue)):
        g = row_buffer(dim)
        w = row_buffer(dim)
        c = next_task(queue, worker)
        while c < num_tasks:
            for u in range(c * ROW_CHUNK, min(num_rows, (c + 1) * ROW_CHUNK)):
                ahead = rows[min(u + AHEAD, num_rows - 1)]
                prefetch_row(weight, ahead, dim)
                prefetch_row(accum, ahead, dim)
                prefetch_row(linear, ahead, dim)
                summed_grad_row(g, plan, u, dim)
                r = rows[u]
                widen_row(w, weight[r], narrowing.fmt, dim)
                ftrl_row(w, accum[r], linear[r], g, lr, power, l1, l2, l2_shrinkage, dim)
                narrow_row(weight[r], w, narrowing, r, dim)
            c = next_task(queue, worker)
    tasks_done(queue)
