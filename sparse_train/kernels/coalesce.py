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
_MAX_DIGIT_BITS = 12


@njit
def group_rows(ids):
    """Group positions by id: (rows [U], starts [U+1], order [n]) int64.

    ``rows`` are the unique ids in increasing order; ``order[starts[u]:
    starts[u+1]]`` are the positions holding ``rows[u]``, ascending. O(n)
    per pass of a stable LSD radix sort on the id (ids >= 0; 2 passes for
    up to 16M rows), no comparison sort. Increasing rows also make the
    update kernels sweep the table in address order.
    """
    n = ids.shape[0]
    largest = 0
    for i in range(n):
        largest = max(largest, ids[i])
    bits = 1
    while (largest >> bits) > 0:
        bits += 1
    passes = (bits + _MAX_DIGIT_BITS - 1) // _MAX_DIGIT_BITS
    digit_bits = (bits + passes - 1) // passes
    mask = (1 << digit_bits) - 1
    keys, order = ids.copy(), np.arange(n)
    next_keys, next_order = np.empty(n, np.int64), np.empty(n, np.int64)
    counts = np.empty(mask + 2, np.int64)
    for p in range(passes):
        shift = p * digit_bits
        counts[:] = 0
        for i in range(n):
            counts[((keys[i] >> shift) & mask) + 1] += 1
        for d in range(mask + 1):
            counts[d + 1] += counts[d]
        for i in range(n):
            d = (keys[i] >> shift) & mask
            next_keys[counts[d]] = keys[i]
            next_order[counts[d]] = order[i]
            counts[d] += 1
        keys, next_keys = next_keys, keys
        order, next_order = next_order, order
    rows = np.empty(n, np.int64)
    starts = np.empty(n + 1, np.int64)
    num_unique = 0
    for i in range(n):
        if i == 0 or keys[i] != keys[i - 1]:
            rows[num_unique] = keys[i]
            starts[num_unique] = i
            num_unique += 1
    starts[num_unique] = n
    return rows[:num_unique].copy(), starts[:num_unique + 1].copy(), order


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
