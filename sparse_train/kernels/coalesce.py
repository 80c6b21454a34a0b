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

from ._jit import (_num_threads, njit, njit_inline, njit_parallel, next_task, prange, row_buffer,
                   task_queue, tasks_done, workers)
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

#: Largest radix digit of the id sort: 4096 counters (32 KiB) stay in L1,
#: and ids below 2**24 (16M rows) take two passes.
_MAX_DIGIT_BITS = 12
#: Below this many ids, or on one thread, one thread does the whole grouping
#: without a parallel region (starting one costs tens of microseconds).
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


@njit
def use_threads(n):
    """Whether grouping ``n`` ids runs its parallel kernels: many ids, and
    more than one thread. Either way the result is the same."""
    return n >= PARALLEL_MIN_IDS and _num_threads() > 1


@njit
def digit_counts(key_bits, parallel):
    """Histograms of the id sort, [passes, slices, 2**digit_bits] int64
    (uninitialised), and digit_bits: the fewest passes of at most
    ``_MAX_DIGIT_BITS`` bits over ``key_bits`` id bits, digits as equal as
    possible (20-bit ids: 2 x 10; 24-bit: 2 x 12)."""
    passes = (key_bits + _MAX_DIGIT_BITS - 1) // _MAX_DIGIT_BITS
    digit_bits = (key_bits + passes - 1) // passes
    return np.empty((passes, _num_slices(parallel), 1 << digit_bits), np.int64), digit_bits


@njit_inline
def count_digits(counts, slice_index, key, shift, digit_bits, passes):
    """In place: counts [passes, slices, digits]: add ``key``'s digits of
    the first ``passes`` passes to slice ``slice_index`` (a constant
    ``passes`` unrolls the loop)."""
    mask = (1 << digit_bits) - 1
    for p in range(passes):
        counts[p, slice_index, (key >> (shift + p * digit_bits)) & mask] += 1


@njit_inline
def clear_counts(counts, slice_index, passes):
    """In place: zero slice ``slice_index`` of counts' first ``passes``
    passes, before a builder counts into it."""
    for p in range(passes):
        counts[p, slice_index, :] = 0


@njit
def _digit_starts(counts, n):
    """In place: counts [slices, digits] int64, a histogram -> where slice s
    writes its first key of each digit (digit-major, then slice order: a
    stable pass). Returns True when one digit holds all ``n`` keys: the pass
    would leave them in place."""
    total = 0
    constant = False
    for d in range(counts.shape[1]):
        digit_start = total
        for s in range(counts.shape[0]):
            count = counts[s, d]
            counts[s, d] = total
            total += count
        constant |= total - digit_start == n
    return constant


@njit_inline
def _scatter_digits(out, keys, lo, hi, next_pos, shift, mask):
    """In place: out [n], next_pos [digits] int64: keys[lo:hi] each to
    ``out[next_pos[digit]]``, in order, advancing next_pos. A run of keys of
    one digit (a hot id's keys lie together after the first pass) keeps its
    position in a register: re-reading the counter just stored would chain
    every key of the run on a store-to-load round trip."""
    if hi <= lo:
        return
    digit = (keys[lo] >> shift) & mask
    pos = next_pos[digit]
    for i in range(lo, hi):
        key = keys[i]
        d = (key >> shift) & mask
        if d != digit:
            next_pos[digit] = pos
            digit = d
            pos = next_pos[d]
        out[pos] = key
        pos += 1
    next_pos[digit] = pos


@njit_parallel
def _histogram_pass(counts, keys, shift, mask):
    """In place: counts [slices, digits] int64 = histogram of the digit
    ``(key >> shift) & mask`` over each slice of keys."""
    n = keys.shape[0]
    slices = counts.shape[0]
    queue = task_queue(slices)
    for worker in prange(workers(queue)):
        s = next_task(queue, worker)
        while s < slices:
            lo, hi = _slice_bounds(n, slices, s)
            slice_counts = counts[s]
            slice_counts[:] = 0
            for i in range(lo, hi):
                slice_counts[(keys[i] >> shift) & mask] += 1
            s = next_task(queue, worker)
    tasks_done(queue)


@njit_parallel
def _scatter_pass(out, keys, next_pos, shift, mask):
    """In place: out [n] int64 = keys stably sorted by the digit ``(key >>
    shift) & mask``; next_pos [slices, digits] int64 from ``_digit_starts``
    (advanced)."""
    n = keys.shape[0]
    slices = next_pos.shape[0]
    queue = task_queue(slices)
    for worker in prange(workers(queue)):
        s = next_task(queue, worker)
        while s < slices:
            lo, hi = _slice_bounds(n, slices, s)
            _scatter_digits(out, keys, lo, hi, next_pos[s], shift, mask)
            s = next_task(queue, worker)
    tasks_done(queue)


@njit_inline
def _count_runs(keys, lo, hi, tag_bits):
    """Keys in keys[lo:hi] whose id differs from the key before."""
    count = 0
    previous = keys[lo - 1] >> tag_bits if lo > 0 else -1
    for i in range(lo, hi):
        row = keys[i] >> tag_bits
        count += row != previous
        previous = row
    return count


@njit_inline
def _write_runs(rows, starts, tags, keys, lo, hi, u, tag_bits):
    """In place: tags[lo:hi] = the tags of keys[lo:hi]; each key whose id
    differs from the key before starts row u, u + 1, ..."""
    tag_mask = (np.int64(1) << tag_bits) - 1
    previous = keys[lo - 1] >> tag_bits if lo > 0 else -1
    for i in range(lo, hi):
        key = keys[i]
        row = key >> tag_bits
        tags[i] = key & tag_mask
        if row != previous:
            rows[u] = row
            starts[u] = i
            u += 1
        previous = row


@njit_parallel
def _unpack_runs(keys, tag_bits, slices):
    """(rows [U], starts [U+1], tags [n]) of packed keys sorted by id."""
    n = keys.shape[0]
    firsts = np.zeros(slices + 1, np.int64)
    queue = task_queue(slices)
    for worker in prange(workers(queue)):
        s = next_task(queue, worker)
        while s < slices:
            lo, hi = _slice_bounds(n, slices, s)
            firsts[s + 1] = _count_runs(keys, lo, hi, tag_bits)
            s = next_task(queue, worker)
    tasks_done(queue)
    for s in range(slices):
        firsts[s + 1] += firsts[s]
    num_rows = firsts[slices]
    rows = np.empty(num_rows, np.int64)
    starts = np.empty(num_rows + 1, np.int64)
    starts[num_rows] = n
    tags = np.empty(n, np.int64)
    queue = task_queue(slices)
    for worker in prange(workers(queue)):
        s = next_task(queue, worker)
        while s < slices:
            lo, hi = _slice_bounds(n, slices, s)
            _write_runs(rows, starts, tags, keys, lo, hi, firsts[s], tag_bits)
            s = next_task(queue, worker)
    tasks_done(queue)
    return rows, starts, tags


@njit
def _unpack_runs_serial(keys, tag_bits):
    """``_unpack_runs`` on the calling thread."""
    n = keys.shape[0]
    num_rows = _count_runs(keys, 0, n, tag_bits)
    rows = np.empty(num_rows, np.int64)
    starts = np.empty(num_rows + 1, np.int64)
    starts[num_rows] = n
    tags = np.empty(n, np.int64)
    _write_runs(rows, starts, tags, keys, 0, n, 0, tag_bits)
    return rows, starts, tags


@njit  # sequences parallel kernels (the pool is started in _jit)
def group_packed(keys, counts, digit_bits, tag_bits, parallel):
    """Group tagged ids: keys [n] int64 = ``id << tag_bits | tag`` in
    position order (ids >= 0; the id bits and digits from ``digit_counts``);
    consumed. counts: the ``digit_counts`` array the keys' builder filled
    with ``count_digits``: every pass's histogram of its one slice (serial),
    or the pass-0 histogram of each of the ``_SLICES`` equal slices of
    positions (``parallel``). Returns (rows [U], starts [U+1], tags [n]):
    unique ids in increasing order, and the tags of each id's positions in
    position order.

    A stable LSD radix sort on the id bits: a pass scatters the keys by one
    digit, keeping their order within a digit; a pass whose digit is the
    same for every key is skipped. Serial, the builder counted every pass's
    digits in its one read of the ids; in parallel, each pass after the
    first counts its slices first (a slice's share of each digit depends on
    the order the previous pass left)."""
    n = keys.shape[0]
    mask = (1 << digit_bits) - 1
    spare = np.empty(n, np.int64)
    for p in range(counts.shape[0]):
        shift = tag_bits + p * digit_bits
        if parallel and p > 0:
            _histogram_pass(counts[p], keys, shift, mask)
        if _digit_starts(counts[p], n):
            continue
        if parallel:
            _scatter_pass(spare, keys, counts[p], shift, mask)
        else:
            _scatter_digits(spare, keys, 0, n, counts[p, 0], shift, mask)
        keys, spare = spare, keys
    if parallel:
        return _unpack_runs(keys, tag_bits, _SLICES)
    return _unpack_runs_serial(keys, tag_bits)


@njit_inline
def _pack_range(keys, counts, ids, lo, hi, slice_index, pos_bits, digit_bits, passes):
    """In place: keys[i] = ``ids[i] << pos_bits | i`` for i in lo:hi,
    counted (``count_digits``) in slice ``slice_index``."""
    for i in range(lo, hi):
        key = (ids[i] << pos_bits) | i
        keys[i] = key
        count_digits(counts, slice_index, key, pos_bits, digit_bits, passes)


@njit_parallel
def _pack(keys, counts, ids, pos_bits, digit_bits):
    """In place: keys [n] int64 = ``ids[i] << pos_bits | i``, and counts
    (``digit_counts``, parallel) the pass-0 histogram of each slice."""
    n = ids.shape[0]
    slices = counts.shape[1]
    queue = task_queue(slices)
    for worker in prange(workers(queue)):
        s = next_task(queue, worker)
        while s < slices:
            lo, hi = _slice_bounds(n, slices, s)
            clear_counts(counts, s, 1)
            _pack_range(keys, counts, ids, lo, hi, s, pos_bits, digit_bits, 1)
            s = next_task(queue, worker)
    tasks_done(queue)


@njit
def _pack_serial(keys, counts, ids, pos_bits, digit_bits):
    """``_pack`` on the calling thread, counting every pass's digits (the
    common two passes unrolled)."""
    n, passes = ids.shape[0], counts.shape[0]
    clear_counts(counts, 0, passes)
    if passes == 2:
        _pack_range(keys, counts, ids, 0, n, 0, pos_bits, digit_bits, 2)
    else:
        _pack_range(keys, counts, ids, 0, n, 0, pos_bits, digit_bits, passes)


@njit  # sequences parallel kernels (the pool is started in _jit)
def group_rows(ids):
    """Group positions by id: (rows [U], starts [U+1], order [n]) int64.

    ``rows`` are the unique ids in increasing order; ``order[starts[u]:
    starts[u+1]]`` are the positions holding ``rows[u]``, ascending. A
    stable LSD radix sort of ``id << bits(n) | position`` packed in one
    int64 (``group_packed``; ids >= 0; 2 passes of up to 12-bit digits for
    up to 16M rows, 3 up to 64G): O(n) a pass, no comparison sort, parallel
    above ``PARALLEL_MIN_IDS`` on more than one thread. Increasing rows
    also make the update kernels sweep the table in address order. Ids too
    wide to pack with their positions (id * n >= 2**63, far beyond any
    table that fits in memory) raise ValueError.
    """
    n = ids.shape[0]
    if n == 0:
        return np.empty(0, np.int64), np.zeros(1, np.int64), np.empty(0, np.int64)
    key_bits = _bit_length(np.max(ids))
    pos_bits = _bit_length(n - 1)
    if key_bits + pos_bits > 63:
        raise ValueError("group_rows: ids must be below 2**(63 - bits(len(ids))), "
                         "about 5e11 rows for 16M ids")
    parallel = use_threads(n)
    counts, digit_bits = digit_counts(key_bits, parallel)
    keys = np.empty(n, np.int64)
    if parallel:
        _pack(keys, counts, ids, pos_bits, digit_bits)
    else:
        _pack_serial(keys, counts, ids, pos_bits, digit_bits)
    return group_packed(keys, counts, digit_bits, pos_bits, parallel)


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
