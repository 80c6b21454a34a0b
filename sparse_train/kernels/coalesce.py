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

from ._jit import (_num_threads, _team_state_add, borrowed, njit, njit_inline, njit_parallel,
                   next_task, prange, row_buffer, task_queue, tasks_done, workers)
from .prefetch import prefetch
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


@njit_inline
def borrowed_plan(plan):
    """``plan`` with its arrays ``_jit.borrowed`` (for a serial twin's loop;
    the caller's plan keeps them alive)."""
    return GradPlan(borrowed(plan.rows), borrowed(plan.starts), borrowed(plan.src_index),
                    borrowed(plan.src_coef), borrowed(plan.src), plan.scale)


#: Rows handled by one parallel task (one gradient buffer per task).
ROW_CHUNK = 64

#: Largest radix digit of the id sort: 4096 counters (32 KiB) stay in L1,
#: and ids below 2**24 (16M rows) take two passes.
_MAX_DIGIT_BITS = 12
#: Below this many ids, or on one thread, one thread does the whole grouping
#: without a parallel region (starting one costs tens of microseconds).
PARALLEL_MIN_IDS = 1 << 15


#: A scatter pass prefetches (for writing) the key this many places after
#: the one it writes in the same digit, the digit's next cache line: in a
#: training step the table rows have evicted the sort's arrays, and a write
#: to a line not in cache stalls. Measured on W1 after a lookup and an
#: update (grouping alone, 1 thread, load 6): 1.11-1.31x faster on the four
#: configs (1M x 64 uniform 1.46 -> 1.11 ms); 16 ahead gained on 1M x 64
#: only; 5-10% slower when the arrays are still in cache. (A prefetch past
#: the array's end is harmless: prefetches never fault.)
SCATTER_AHEAD = 8

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
def _int(x):
    """``x`` as a plain int64 argument: a constant argument of a call from
    one kernel to another is typed as a literal, and would compile the
    callee once more for it."""
    return np.int64(x)


@njit_inline
def _bit_length(x):
    """Bits needed for x >= 0 (at least 1)."""
    bits = 1
    while (x >> bits) > 0:
        bits += 1
    return bits


@njit
def use_threads(n):
    """Whether grouping ``n`` ids runs its parallel kernels: many ids, more
    than one thread, and parallel regions not running alone for now (the
    helpers were late: another process holds a core, ``_jit.task_queue``);
    alone, the serial sort does less work (it counts every pass's digits
    in one read). Either way the result is the same."""
    return n >= PARALLEL_MIN_IDS and _num_threads() > 1 and _team_state_add(0, 0) <= 0


@njit_inline
def _count_digits(counts, ids, lo, hi, slice_index, first, shift, digit_bits, passes):
    """In place: counts [passes, slices, digits] int64, slice
    ``slice_index`` of passes first:first + passes = histograms of the
    digits of ``ids[lo:hi] >> shift`` (pass first + p: bits p * digit_bits
    up), in one read; the common two passes unrolled."""
    mask = (1 << digit_bits) - 1
    for p in range(first, first + passes):
        counts[p, slice_index, :] = 0
    if passes == 2:
        low, high = counts[first, slice_index], counts[first + 1, slice_index]
        for i in range(lo, hi):
            row = ids[i] >> shift
            low[row & mask] += 1
            high[(row >> digit_bits) & mask] += 1
        return
    for i in range(lo, hi):
        row = ids[i] >> shift
        for p in range(passes):
            counts[first + p, slice_index, (row >> (p * digit_bits)) & mask] += 1


@njit_inline
def _digit_counts(key_bits, slices):
    """(counts [passes, slices, 2**digit_bits] int64, uninitialised,
    digit_bits) of the id sort of ``key_bits`` bits (``count_id_digits``)."""
    passes = (key_bits + _MAX_DIGIT_BITS - 1) // _MAX_DIGIT_BITS
    digit_bits = (key_bits + passes - 1) // passes
    return np.empty((passes, slices, 1 << digit_bits), np.int64), digit_bits


@njit_inline
def count_id_digits_serial(ids, key_bits):
    """``count_id_digits`` on one slice, in one read of the ids (no
    parallel kernel under it)."""
    counts, digit_bits = _digit_counts(key_bits, 1)
    _count_digits(counts, ids, 0, ids.shape[0], 0, 0, 0, digit_bits, counts.shape[0])
    _digit_starts(counts[0], ids.shape[0])
    return counts, digit_bits


@njit  # sequences parallel kernels (the pool is started in _jit)
def count_id_digits(ids, key_bits, parallel):
    """The digits of the id sort and their histograms: (counts [passes,
    slices, 2**digit_bits] int64, digit_bits). The fewest passes of at
    most ``_MAX_DIGIT_BITS`` bits over ``key_bits`` id bits, digits as
    equal as possible (20-bit ids: 2 x 10; 24-bit: 2 x 12). counts[0] is
    where each of the ``_SLICES`` equal slices of positions (parallel;
    else one) writes its first key of each digit in the first pass
    (``_digit_starts``). Serial, counts[1:] are the histograms of the
    later passes, counted in the same read of the ids; in parallel, later
    passes count their own input (a slice's share of each digit depends
    on the order the pass before left)."""
    if not parallel:
        return count_id_digits_serial(ids, key_bits)
    counts, digit_bits = _digit_counts(key_bits, _SLICES)
    zero = _int(0)
    unused = np.empty(0, np.int64)  # (no scatter)
    _radix_pass(unused, ids, counts, zero, zero, digit_bits, zero, zero, _int(1), zero)
    return counts, digit_bits


@njit_inline
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
def scatter_digits(out, keys, lo, hi, next_pos, shift, mask, tag_bits, tag, step):
    """In place: out [n], next_pos [digits] int64: the keys ``keys[i] <<
    tag_bits | (tag + (i - lo) * step)`` of i in lo:hi (so keys[lo:hi]
    themselves with zeros; tagged ids in a first pass), each to
    ``out[next_pos[digit]]``, digit ``(key >> shift) & mask``, in order,
    advancing next_pos. A run of keys of one digit (a hot id's keys lie
    together after the first pass) keeps its position in a register:
    re-reading the counter just stored would chain every key of the run on
    a store-to-load round trip. Writes are prefetched ``SCATTER_AHEAD``
    keys ahead."""
    if hi <= lo:
        return
    digit = ((keys[lo] << tag_bits) >> shift) & mask
    pos = next_pos[digit]
    for i in range(lo, hi):
        key = (keys[i] << tag_bits) | (tag + (i - lo) * step)
        d = (key >> shift) & mask
        if d != digit:
            next_pos[digit] = pos
            digit = d
            pos = next_pos[d]
        prefetch(out, pos + SCATTER_AHEAD)
        out[pos] = key
        pos += 1
    next_pos[digit] = pos


@njit_inline
def scatter_keys(out, keys, lo, hi, next_pos, shift, mask):
    """``scatter_digits`` of keys[lo:hi] themselves (a serial pass after the
    first), without its runs in a register: after the first pass about 55-60% of
    W1's Zipf keys share the digit of the key before (a coin toss for the
    run's branch), and the counter's store-to-load round trip costs less
    than the mispredictions (W1 Zipf, grouping at 1 thread: 2-4% faster;
    uniform the same within noise)."""
    for i in range(lo, hi):
        key = keys[i]
        d = (key >> shift) & mask
        pos = next_pos[d]
        next_pos[d] = pos + 1
        prefetch(out, pos + SCATTER_AHEAD)
        out[pos] = key


@njit_inline
def scatter_positions(out, ids, lo, hi, next_pos, shift, mask, tag_bits):
    """``scatter_digits`` of the keys ``ids[i] << tag_bits | i`` (a first
    pass tagging ids with their position)."""
    scatter_digits(out, ids, lo, hi, next_pos, shift, mask, tag_bits, lo, 1)


@njit_parallel
def _radix_pass(out, keys, counts, pass_index, shift, digit_bits, tag_bits, step, count,
                scatter):
    """One pass of the parallel id sort, over ``_SLICES`` equal slices of
    keys [n] int64: with ``count``, counts[pass_index] [slices, digits]
    int64 = each slice's histogram of the digit ``(key >> shift) & (2**
    digit_bits - 1)``, made into ``_digit_starts``; with ``scatter``, out
    [n] int64 = the keys themselves (``step`` 0), or ids tagged with their
    position, ``keys[i] << tag_bits | i`` (``step`` 1, a first pass),
    stably sorted by that digit (``scatter_digits``; counts[pass_index]
    advanced), unless a later pass's digit is the same for every key.
    Returns whether out was written. (The digit of a tagged key is counted
    on the id: bits ``shift - tag_bits`` up.)"""
    n = keys.shape[0]
    slices = counts.shape[1]
    mask = (1 << digit_bits) - 1
    if count:
        queue = task_queue(slices)
        for worker in prange(workers(queue)):
            s = next_task(queue, worker)
            while s < slices:
                lo, hi = _slice_bounds(n, slices, s)
                _count_digits(counts, keys, lo, hi, s, pass_index, shift - tag_bits, digit_bits,
                              _int(1))
                s = next_task(queue, worker)
        tasks_done(queue)
        if _digit_starts(counts[pass_index], n) and step == 0:
            return False
    if not scatter:
        return False
    queue = task_queue(slices)
    for worker in prange(workers(queue)):
        s = next_task(queue, worker)
        while s < slices:
            lo, hi = _slice_bounds(n, slices, s)
            if step:
                scatter_positions(out, keys, lo, hi, counts[pass_index, s], shift, mask, tag_bits)
            else:
                # (runs kept in a register: short slices, measured no faster without)
                scatter_digits(out, keys, lo, hi, counts[pass_index, s], shift, mask, _int(0),
                               _int(0), _int(0))
            s = next_task(queue, worker)
    tasks_done(queue)
    return True


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
def _write_runs(rows, starts, keys, lo, hi, u, previous, tag_bits):
    """In place: keys[lo:hi] = their tags; each key whose id differs from
    the key before (id ``previous`` before lo; -1: none) starts row u, u +
    1, ... Without a branch per key (a new row is a coin toss on skewed
    ids): every key writes row u, which only a new row advances, up to
    this slice's last new row, written on its own (a later write could land
    on another slice's row)."""
    tag_mask = (np.int64(1) << tag_bits) - 1
    last = hi - 1  # the last key of keys[lo:hi] that starts a row, if any
    while last > lo and (keys[last] >> tag_bits) == (keys[last - 1] >> tag_bits):
        last -= 1
    if hi > lo and (last > lo or (keys[lo] >> tag_bits) != previous):
        for i in range(lo, last):
            key = keys[i]
            row = key >> tag_bits
            keys[i] = key & tag_mask
            rows[u] = row
            starts[u] = i
            u += row != previous
            previous = row
        rows[u] = keys[last] >> tag_bits
        starts[u] = last
    for i in range(max(lo, last), hi):
        keys[i] &= tag_mask


@njit_parallel
def _unpack_runs(keys, tag_bits, slices):
    """(rows [U], starts [U+1], tags [n]) of packed keys sorted by id; the
    tags replace the keys (the array is returned as tags)."""
    n = keys.shape[0]
    firsts = np.zeros(slices + 1, np.int64)
    before = np.empty(slices, np.int64)  # the id before each slice
    queue = task_queue(slices)
    for worker in prange(workers(queue)):
        s = next_task(queue, worker)
        while s < slices:
            lo, hi = _slice_bounds(n, slices, s)
            firsts[s + 1] = _count_runs(keys, lo, hi, tag_bits)
            before[s] = keys[lo - 1] >> tag_bits if 0 < lo <= n else -1
            s = next_task(queue, worker)
    tasks_done(queue)
    for s in range(slices):
        firsts[s + 1] += firsts[s]
    num_rows = firsts[slices]
    rows = np.empty(num_rows, np.int64)
    starts = np.empty(num_rows + 1, np.int64)
    starts[num_rows] = n
    queue = task_queue(slices)
    for worker in prange(workers(queue)):
        s = next_task(queue, worker)
        while s < slices:
            lo, hi = _slice_bounds(n, slices, s)
            _write_runs(rows, starts, keys, lo, hi, firsts[s], before[s], tag_bits)
            s = next_task(queue, worker)
    tasks_done(queue)
    return rows, starts, keys


@njit_inline
def _unpack_runs_serial(keys, tag_bits):
    """``_unpack_runs`` on the calling thread, in one read of the keys: rows
    and starts are written into arrays of n + 1 (as many rows as keys at
    most) and returned as their first U and U + 1 entries (views: no count
    pass before, no copy after; with the branchless scatter, W1 grouping
    at 1 thread, medians of 3 alternated runs at load 1.7-2.2: Zipf 9-10%
    faster, uniform 4-14%)."""
    n = keys.shape[0]
    tag_mask = (np.int64(1) << tag_bits) - 1
    rows = np.empty(n + 1, np.int64)
    starts = np.empty(n + 1, np.int64)
    u = 0
    previous = -1
    for i in range(n):  # as _write_runs: row u is rewritten until a new row advances u
        key = keys[i]
        row = key >> tag_bits
        keys[i] = key & tag_mask
        rows[u] = row
        starts[u] = i
        u += row != previous
        previous = row
    starts[u] = n
    return rows[:u], starts[:u + 1], keys


@njit_inline
def group_packed_serial(keys, spare, counts, digit_bits, tag_bits):
    """``group_packed`` on the calling thread (no parallel kernel under it)."""
    n = keys.shape[0]
    mask = (1 << digit_bits) - 1
    for p in range(1, counts.shape[0]):
        if _digit_starts(counts[p], n):
            continue
        scatter_keys(spare, keys, 0, n, counts[p, 0], tag_bits + p * digit_bits, mask)
        keys, spare = spare, keys
    return _unpack_runs_serial(keys, tag_bits)


@njit  # sequences parallel kernels (the pool is started in _jit)
def group_packed(keys, spare, counts, digit_bits, tag_bits, parallel):
    """Group tagged ids: keys [n] int64 = ``id << tag_bits | tag`` (ids >= 0,
    tags in position order), already through the sort's first pass (the
    builder's: stably by digit 0); spare [n] int64 scratch; both consumed.
    counts, digit_bits: from ``count_id_digits``. Returns (rows [U], starts
    [U+1], tags [n]): unique ids in increasing order, and the tags of each
    id's positions in position order.

    A stable LSD radix sort on the id bits: a pass scatters the keys by one
    digit, keeping their order within a digit; a pass whose digit is the
    same for every key is skipped. Serial, ``count_id_digits`` counted every
    pass's digits in its one read of the ids; in parallel, each pass after
    the first counts its slices first (a slice's share of each digit
    depends on the order the previous pass left)."""
    if not parallel:
        return group_packed_serial(keys, spare, counts, digit_bits, tag_bits)
    zero, one = _int(0), _int(1)
    for p in range(1, counts.shape[0]):
        if _radix_pass(spare, keys, counts, _int(p), tag_bits + p * digit_bits, digit_bits,
                       zero, zero, one, one):
            keys, spare = spare, keys
    return _unpack_runs(keys, tag_bits, _SLICES)


@njit_inline
def _max_id(ids):
    """Largest of ids [n] int64 (n > 0); a loop, not ``np.max`` (the same
    value; np.max's implementation compiled 0.2 s more on a first run)."""
    high = ids[0]
    for i in range(1, ids.shape[0]):
        high = max(high, ids[i])
    return high


@njit_inline
def _packing_bits(ids):
    """(key_bits, pos_bits) of ``group_rows``'s keys ``id << pos_bits |
    position`` for ids [n] int64, n > 0; ValueError when they need more
    than 63 bits."""
    key_bits = _bit_length(_max_id(ids))
    pos_bits = _bit_length(ids.shape[0] - 1)
    if key_bits + pos_bits > 63:
        raise ValueError("group_rows: ids must be below 2**(63 - bits(len(ids))), "
                         "about 5e11 rows for 16M ids")
    return key_bits, pos_bits


@njit_inline
def group_rows_serial(ids):
    """``group_rows`` on the calling thread, with no parallel kernel under
    it (the same result): what ``group_rows`` runs below
    ``PARALLEL_MIN_IDS``, and what a serial kernel calls (it never
    compiles the parallel passes)."""
    n = ids.shape[0]
    if n == 0:
        return np.empty(0, np.int64), np.zeros(1, np.int64), np.empty(0, np.int64)
    key_bits, pos_bits = _packing_bits(ids)
    counts, digit_bits = count_id_digits_serial(ids, key_bits)
    keys = np.empty(n, np.int64)
    scatter_positions(keys, ids, 0, n, counts[0, 0], pos_bits, (1 << digit_bits) - 1,
                      pos_bits)
    return group_packed_serial(keys, np.empty(n, np.int64), counts, digit_bits, pos_bits)


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
    parallel = use_threads(n)
    if not parallel:
        return group_rows_serial(ids)
    key_bits, pos_bits = _packing_bits(ids)
    counts, digit_bits = count_id_digits(ids, key_bits, parallel)
    keys = np.empty(n, np.int64)
    zero, one = _int(0), _int(1)
    _radix_pass(keys, ids, counts, zero, pos_bits, digit_bits, pos_bits, one, zero, one)
    return group_packed(keys, np.empty(n, np.int64), counts, digit_bits, pos_bits, parallel)


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
