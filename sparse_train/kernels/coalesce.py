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

#: Largest radix digit of the id sort: ids below 2**20 (1M rows) take two
#: passes of 10 bits, below 2**30 three (10M rows: 3 x 8 bits). A pass
#: scatters each key to one of 2**digit_bits places, and its cost grows
#: with the number of places far more than with the bytes (12-bit digits,
#: 2 passes up to 16M rows, until 2026-12-06): W1's 106k ids, one scatter
#: pass, 3.4 ns a key with 12-bit digits, 2.7 with 10, 1.2 with 8. Serial grouping of W1 (bag-
#: tagged, 1 thread, after a 64 MB sweep, both with the four-key scatter,
#: 2 x 12 -> 3 x 8 bits): 10M x 16 uniform 0.98-1.02 -> 0.77-0.79 ms, Zipf
#: 0.73-0.75 -> 0.78 (4-7% slower); 1M x 64's 20-bit ids are 2 x 10 either
#: way.
_MAX_DIGIT_BITS = 10
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

#: Slices of the ids the parallel grouping counts and partitions
#: (``group_ranges``): its result depends on neither this number nor the
#: thread count.
_SLICES = 8


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
    if passes == 3:  # (the loop below, for W1's 10M-row ids: 3x slower)
        low, middle = counts[first, slice_index], counts[first + 1, slice_index]
        high = counts[first + 2, slice_index]
        for i in range(lo, hi):
            row = ids[i] >> shift
            low[row & mask] += 1
            middle[(row >> digit_bits) & mask] += 1
            high[(row >> (2 * digit_bits)) & mask] += 1
        return
    for i in range(lo, hi):
        row = ids[i] >> shift
        for p in range(passes):
            counts[first + p, slice_index, (row >> (p * digit_bits)) & mask] += 1


@njit_inline
def _digit_counts(key_bits, slices):
    """(counts [passes, slices, 2**digit_bits] int64, uninitialised,
    digit_bits) of the id sort of ``key_bits`` bits: the fewest passes of
    at most ``_MAX_DIGIT_BITS`` bits, digits as equal as possible (20-bit
    ids: 2 x 10; 24-bit: 3 x 8)."""
    passes = (key_bits + _MAX_DIGIT_BITS - 1) // _MAX_DIGIT_BITS
    digit_bits = (key_bits + passes - 1) // passes
    return np.empty((passes, slices, 1 << digit_bits), np.int64), digit_bits


@njit_inline
def count_id_digits_serial(ids, key_bits):
    """The digits of the serial id sort and their histograms, counted in one
    read of the ids: (counts [passes, 1, 2**digit_bits] int64, digit_bits)
    (``_digit_counts``); counts[0] made into where the first pass writes
    each digit's first key (``_digit_starts``), for the builder of the
    first pass's keys."""
    counts, digit_bits = _digit_counts(key_bits, 1)
    _count_digits(counts, ids, 0, ids.shape[0], 0, 0, 0, digit_bits, counts.shape[0])
    _digit_starts(counts[0], ids.shape[0])
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
    first), four keys at a time: their four write heads are read before any
    is written back, and each key's place counts the keys before it in the
    four that share its digit, so the heads' store-to-load round trip
    chains once per four keys, not once per key. (After the first pass
    many of W1's Zipf keys share the digit of the key before: 54% in the
    second pass of 1M x 64's ids, 39% and 70% in the second and third of
    10M x 16's; a key at a time, each waited for the head its neighbour
    had just stored, and keeping a run's head in a register cost more in
    mispredicted branches. Serial grouping of W1, 1 thread: 4-9% faster
    on all four configs.) Writes are prefetched ``SCATTER_AHEAD`` keys
    ahead."""
    i = lo
    while i + 4 <= hi:
        k0, k1, k2, k3 = keys[i], keys[i + 1], keys[i + 2], keys[i + 3]
        d0, d1 = (k0 >> shift) & mask, (k1 >> shift) & mask
        d2, d3 = (k2 >> shift) & mask, (k3 >> shift) & mask
        p0, p1, p2, p3 = next_pos[d0], next_pos[d1], next_pos[d2], next_pos[d3]
        p1 += d1 == d0
        p2 += (d2 == d0) + (d2 == d1)
        p3 += (d3 == d0) + (d3 == d1) + (d3 == d2)
        # (a head shared by several of the four: the last store is the last key's)
        next_pos[d0] = p0 + 1
        next_pos[d1] = p1 + 1
        next_pos[d2] = p2 + 1
        next_pos[d3] = p3 + 1
        prefetch(out, p0 + SCATTER_AHEAD)
        prefetch(out, p1 + SCATTER_AHEAD)
        prefetch(out, p2 + SCATTER_AHEAD)
        prefetch(out, p3 + SCATTER_AHEAD)
        out[p0] = k0
        out[p1] = k1
        out[p2] = k2
        out[p3] = k3
        i += 4
    for j in range(i, hi):
        key = keys[j]
        d = (key >> shift) & mask
        pos = next_pos[d]
        next_pos[d] = pos + 1
        out[pos] = key


@njit_inline
def scatter_positions(out, ids, lo, hi, next_pos, shift, mask, tag_bits):
    """``scatter_digits`` of the keys ``ids[i] << tag_bits | i`` (a first
    pass tagging ids with their position)."""
    scatter_digits(out, ids, lo, hi, next_pos, shift, mask, tag_bits, lo, 1)


@njit_inline
def _write_runs(tags, rows, starts, keys, lo, hi, u, base, tag_bits):
    """In place: tags[lo:hi] = the tags of keys[lo:hi] (``(id - base) <<
    tag_bits | tag``, sorted by id; tags may be keys itself), and each key
    whose id differs from the key before (none before lo: lo starts a row)
    starts row u, u + 1, ...: rows[u] = its id, starts[u] = its position.
    Without a branch per key (a new row is a coin toss on skewed ids):
    every key writes row u, which only a new row advances, up to the last
    new row, written on its own (no write past the rows written). Returns
    the rows written."""
    if hi <= lo:
        return 0
    tag_mask = (np.int64(1) << tag_bits) - 1
    first = u
    last = hi - 1  # the last key of keys[lo:hi] that starts a row
    while last > lo and (keys[last] >> tag_bits) == (keys[last - 1] >> tag_bits):
        last -= 1
    previous = -1
    for i in range(lo, last):
        key = keys[i]
        row = key >> tag_bits
        tags[i] = key & tag_mask
        rows[u] = row + base
        starts[u] = i
        u += row != previous
        previous = row
    rows[u] = (keys[last] >> tag_bits) + base
    starts[u] = last
    for i in range(last, hi):
        tags[i] = keys[i] & tag_mask
    return u + 1 - first


@njit_inline
def _unpack_runs_serial(keys, tag_bits):
    """Split sorted tagged keys into runs of one id, on the calling thread,
    in one read of the keys (``_write_runs`` over the whole array, base 0):
    rows (the ids) and starts are written into arrays of n + 1 (as many rows
    as keys at most) and returned as their first U and U + 1 entries, and the
    keys are overwritten by their tags. Returns (rows, starts, tags). The
    n + 1 arrays are views (no count pass before, no copy after); with the
    branchless scatter, W1 grouping at 1 thread, medians of 3 alternated
    runs at load 1.7-2.2: Zipf 9-10% faster, uniform 4-14%."""
    n = keys.shape[0]
    rows = np.empty(n + 1, np.int64)
    starts = np.empty(n + 1, np.int64)
    u = _write_runs(keys, rows, starts, keys, 0, n, 0, 0, tag_bits)
    starts[u] = n
    return rows[:u], starts[:u + 1], keys


@njit_inline
def group_packed_serial(keys, spare, counts, digit_bits, tag_bits):
    """Group tagged ids on the calling thread: keys [n] int64 = ``id <<
    tag_bits | tag`` (ids >= 0, tags in position order), already through
    the sort's first pass (the builder's: stably by digit 0); spare [n]
    int64 scratch; both consumed. counts, digit_bits: from
    ``count_id_digits_serial``. Returns (rows [U], starts [U+1], tags [n]):
    unique ids in increasing order, and the tags of each id's positions in
    position order.

    A stable LSD radix sort on the id bits: a pass scatters the keys by one
    digit, keeping their order within a digit; a pass whose digit is the
    same for every key is skipped. ``count_id_digits_serial`` counted every
    pass's digits in its one read of the ids. (In parallel:
    ``group_ranges``.)"""
    keys = _lsd_passes(keys, spare, counts, 0, keys.shape[0], 1, digit_bits, tag_bits)
    return _unpack_runs_serial(keys, tag_bits)


@njit_inline
def _lsd_passes(keys, spare, counts, lo, hi, first, digit_bits, tag_bits):
    """The LSD passes ``first`` on of a stable radix sort of keys[lo:hi]
    int64 by the id bits above ``tag_bits``: pass p scatters the keys by
    digit p (``scatter_keys``) between keys and spare[lo:hi] (in turn),
    keeping their order within a digit; a pass whose digit is the same for
    every key is skipped. counts [passes, 1, digits] int64: each pass's
    histogram (``_count_digits``), made into write positions here. Returns
    the array (keys or spare) that holds the sorted keys."""
    n = hi - lo
    mask = (1 << digit_bits) - 1
    for p in range(first, counts.shape[0]):
        if _digit_starts(counts[p], n):
            continue
        next_pos = counts[p, 0]
        if lo > 0:
            for d in range(next_pos.shape[0]):
                next_pos[d] += lo
        scatter_keys(spare, keys, lo, hi, next_pos, tag_bits + p * digit_bits, mask)
        keys, spare = spare, keys
    return keys


#: Id ranges of the parallel grouping (``group_ranges``): each range is
#: sorted and unpacked as one task, so with more ranges than threads a
#: thread whose core is taken leaves its ranges to the others. The result
#: depends on neither this number nor the thread count.
_RANGES = 16
#: Bits of the top digit that cuts the ids into ranges (``_plan_ranges``).
_RANGE_DIGIT_BITS = 10


@njit_parallel
def _count_top_digits(counts, ids, shift, top_bits):
    """In place: counts [slices, 2**top_bits] int64, each of ``slices``
    equal slices of ids [n] int64 (``id >> shift`` below 2**top_bits): the
    histogram of its ``id >> shift``."""
    n = ids.shape[0]
    slices, digits = counts.shape
    one_pass = counts.reshape((1, slices, digits))
    queue = task_queue(slices)
    for worker in prange(workers(queue)):
        s = next_task(queue, worker)
        while s < slices:
            lo, hi = _slice_bounds(n, slices, s)
            _count_digits(one_pass, ids, lo, hi, s, 0, shift, top_bits, 1)
            s = next_task(queue, worker)
    tasks_done(queue)


class RangePlan(NamedTuple):
    """How ``group_ranges`` cuts its ids into ranges (``_plan_ranges``)."""
    range_of: np.ndarray  # [digits] int64: the range of each top digit
    bounds: np.ndarray    # [ranges + 1] int64: range q's keys go to bounds[q]:bounds[q+1]
    base: np.ndarray      # [ranges] int64: range q's smallest possible id
    bits: np.ndarray      # [ranges] int64: bits of id - base in range q
    next_pos: np.ndarray  # [slices, ranges] int64: where slice s writes its first key of q


@njit_inline
def _plan_ranges(counts, n, ranges, shift):
    """Cut the top digits (``id >> shift``) into ``ranges`` ranges of
    consecutive digits of about n / ranges keys each, from counts [slices,
    digits] int64 (``_count_top_digits``): a ``RangePlan``, slices writing
    in their order (a stable partition). A digit is never split, so a range
    may hold more keys (one hot digit) or none."""
    slices, digits = counts.shape
    range_of = np.empty(digits, np.int64)
    bounds = np.empty(ranges + 1, np.int64)
    first_digit = np.full(ranges + 1, digits, np.int64)
    bounds[0] = 0
    first_digit[0] = 0
    q = 0
    total = 0
    for d in range(digits):
        range_of[d] = q
        for s in range(slices):
            total += counts[s, d]
        if q < ranges - 1 and total * ranges >= (q + 1) * n:
            q += 1
            bounds[q] = total
            first_digit[q] = d + 1
    for r in range(q + 1, ranges + 1):
        bounds[r] = n
    base = np.empty(ranges, np.int64)
    bits = np.empty(ranges, np.int64)
    for r in range(ranges):
        base[r] = first_digit[r] << shift
        span = max(first_digit[r + 1] - first_digit[r], 1) << shift
        bits[r] = _bit_length(span - 1)
    next_pos = np.zeros((slices, ranges), np.int64)
    for s in range(slices):
        for d in range(digits):
            next_pos[s, range_of[d]] += counts[s, d]
    for r in range(ranges):
        pos = bounds[r]
        for s in range(slices):
            count = next_pos[s, r]
            next_pos[s, r] = pos
            pos += count
    return RangePlan(range_of, bounds, base, bits, next_pos)


@njit_inline
def _scatter_ranges(keys, ids, offsets, lo, hi, next_pos, plan, shift, tag_bits, by_bag):
    """In place: keys [n], next_pos [ranges] int64: the keys ``(ids[i] -
    base) << tag_bits | tag`` of i in lo:hi, each to ``keys[next_pos[q]]``,
    range q = ``plan.range_of[ids[i] >> shift]`` (base: ``plan.base[q]``),
    in order, advancing next_pos. The tag is the position i, or with
    ``by_bag`` the bag b of position i (``offsets[b] <= i < offsets[b +
    1]``)."""
    if hi <= lo:
        return
    range_of, base = plan.range_of, plan.base
    b = 0
    end = hi
    if by_bag:
        b = np.searchsorted(offsets, lo, side="right") - 1  # the bag of position lo
        end = offsets[b + 1]
    for i in range(lo, hi):
        tag = i
        if by_bag:
            while i == end:  # (a loop: empty bags)
                b += 1
                end = offsets[b + 1]
            tag = b
        row = ids[i]
        q = range_of[row >> shift]
        pos = next_pos[q]
        next_pos[q] = pos + 1
        keys[pos] = ((row - base[q]) << tag_bits) | tag


@njit_parallel
def _partition_ranges(keys, ids, offsets, plan, shift, tag_bits, by_bag):
    """In place: keys [n] int64 = the tagged keys of ids [n] int64, stably
    partitioned by range (``_scatter_ranges`` on each slice of
    ``_count_top_digits``; plan from ``_plan_ranges``)."""
    n = ids.shape[0]
    slices = plan.next_pos.shape[0]
    queue = task_queue(slices)
    for worker in prange(workers(queue)):
        s = next_task(queue, worker)
        while s < slices:
            lo, hi = _slice_bounds(n, slices, s)
            # (the slice's write heads copied to memory of the task's own: rows of
            # next_pos share cache lines, and every key advances a head; shared,
            # the partition at 2 threads was 2x slower than at 1)
            _scatter_ranges(keys, ids, offsets, lo, hi, plan.next_pos[s].copy(), plan, shift,
                            tag_bits, by_bag)
            s = next_task(queue, worker)
    tasks_done(queue)


@njit_inline
def _sort_range(keys, spare, rows, starts, lo, hi, key_bits, base, tag_bits):
    """In place: keys[lo:hi] int64 (``(id - base) << tag_bits | tag``, ids
    - base below 2**key_bits, tags in position order), stably sorted by id
    with the LSD passes of ``group_packed_serial`` (``_lsd_passes``, every
    pass's digits counted in one read; spare[lo:hi] the scratch), then
    unpacked: keys[lo:hi] = the tags, rows and starts from lo on = the
    range's rows (ids) and where each starts (``_write_runs``). Returns the
    rows written."""
    n = hi - lo
    if n <= 0:
        return 0
    counts, digit_bits = _digit_counts(key_bits, 1)
    _count_digits(counts, keys, lo, hi, 0, 0, tag_bits, digit_bits, counts.shape[0])
    sorted_keys = _lsd_passes(keys, spare, counts, lo, hi, 0, digit_bits, tag_bits)
    return _write_runs(keys, rows, starts, sorted_keys, lo, hi, lo, base, tag_bits)


@njit_parallel
def _sort_ranges(keys, spare, rows, starts, runs, plan, tag_bits):
    """In place: each range q of keys (positions plan.bounds[q]:bounds[q+1])
    sorted and unpacked by ``_sort_range``; runs [ranges] int64 = its rows."""
    bounds = plan.bounds
    ranges = bounds.shape[0] - 1
    queue = task_queue(ranges)
    for worker in prange(workers(queue)):
        q = next_task(queue, worker)
        while q < ranges:
            runs[q] = _sort_range(keys, spare, rows, starts, bounds[q], bounds[q + 1],
                                  plan.bits[q], plan.base[q], tag_bits)
            q = next_task(queue, worker)
    tasks_done(queue)


@njit_parallel
def _gather_ranges(rows, starts, range_rows, range_starts, bounds, firsts):
    """In place: rows [U], starts [U] int64 = each range q's rows and starts
    (range_rows, range_starts [n] from position bounds[q] on), laid end to
    end from firsts[q] on."""
    ranges = bounds.shape[0] - 1
    queue = task_queue(ranges)
    for worker in prange(workers(queue)):
        q = next_task(queue, worker)
        while q < ranges:
            lo, first = bounds[q], firsts[q]
            for j in range(firsts[q + 1] - first):
                rows[first + j] = range_rows[lo + j]
                starts[first + j] = range_starts[lo + j]
            q = next_task(queue, worker)
    tasks_done(queue)


@njit  # sequences parallel kernels (the pool is started in _jit)
def group_ranges(ids, offsets, key_bits, tag_bits, by_bag):
    """The parallel grouping: (rows [U], starts [U+1], tags [n]) int64 as
    ``group_packed_serial`` returns them, for ids [n] int64 (n > 0, below
    2**key_bits) tagged with their positions, or with ``by_bag`` with their
    bags (offsets [B+1]), ``id << tag_bits | tag`` fitting in 63 bits.

    Four parallel regions, the fewest that leave each thread work of its
    own: (1) each slice of the ids counts its top digits (``id >> (key_bits -
    _RANGE_DIGIT_BITS)``), which cut the ids into ``_RANGES`` ranges of
    about equal counts; (2) each slice writes its tagged keys to their
    range, in order (a stable partition: each range's keys stay in position
    order); (3) each range is sorted and unpacked on its own by the serial
    LSD passes, on the bits of id - the range's first id (fewer and
    smaller digits), its keys and counters in the thread's cache; (4) the
    ranges' rows are laid end to end. Ranges hold disjoint ids in
    increasing order, so their rows, end to end, are the sorted unique ids,
    and each id's tags are in position order: the very result of the
    serial sort, for any thread count.

    (The LSD sort it replaced ran every pass over all slices: two regions
    a pass, and its scatter, with 8 slices x 4096 digits of write heads,
    missed the cache on most writes. On W1's 106k ids at 2 threads it was
    1.4-1.7x slower than the serial sort at 1 thread.)"""
    n = ids.shape[0]
    top_bits = min(_RANGE_DIGIT_BITS, key_bits)
    shift = key_bits - top_bits
    counts = np.empty((_SLICES, 1 << top_bits), np.int64)
    _count_top_digits(counts, ids, shift, top_bits)
    plan = _plan_ranges(counts, n, _RANGES, shift)
    keys = np.empty(n, np.int64)
    _partition_ranges(keys, ids, offsets, plan, shift, tag_bits, by_bag)
    range_rows = np.empty(n, np.int64)
    range_starts = np.empty(n, np.int64)
    firsts = np.zeros(_RANGES + 1, np.int64)
    _sort_ranges(keys, np.empty(n, np.int64), range_rows, range_starts, firsts[1:], plan,
                 tag_bits)
    for q in range(_RANGES):
        firsts[q + 1] += firsts[q]
    num_rows = firsts[_RANGES]
    rows = np.empty(num_rows, np.int64)
    starts = np.empty(num_rows + 1, np.int64)
    starts[num_rows] = n
    _gather_ranges(rows, starts, range_rows, range_starts, plan.bounds, firsts)
    return rows, starts, keys


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
    int64 (``group_packed_serial``; ids >= 0; 2 passes of up to 10-bit digits for
    up to 1M rows, 3 up to 1G): O(n) a pass, no comparison sort; from
    ``PARALLEL_MIN_IDS`` ids on more than one thread, ``group_ranges``
    (the same result). Increasing rows
    also make the update kernels sweep the table in address order. Ids too
    wide to pack with their positions (id * n >= 2**63, far beyond any
    table that fits in memory) raise ValueError.
    """
    n = ids.shape[0]
    parallel = use_threads(n)
    if not parallel:
        return group_rows_serial(ids)
    key_bits, pos_bits = _packing_bits(ids)
    return group_ranges(ids, np.empty(0, np.int64), key_bits, pos_bits, False)


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
