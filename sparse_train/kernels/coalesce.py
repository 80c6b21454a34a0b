"""Grouping duplicate row ids in O(n) (radix sort), and the summed-gradient plan.

A row-sparse gradient reaches an update kernel as a *plan*, a ``GradPlan``
(a NamedTuple: Numba reads its fields by name, and caches kernels taking it)

    plan = GradPlan(rows, starts, src_index, src_coef, src, scale)

    rows      [U] int64     unique row ids, increasing
    starts    [U+1] int64   contributions of rows[u] are k in starts[u]:starts[u+1]
    src_index [m] int64     row of ``src`` read by contribution k
    src_coef  [m] float32   its coefficient
    src       [S, D] float32
    scale     float32       multiplies the finished sum (gradient clipping)

so that the summed gradient of row ``rows[u]`` is

    g_u = scale * sum_k src_coef[k] * src[src_index[k]]

summed in increasing k, which is increasing position in the original batch.
A plain gradient with duplicates has ``src = values`` and unit coefficients; a
lookup's backward has ``src = d_out`` (one row per bag) and the combiner's
coefficients, so the [n, D] per-id gradient never exists in memory. Because
each unique row has one owner, update kernels run ``prange`` over rows without
races, and the sum order (hence every bit) is the same for any thread count.
"""
from typing import NamedTuple

import numpy as np

from ._jit import (njit, njit_inline, njit_parallel, next_task, prange, row_buffer, task_queue,
                   tasks_done, workers)
from .rows import row_axpy, row_fill, row_scale

class GradPlan(NamedTuple):
    """The summed-gradient plan (see the module): row ``rows[u]``'s gradient
    is ``scale * sum_{k in starts[u]:starts[u+1]} src_coef[k] * src[src_index[k]]``."""
    rows: np.ndarray       # [U] int64
    starts: np.ndarray     # [U+1] int64
    src_index: np.ndarray  # [m] int64
    src_coef: np.ndarray   # [m] float32
    src: np.ndarray        # [S, D] float32
    scale: np.float32


#: Rows handled by one parallel task (one gradient buffer per task).
ROW_CHUNK = 64

#: Largest radix digit of the id sort: 2048 counters a slice stay in L1.
_MAX_DIGIT_BITS = 11
#: Below this many ids one thread does the whole grouping (a parallel
#: region costs tens of microseconds to start).
PARALLEL_MIN_IDS = 1 << 15


#: Slices of the id sort's passes, run in parallel. The sort is stable, so
#: its result depends on neither this number nor the thread count.
_SLICES = 8


@njit
def _num_slices(parallel):
    return _SLICES if parallel else 1


@njit
def _slice_bounds(n, slices, s):
    size = (n + slices - 1) // slices
    return min(n, s * size), min(n, (s + 1) * size)


@njit
def _bit_length(x):
    """Bits needed for x >= 0 (at least 1)."""
    bits = 1
    while (x >> bits) > 0:
        bits += 1
    return bits


@njit_parallel
def _pack(packed, ids, pos_bits, parallel):
    """In place: packed [n] int64 = (ids[i] << pos_bits) | i."""
    n = ids.shape[0]
    slices = _num_slices(parallel)
    num_tasks = slices
    queue = task_queue(num_tasks)
    for worker in prange(workers(queue)):
        s = next_task(queue, worker)
        while s < num_tasks:
            lo, hi = _slice_bounds(n, slices, s)
            for i in range(lo, hi):
                packed[i] = (ids[i] << pos_bits) | i
            s = next_task(queue, worker)
    tasks_done(queue)


@njit_parallel
def _radix_pass(out, keys, shift, mask, parallel):
    """In place: out [n] int64 = keys stably sorted by the digit
    ``(key >> shift) & mask``. Slice s of the input writes after slices < s
    within each digit, so the pass is stable."""
    n = keys.shape[0]
    slices = _num_slices(parallel)
    counts = np.zeros((slices, mask + 1), np.int64)
    num_tasks = slices
    queue = task_queue(num_tasks)
    for worker in prange(workers(queue)):
        s = next_task(queue, worker)
        while s < num_tasks:
            lo, hi = _slice_bounds(n, slices, s)
            slice_counts = counts[s]
            for i in range(lo, hi):
                slice_counts[(keys[i] >> shift) & mask] += 1
            s = next_task(queue, worker)
    tasks_done(queue)
    total = 0
    for d in range(mask + 1):
        for s in range(slices):
            count = counts[s, d]
            counts[s, d] = total
            total += count
    num_tasks = slices
    queue = task_queue(num_tasks)
    for worker in prange(workers(queue)):
        s = next_task(queue, worker)
        while s < num_tasks:
            lo, hi = _slice_bounds(n, slices, s)
            slice_counts = counts[s]
            for i in range(lo, hi):
                key = keys[i]
                d = (key >> shift) & mask
                out[slice_counts[d]] = key
                slice_counts[d] += 1
            s = next_task(queue, worker)
    tasks_done(queue)


@njit_parallel
def _unpack_runs(packed, tag_bits, parallel):
    """(rows [U], starts [U+1], tags [n]) of packed keys sorted by id."""
    n = packed.shape[0]
    slices = _num_slices(parallel)
    firsts = np.zeros(slices + 1, np.int64)
    num_tasks = slices
    queue = task_queue(num_tasks)
    for worker in prange(workers(queue)):
        s = next_task(queue, worker)
        while s < num_tasks:
            lo, hi = _slice_bounds(n, slices, s)
            count = 0
            for i in range(lo, hi):
                if i == 0 or (packed[i] >> tag_bits) != (packed[i - 1] >> tag_bits):
                    count += 1
            firsts[s + 1] = count
            s = next_task(queue, worker)
    tasks_done(queue)
    for s in range(slices):
        firsts[s + 1] += firsts[s]
    num_rows = firsts[slices]
    rows = np.empty(num_rows, np.int64)
    starts = np.empty(num_rows + 1, np.int64)
    starts[num_rows] = n
    tags = np.empty(n, np.int64)
    tag_mask = (np.int64(1) << tag_bits) - 1
    num_tasks = slices
    queue = task_queue(num_tasks)
    for worker in prange(workers(queue)):
        s = next_task(queue, worker)
        while s < num_tasks:
            lo, hi = _slice_bounds(n, slices, s)
            u = firsts[s]
            for i in range(lo, hi):
                key = packed[i]
                tags[i] = key & tag_mask
                if i == 0 or (key >> tag_bits) != (packed[i - 1] >> tag_bits):
                    rows[u] = key >> tag_bits
                    starts[u] = i
                    u += 1
            s = next_task(queue, worker)
    tasks_done(queue)
    return rows, starts, tags


@njit  # sequences parallel kernels (the pool is started in _jit)
def group_packed(keys, key_bits, tag_bits, parallel):
    """Group tagged ids: keys [n] int64 = ``id << tag_bits | tag`` in
    position order (ids >= 0 of ``key_bits`` bits, key_bits + tag_bits <=
    63); consumed. Returns (rows [U], starts [U+1], tags [n]): unique ids in
    increasing order, and the tags of each id's positions in position
    order. A stable LSD radix sort on the id bits (2048-bucket digits)."""
    n = keys.shape[0]
    passes = (key_bits + _MAX_DIGIT_BITS - 1) // _MAX_DIGIT_BITS
    digit_bits = (key_bits + passes - 1) // passes
    mask = (1 << digit_bits) - 1
    spare = np.empty(n, np.int64)
    for p in range(passes):
        _radix_pass(spare, keys, tag_bits + p * digit_bits, mask, parallel)
        keys, spare = spare, keys
    return _unpack_runs(keys, tag_bits, parallel)


@njit  # sequences parallel kernels (the pool is started in _jit)
def group_rows(ids):
    """Group positions by id: (rows [U], starts [U+1], order [n]) int64.

    ``rows`` are the unique ids in increasing order; ``order[starts[u]:
    starts[u+1]]`` are the positions holding ``rows[u]``, ascending. A
    stable LSD radix sort of ``id << bits(n) | position`` packed in one
    int64 (``group_packed``; ids >= 0; 2 passes of 11-bit digits for up to
    4M rows, 3 up to 8G): O(n) a pass, no comparison sort, parallel above
    ``PARALLEL_MIN_IDS``. Increasing rows also make the update kernels sweep
    the table in address order. Ids too wide to pack with their positions
    (id * n >= 2**63, far beyond any table that fits in memory) raise
    ValueError.
    """
    n = ids.shape[0]
    if n == 0:
        return np.empty(0, np.int64), np.zeros(1, np.int64), np.empty(0, np.int64)
    parallel = n >= PARALLEL_MIN_IDS
    key_bits = _bit_length(np.max(ids))
    pos_bits = _bit_length(n - 1)
    if key_bits + pos_bits > 63:
        raise ValueError("group_rows: ids must be below 2**(63 - bits(len(ids))), "
                         "about 5e11 rows for 16M ids")
    keys = np.empty(n, np.int64)
    _pack(keys, ids, pos_bits, parallel)
    return group_packed(keys, key_bits, pos_bits, parallel)


@njit_inline
def summed_grad_row(out, plan, u, dim):
    """In place: out [dim] float32 = summed gradient of plan row u (see
    module); ``dim`` as given to the kernel (``_jit.row_dim``). In order:
    ``out = 0; out += coef_k * src[k]`` for each contribution k; ``out *=
    scale`` (vector code: ``rows``)."""
    starts, src_index, src_coef, src = plan.starts, plan.src_index, plan.src_coef, plan.src
    scale = plan.scale
    row_fill(out, np.float32(0.0), dim)
    for k in range(starts[u], starts[u + 1]):
        row_axpy(out, src, src_index[k] * dim, src_coef[k], dim)
    row_scale(out, scale, dim)


@njit_parallel
def summed_grad_rows(out, plan, dim):
    """In place: out [U, dim] float32, row u = summed gradient of plan row u."""
    num_items = out.shape[0]
    num_tasks = (num_items + ROW_CHUNK - 1) // ROW_CHUNK
    queue = task_queue(num_tasks)
    for worker in prange(workers(queue)):
        task = next_task(queue, worker)
        while task < num_tasks:
            for u in range(task * ROW_CHUNK, min(num_items, (task + 1) * ROW_CHUNK)):
                summed_grad_row(out[u], plan, u, dim)
            task = next_task(queue, worker)
    tasks_done(queue)


@njit_parallel
def summed_grad_sq_norms(out, plan, dim):
    """In place: out [U] float64 = squared L2 norm of each summed gradient row.

    Summed in float64 per row (a norm over millions of values); the rows are
    then added in a fixed order by the caller.
    """
    num_rows = out.shape[0]
    num_tasks = (num_rows + ROW_CHUNK - 1) // ROW_CHUNK
    queue = task_queue(num_tasks)
    for worker in prange(workers(queue)):
        g = row_buffer(dim)
        c = next_task(queue, worker)
        while c < num_tasks:
            for u in range(c * ROW_CHUNK, min(num_rows, (c + 1) * ROW_CHUNK)):
                summed_grad_row(g, plan, u, dim)
                total = 0.0
                for j in range(dim):
                    total += np.float64(g[j]) * np.float64(g[j])
                out[u] = total
            c = next_task(queue, worker)
    tasks_done(queue)
