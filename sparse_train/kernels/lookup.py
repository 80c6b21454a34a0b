"""Embedding-bag forward and the plan of its backward (SPEC section 3).

Combiner codes: SUM = 0, MEAN = 1, SQRTN = 2. ``padding_idx`` is -1 when the
table has none (ids are validated >= 0, so -1 never matches). ``weights`` is
an empty array when ``has_weights`` is False.
"""
import numpy as np

from ._jit import (borrowed, njit, njit_inline, njit_parallel, njit_serial_twin, next_task, prange,
                   row_buffer_or, task_queue, tasks_done, workers)
from .coalesce import (SCATTER_AHEAD, _bit_length, _int, _max_id, count_id_digits_serial,
                       group_packed_serial, group_ranges, group_rows, group_rows_serial,
                       use_threads)
from .prefetch import LOOKUP_AHEAD, prefetch, prefetch_row_read
from .rows import row_add, row_axpy, row_divide, row_fill, row_store

SUM, MEAN, SQRTN = 0, 1, 2

#: Bags, and ids, a parallel task handles (``_jit.task_queue``).
BAG_TASK = 32
ID_TASK = 4096


@njit_inline
def bag_divisor(values, weights, has_weights, start, end, combiner, padding_idx):
    """float32 divisor of one bag: 1 (sum), sum w (mean), sqrt(sum w^2) (sqrtn).

    Padding ids are left out; the sum runs in position order.
    """
    if combiner == SUM:
        return np.float32(1.0)
    total = np.float32(0.0)
    for i in range(start, end):
        if values[i] == padding_idx:
            continue
        w = weights[i] if has_weights else np.float32(1.0)
        total += w if combiner == MEAN else w * w
    if combiner == SQRTN:
        total = np.sqrt(total)
    return total


@njit_inline
def _forward_bags(out, weight, values, offsets, weights, has_weights, combiner, padding_idx,
                  dim, lo, hi):
    """In place: rows lo:hi of out, as ``embedding_bag_forward`` (each bag
    sums ``w_i * e_i`` in position order, then divides by its divisor)."""
    last = values.shape[0] - 1
    for b in range(lo, hi):
        row = out[b]
        acc = row_buffer_or(row, dim)
        row_fill(acc, np.float32(0.0), dim)
        start, end = offsets[b], offsets[b + 1]
        divisor = bag_divisor(values, weights, has_weights, start, end,
                              combiner, padding_idx)
        if divisor != 0.0:
            if has_weights or padding_idx >= 0:
                for i in range(start, end):
                    prefetch_row_read(weight, values[min(i + LOOKUP_AHEAD, last)], dim)
                    index = values[i]
                    if index == padding_idx:
                        continue
                    if has_weights:
                        row_axpy(acc, weight, index * dim, weights[i], dim)
                    else:
                        row_add(acc, weight, index * dim, dim)
            else:  # the common case, in its own tight loop
                for i in range(start, end):
                    prefetch_row_read(weight, values[min(i + LOOKUP_AHEAD, last)], dim)
                    row_add(acc, weight, values[i] * dim, dim)
            if combiner != SUM:
                row_divide(acc, divisor, dim)
        row_store(out, b * dim, acc, dim)


@njit_parallel
def embedding_bag_forward(out, weight, values, offsets, weights, has_weights,
                          combiner, padding_idx, dim):
    """In place: out [B, D] float32, row b = combined rows of bag b.

    weight [V, D] float32; values [n] int64; offsets [B+1] int64; weights [n]
    float32 or empty; dim = D (``_jit.row_dim``). A bag that is empty, all
    padding, or has a zero divisor gives zeros. Parallel over bags; each bag
    sums ``w_i * e_i`` in position order (without weights ``e_i``, the same
    bits as ``1 * e_i``), then divides by its divisor (vector code: ``rows``).
    """
    num_items = out.shape[0]
    num_tasks = (num_items + BAG_TASK - 1) // BAG_TASK
    queue = task_queue(num_tasks)
    for worker in prange(workers(queue)):
        task = next_task(queue, worker)
        while task < num_tasks:
            _forward_bags(out, weight, values, offsets, weights, has_weights, combiner,
                          padding_idx, dim, task * BAG_TASK,
                          min(num_items, (task + 1) * BAG_TASK))
            task = next_task(queue, worker)
    tasks_done(queue)


@njit_serial_twin
def embedding_bag_forward_serial(out, weight, values, offsets, weights, has_weights,
                                 combiner, padding_idx, dim):
    """``embedding_bag_forward`` on the calling thread (the same bits: each
    bag is computed alone, in the same order); for small batches
    (``_jit.by_work``), and compiles in a fraction of the parallel kernel's
    time. Arrays ``borrowed``: no reference counts on each bag's row view.
    """
    _forward_bags(borrowed(out), borrowed(weight), borrowed(values), borrowed(offsets),
                  borrowed(weights), has_weights, combiner, padding_idx, dim, 0, out.shape[0])


@njit_inline
def _bag_coefficients_of(bag_of, coef, dropped, values, offsets, weights, has_weights,
                         combiner, padding_idx, lo, hi):
    """``_bag_coefficients`` of bags lo:hi."""
    for b in range(lo, hi):
        start, end = offsets[b], offsets[b + 1]
        divisor = bag_divisor(values, weights, has_weights, start, end,
                              combiner, padding_idx)
        for i in range(start, end):
            bag_of[i] = b
            w = weights[i] if has_weights else np.float32(1.0)
            coef[i] = w if combiner == SUM else w / divisor
            if divisor == 0.0 or values[i] == padding_idx:
                dropped[b] += 1


@njit_parallel
def _bag_coefficients(bag_of, coef, dropped, values, offsets, weights, has_weights,
                      combiner, padding_idx):
    """In place, for each position i of bag b: bag_of[i] = b, coef[i] =
    w_i / divisor_b (w_i for sum); dropped[b] = positions of bag b that
    contribute nothing (padding ids; every id of a zero-divisor bag).
    Parallel over bags."""
    num_items = offsets.shape[0] - 1
    num_tasks = (num_items + BAG_TASK - 1) // BAG_TASK
    queue = task_queue(num_tasks)
    for worker in prange(workers(queue)):
        task = next_task(queue, worker)
        while task < num_tasks:
            _bag_coefficients_of(bag_of, coef, dropped, values, offsets, weights, has_weights,
                                 combiner, padding_idx, task * BAG_TASK,
                                 min(num_items, (task + 1) * BAG_TASK))
            task = next_task(queue, worker)
    tasks_done(queue)


@njit_inline
def _gather_plan_of(src_index, src_coef, order, bag_of, coef, lo, hi):
    """``_gather_plan`` of positions lo:hi."""
    for k in range(lo, hi):
        src_index[k] = bag_of[order[k]]
        src_coef[k] = coef[order[k]]


@njit_parallel
def _gather_plan(src_index, src_coef, order, bag_of, coef):
    """In place: src_index[k] = bag_of[order[k]], src_coef[k] = coef[order[k]]."""
    num_items = order.shape[0]
    num_tasks = (num_items + ID_TASK - 1) // ID_TASK
    queue = task_queue(num_tasks)
    for worker in prange(workers(queue)):
        task = next_task(queue, worker)
        while task < num_tasks:
            _gather_plan_of(src_index, src_coef, order, bag_of, coef, task * ID_TASK,
                            min(num_items, (task + 1) * ID_TASK))
            task = next_task(queue, worker)
    tasks_done(queue)


@njit_inline
def _kept_ids(values, offsets, dropped, padding_idx):
    """(ids, kept): the ids of the positions that contribute (``kept``, in
    position order), or ``values`` itself and an empty ``kept`` when every
    position does (the common case: no copy)."""
    n = values.shape[0]
    num_bags = offsets.shape[0] - 1
    num_dropped = 0
    for b in range(num_bags):
        num_dropped += dropped[b]
    if num_dropped == 0:
        return values, np.empty(0, np.int64)
    kept = np.empty(n - num_dropped, np.int64)
    m = 0
    for b in range(num_bags):
        if dropped[b] == offsets[b + 1] - offsets[b]:
            continue
        for i in range(offsets[b], offsets[b + 1]):
            if values[i] != padding_idx:
                kept[m] = i
                m += 1
    kept_values = np.empty(m, np.int64)
    for j in range(m):
        kept_values[j] = values[kept[j]]
    return kept_values, kept


@njit_inline
def _positions_of_kept(order, kept):
    """In place: order [m] int64, indices into ``kept`` -> positions (none
    when ``kept`` is empty: every position was kept)."""
    if kept.shape[0] > 0:
        for k in range(order.shape[0]):
            order[k] = kept[order[k]]


@njit  # sequences parallel kernels (the pool is started in _jit)
def embedding_bag_grad_plan(values, offsets, weights, has_weights, combiner,
                            padding_idx):
    """Plan of the table gradient of an embedding bag (see ``coalesce``).

    Returns (rows [U], starts [U+1], src_index [m], src_coef [m]): id i of bag
    b contributes ``coef_i * d_out[b]`` with coef_i = w_i / divisor_b. Padding
    ids, empty bags and zero-divisor bags contribute nothing. ``src_index``
    points at rows of d_out [B, D], which the caller appends to the plan.
    Parallel over bags, then over the grouped contributions.
    """
    n = values.shape[0]
    bag_of = np.empty(n, np.int64)
    coef = np.empty(n, np.float32)
    dropped = np.zeros(offsets.shape[0] - 1, np.int64)
    _bag_coefficients(bag_of, coef, dropped, values, offsets, weights, has_weights,
                      combiner, padding_idx)
    ids, kept = _kept_ids(values, offsets, dropped, padding_idx)
    rows, starts, order = group_rows(ids)
    _positions_of_kept(order, kept)
    src_index = np.empty(order.shape[0], np.int64)
    src_coef = np.empty(order.shape[0], np.float32)
    _gather_plan(src_index, src_coef, order, bag_of, coef)
    return rows, starts, src_index, src_coef


@njit_serial_twin
def embedding_bag_grad_plan_serial(values, offsets, weights, has_weights, combiner,
                                   padding_idx):
    """``embedding_bag_grad_plan`` on the calling thread, with no parallel
    kernel under it (the same plan); for small batches (``_jit.by_work``)."""
    n = values.shape[0]
    bag_of = np.empty(n, np.int64)
    coef = np.empty(n, np.float32)
    dropped = np.zeros(offsets.shape[0] - 1, np.int64)
    _bag_coefficients_of(bag_of, coef, dropped, values, offsets, weights, has_weights,
                         combiner, padding_idx, 0, offsets.shape[0] - 1)
    ids, kept = _kept_ids(values, offsets, dropped, padding_idx)
    rows, starts, order = group_rows_serial(ids)
    _positions_of_kept(order, kept)
    src_index = np.empty(order.shape[0], np.int64)
    src_coef = np.empty(order.shape[0], np.float32)
    _gather_plan_of(src_index, src_coef, order, bag_of, coef, 0, order.shape[0])
    return rows, starts, src_index, src_coef


@njit_inline
def _tag_bags(keys, next_pos, values, offsets, b, lo, hi, tag_bits, mask):
    """In place: the keys of positions lo:hi (position lo in bag b),
    ``values[i] << tag_bits | bag of i``, scattered by their digit 0 as in
    ``coalesce.scatter_digits`` (next_pos [digits] advanced). One loop over
    the positions, the bag advanced as it ends (a loop per bag would
    restart the scatter's run every 26 ids)."""
    if hi <= lo:
        return
    end = offsets[b + 1]
    digit = values[lo] & mask
    pos = next_pos[digit]
    for i in range(lo, hi):
        while i == end:  # (a loop: empty bags)
            b += 1
            end = offsets[b + 1]
        row = values[i]
        d = row & mask
        if d != digit:
            next_pos[digit] = pos
            digit = d
            pos = next_pos[d]
        prefetch(keys, pos + SCATTER_AHEAD)
        keys[pos] = (row << tag_bits) | b
        pos += 1
    next_pos[digit] = pos


@njit  # sequences parallel kernels (the pool is started in _jit)
def unit_grad_plan(values, offsets):
    """``embedding_bag_grad_plan`` when every id contributes ``1 * d_out[b]``
    (sum, no weights, no padding; the caller checks): each position is
    tagged with its bag, so the grouping hands back ``src_index`` directly
    (no position -> bag map, no gathers); the tagged keys are built by the
    sort's first pass (one write and read of them fewer). Returns an empty
    plan (no rows) when ids and bags are too wide to pack in an int64 (the
    caller then takes the general plan). A kernel of its own, so that a
    model that never needs it never compiles it."""
    n = values.shape[0]
    num_bags = offsets.shape[0] - 1
    if n == 0:
        return (np.empty(0, np.int64), np.zeros(1, np.int64), np.empty(0, np.int64),
                np.empty(0, np.float32))
    key_bits = _bit_length(_max_id(values))
    tag_bits = _bit_length(max(num_bags - 1, 0))
    if key_bits + tag_bits > 63:
        return (np.empty(0, np.int64), np.zeros(1, np.int64), np.empty(0, np.int64),
                np.empty(0, np.float32))
    if use_threads(n):
        rows, starts, src_index = group_ranges(values, offsets, key_bits, tag_bits, True)
    else:
        counts, digit_bits = count_id_digits_serial(values, key_bits)
        keys = np.empty(n, np.int64)
        first_bag = np.searchsorted(offsets, 0, side="right") - 1  # empty bags may come first
        _tag_bags(keys, counts[0, 0], values, offsets, first_bag, _int(0), n, tag_bits,
                  (1 << digit_bits) - 1)
        rows, starts, src_index = group_packed_serial(keys, np.empty(n, np.int64), counts,
                                                      digit_bits, tag_bits)
    return rows, starts, src_index, np.ones(n, np.float32)


@njit_inline
def _running_sums(counts):
    """Running sums of counts [n] int64 (``np.cumsum``, which compiled 0.13 s
    more on a first run)."""
    out = np.empty(counts.shape[0], np.int64)
    total = 0
    for i in range(counts.shape[0]):
        total += counts[i]
        out[i] = total
    return out


@njit_inline
def _fuse_divisors(lengths, divisors, values, bag_starts, weights, combiners, lo, hi):
    """First pass of ``fuse_bags``, bags lo:hi: each (bag, feature)'s divisor,
    and its length in the output (0 for a zero divisor) at lengths[k + 1]."""
    num_features = bag_starts.shape[0]
    for b in range(lo, hi):
        for f in range(num_features):
            start, end = bag_starts[f, b], bag_starts[f, b + 1]
            divisor = bag_divisor(values, weights, True, start, end, combiners[f], -1)
            divisors[b * num_features + f] = divisor
            lengths[b * num_features + f + 1] = end - start if divisor != 0.0 else 0


@njit_inline
def _fuse_write(out_values, out_weights, out_offsets, divisors, values, bag_starts, weights,
                combiners, row_offsets, lo, hi):
    """Second pass of ``fuse_bags``, bags lo:hi: the shifted ids and their
    coefficients, at their bag's place in the output."""
    num_features = bag_starts.shape[0]
    for b in range(lo, hi):
        for f in range(num_features):
            k = b * num_features + f
            start, at = bag_starts[f, b], out_offsets[k]
            divisor = divisors[k]
            for i in range(out_offsets[k + 1] - at):
                out_values[at + i] = values[start + i] + row_offsets[f]
                w = weights[start + i]
                out_weights[at + i] = w if combiners[f] == SUM else w / divisor


@njit_parallel
def fuse_bags(values, bag_starts, weights, combiners, row_offsets):
    """Bags of F features as one sum-combined lookup in a stacked table.

    values [n] int64: every feature's ids, feature after feature; bag b of
    feature f is ``values[bag_starts[f, b]:bag_starts[f, b + 1]]``
    (bag_starts [F, B+1] int64). weights [n] float32 (ones where a feature
    has none); combiners [F] int64 codes; row_offsets [F] int64: first row of
    feature f's table in the stacked table.

    Returns (out_values [m], out_offsets [B*F+1], out_weights [m]): bag
    ``b * F + f`` (example-major, so the pooled [B*F, D] output is the
    [B, F, D] stack) holds ``row_offsets[f] + id`` with weight
    ``w_i / divisor`` (1 for sum), so a sum lookup gives each combiner's
    output and each id the combiner's gradient coefficient (SPEC §3). Ids of
    zero-divisor bags are left out (zeros out, no gradient).
    """
    num_features = bag_starts.shape[0]
    num_bags = bag_starts.shape[1] - 1
    lengths = np.zeros(num_bags * num_features + 1, np.int64)
    divisors = np.empty(num_bags * num_features, np.float32)
    num_tasks = (num_bags + BAG_TASK - 1) // BAG_TASK
    queue = task_queue(num_tasks)
    for worker in prange(workers(queue)):
        task = next_task(queue, worker)
        while task < num_tasks:
            _fuse_divisors(lengths, divisors, values, bag_starts, weights, combiners,
                           task * BAG_TASK, min(num_bags, (task + 1) * BAG_TASK))
            task = next_task(queue, worker)
    tasks_done(queue)
    out_offsets = _running_sums(lengths)
    out_values = np.empty(out_offsets[-1], np.int64)
    out_weights = np.empty(out_offsets[-1], np.float32)
    queue = task_queue(num_tasks)
    for worker in prange(workers(queue)):
        task = next_task(queue, worker)
        while task < num_tasks:
            _fuse_write(out_values, out_weights, out_offsets, divisors, values, bag_starts,
                        weights, combiners, row_offsets, task * BAG_TASK,
                        min(num_bags, (task + 1) * BAG_TASK))
            task = next_task(queue, worker)
    tasks_done(queue)
    return out_values, out_offsets, out_weights


@njit_serial_twin
def fuse_bags_serial(values, bag_starts, weights, combiners, row_offsets):
    """``fuse_bags`` on the calling thread (the same output); for small
    batches (``_jit.by_work``)."""
    num_features = bag_starts.shape[0]
    num_bags = bag_starts.shape[1] - 1
    lengths = np.zeros(num_bags * num_features + 1, np.int64)
    divisors = np.empty(num_bags * num_features, np.float32)
    _fuse_divisors(lengths, divisors, values, bag_starts, weights, combiners, 0, num_bags)
    out_offsets = _running_sums(lengths)
    out_values = np.empty(out_offsets[-1], np.int64)
    out_weights = np.empty(out_offsets[-1], np.float32)
    _fuse_write(out_values, out_weights, out_offsets, divisors, values, bag_starts, weights,
                combiners, row_offsets, 0, num_bags)
    return out_values, out_offsets, out_weights
