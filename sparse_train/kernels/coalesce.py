"""Grouping duplicate row ids in O(n) (radix sort), and the summed-gradient plan.

A row-sparse gradient reaches an update kernel as a *plan*, a tuple

    grad = (rows, starts, src_index, src_coef, src, scale)

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
import numpy as np

from ._jit import njit, njit_inline, njit_parallel, prange

#: Rows handled by one parallel task (one gradient buffer per task).
ROW_CHUNK = 64

#: Largest radix digit of the id sort: 4096 counters stay in L1.
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


@njit_parallel
def _radix_pass(next_keys, next_order, keys, order, shift, mask, parallel):
    """In place: next_keys, next_order [n] int64 = (keys, order) stably
    sorted by the digit ``(key >> shift) & mask``. Slice s of the input
    writes after slices < s within each digit, so the pass is stable."""
    n = keys.shape[0]
    slices = _num_slices(parallel)
    counts = np.zeros((slices, mask + 1), np.int64)
    for s in prange(slices):
        lo, hi = _slice_bounds(n, slices, s)
        for i in range(lo, hi):
            counts[s, (keys[i] >> shift) & mask] += 1
    total = 0
    for d in range(mask + 1):
        for s in range(slices):
            count = counts[s, d]
            counts[s, d] = total
            total += count
    for s in prange(slices):
        lo, hi = _slice_bounds(n, slices, s)
        for i in range(lo, hi):
            d = (keys[i] >> shift) & mask
            next_keys[counts[s, d]] = keys[i]
            next_order[counts[s, d]] = order[i]
            counts[s, d] += 1


@njit_parallel
def _runs(keys, parallel):
    """(rows [U], starts [U+1]) of the runs of equal values in sorted keys."""
    n = keys.shape[0]
    slices = _num_slices(parallel)
    firsts = np.zeros(slices + 1, np.int64)
    for s in prange(slices):
        lo, hi = _slice_bounds(n, slices, s)
        for i in range(lo, hi):
            if i == 0 or keys[i] != keys[i - 1]:
                firsts[s + 1] += 1
    for s in range(slices):
        firsts[s + 1] += firsts[s]
    rows = np.empty(firsts[slices], np.int64)
    starts = np.empty(firsts[slices] + 1, np.int64)
    starts[firsts[slices]] = n
    for s in prange(slices):
        lo, hi = _slice_bounds(n, slices, s)
        u = firsts[s]
        for i in range(lo, hi):
            if i == 0 or keys[i] != keys[i - 1]:
                rows[u] = keys[i]
                starts[u] = i
                u += 1
    return rows, starts


@njit_parallel  # calls parallel kernels: Numba must start its threads on entry
def group_rows(ids):
    """Group positions by id: (rows [U], starts [U+1], order [n]) int64.

    ``rows`` are the unique ids in increasing order; ``order[starts[u]:
    starts[u+1]]`` are the positions holding ``rows[u]``, ascending. A
    stable LSD radix sort on the id (ids >= 0; 2 passes for up to 16M rows):
    O(n) a pass, no comparison sort, parallel above ``PARALLEL_MIN_IDS``.
    Increasing rows also make the update kernels sweep the table in address
    order. Call it from Python or from a parallel kernel: a cached serial
    kernel calling it crashes when Numba's threads are not yet started.
    """
    n = ids.shape[0]
    parallel = n >= PARALLEL_MIN_IDS
    largest = np.max(ids) if n else 0
    bits = 1
    while (largest >> bits) > 0:
        bits += 1
    passes = (bits + _MAX_DIGIT_BITS - 1) // _MAX_DIGIT_BITS
    digit_bits = (bits + passes - 1) // passes
    keys, order = np.empty(n, np.int64), np.arange(n)
    next_keys, next_order = np.empty(n, np.int64), np.empty(n, np.int64)
    mask = (1 << digit_bits) - 1
    for p in range(passes):
        if p == 0:  # read the caller's ids (maybe read-only), never write them
            _radix_pass(next_keys, next_order, ids, order, 0, mask, parallel)
        else:
            _radix_pass(next_keys, next_order, keys, order, p * digit_bits, mask, parallel)
        keys, next_keys = next_keys, keys
        order, next_order = next_order, order
    rows, starts = _runs(keys, parallel)
    return rows, starts, order


@njit_inline
def summed_grad_row(out, grad, u):
    """In place: out [D] float32 = summed gradient of plan row u (see module)."""
    starts, src_index, src_coef, src, scale = grad[1], grad[2], grad[3], grad[4], grad[5]
    out[:] = 0.0
    for k in range(starts[u], starts[u + 1]):
        coef = src_coef[k]
        source = src[src_index[k]]
        for j in range(out.shape[0]):
            out[j] += coef * source[j]
    for j in range(out.shape[0]):
        out[j] *= scale


@njit_parallel
def summed_grad_rows(out, grad):
    """In place: out [U, D] float32, row u = summed gradient of plan row u."""
    for u in prange(out.shape[0]):
        summed_grad_row(out[u], grad, u)


@njit_parallel
def summed_grad_sq_norms(out, grad):
    """In place: out [U] float64 = squared L2 norm of each summed gradient row.

    Summed in float64 per row (a norm over millions of values); the rows are
    then added in a fixed order by the caller.
    """
    num_rows = out.shape[0]
    dim = grad[4].shape[1]
    for c in prange((num_rows + ROW_CHUNK - 1) // ROW_CHUNK):
        g = np.empty(dim, np.float32)
        for u in range(c * ROW_CHUNK, min(num_rows, (c + 1) * ROW_CHUNK)):
            summed_grad_row(g, grad, u)
            total = 0.0
            for j in range(dim):
                total += np.float64(g[j]) * np.float64(g[j])
            out[u] = total
