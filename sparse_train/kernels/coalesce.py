"""Grouping duplicate row ids in O(n), and the summed-gradient plan.

A row-sparse gradient reaches an update kernel as a *plan*, a tuple

    grad = (rows, starts, src_index, src_coef, src, scale)

    rows      [U] int64     unique row ids, in order of first appearance
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

_FIBONACCI = np.uint64(11400714819323198485)  # 2**64 / golden ratio


@njit
def group_rows(ids):
    """Group positions by id: (rows [U], starts [U+1], order [n]) int64.

    ``rows`` are the unique ids in order of first appearance; ``order[starts[u]:
    starts[u+1]]`` are the positions holding ``rows[u]``, ascending. O(n):
    an open-addressing hash table (ids must be >= 0), then a counting sort.
    """
    n = ids.shape[0]
    bits = 4
    while (1 << bits) < 2 * n:
        bits += 1
    mask = (1 << bits) - 1
    shift = np.uint64(64 - bits)
    keys = np.full(1 << bits, -1, np.int64)
    slot_of_key = np.empty(1 << bits, np.int64)
    inverse = np.empty(n, np.int64)
    rows = np.empty(n, np.int64)
    counts = np.zeros(n + 1, np.int64)
    num_unique = 0
    for i in range(n):
        key = ids[i]
        h = np.int64((np.uint64(key) * _FIBONACCI) >> shift)
        while keys[h] != -1 and keys[h] != key:
            h = (h + 1) & mask
        if keys[h] == -1:
            keys[h] = key
            slot_of_key[h] = num_unique
            rows[num_unique] = key
            num_unique += 1
        u = slot_of_key[h]
        inverse[i] = u
        counts[u + 1] += 1
    starts = np.empty(num_unique + 1, np.int64)
    starts[0] = 0
    for u in range(num_unique):
        starts[u + 1] = starts[u] + counts[u + 1]
    fill = starts[:num_unique].copy()
    order = np.empty(n, np.int64)
    for i in range(n):
        u = inverse[i]
        order[fill[u]] = i
        fill[u] += 1
    return rows[:num_unique].copy(), starts, order


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
