"""Routing of row-sharded lookups between ranks (``sparse_train.distributed``).

A table of V rows is sharded over W ranks by ``id mod W``: global row ``g``
lives on rank ``g % W`` at local row ``g // W``. One lookup (one feature's
embedding bag) on the rank holding its bags is served in three moves:

1. ``kept_occurrences``: the positions that read a row (not padding, in a
   bag whose divisor is not zero), grouped by bag, with their weights and
   gradient coefficients ``w_i / divisor_b`` computed exactly as
   ``lookup.embedding_bag_grad_plan`` computes them.
2. ``routing_keys``, ``coalesce.group_rows`` and ``route_groups``: the
   unique rows asked of each owner, and where each occurrence's row comes
   back.
3. ``pool_fetched_rows``: the pooled output from the rows the owners sent,
   with the arithmetic of ``lookup.embedding_bag_forward`` (same order, same
   bits).

Backward, ``owner_rows`` picks, per owner, the bags with an occurrence it
owns; their upstream gradient rows travel once per owner with, per
occurrence, its local row, its bag's place among those rows and its
coefficient. The owner's plan is then the single-process plan restricted to
its rows: ``g_r = sum_k coef_k * d_out[bag_k]`` in global position order.
"""
import numpy as np

from ._jit import njit, njit_parallel, prange
from .lookup import SUM, bag_divisor


@njit
def kept_occurrences(values, offsets, weights, has_weights, combiner, padding_idx):
    """The occurrences that read a row, in position order, by bag.

    values [n] int64; offsets [B+1] int64; weights [n] float32 or empty.
    Returns (positions [m] int64, bag_starts [B+1] int64, kept_weights [m]
    float32, coefs [m] float32, divisors [B] float32): the kept occurrences
    of bag b are k in ``bag_starts[b]:bag_starts[b+1]``. A position is kept
    unless it holds ``padding_idx`` or its bag's divisor is zero (that bag
    outputs zeros and sends no gradient). kept_weights = w (1 without
    weights); coef = w (sum) or w / divisor (mean, sqrtn), as in
    ``lookup.embedding_bag_grad_plan``.
    """
    n = values.shape[0]
    num_bags = offsets.shape[0] - 1
    positions = np.empty(n, np.int64)
    bag_starts = np.empty(num_bags + 1, np.int64)
    kept_weights = np.empty(n, np.float32)
    coefs = np.empty(n, np.float32)
    divisors = np.empty(num_bags, np.float32)
    m = 0
    for b in range(num_bags):
        bag_starts[b] = m
        start, end = offsets[b], offsets[b + 1]
        divisor = bag_divisor(values, weights, has_weights, start, end, combiner, padding_idx)
        divisors[b] = divisor
        if divisor == 0.0:
            continue
        for i in range(start, end):
            if values[i] == padding_idx:
                continue
            w = weights[i] if has_weights else np.float32(1.0)
            positions[m] = i
            kept_weights[m] = w
            coefs[m] = w if combiner == SUM else w / divisor
            m += 1
    bag_starts[num_bags] = m
    return positions[:m].copy(), bag_starts, kept_weights[:m].copy(), coefs[:m].copy(), divisors


@njit
def routing_keys(ids, world_size, shard_rows):
    """keys [m] int64: ``owner * shard_rows + local_row`` of each global id,
    owner = id % world_size, local_row = id // world_size; shard_rows is
    ceil(V / world_size). Increasing keys group rows by owner, then by
    local row."""
    keys = np.empty(ids.shape[0], np.int64)
    for k in range(ids.shape[0]):
        keys[k] = (ids[k] % world_size) * shard_rows + ids[k] // world_size
    return keys


@njit
def route_groups(keys, starts, order, world_size, shard_rows):
    """Requests and occurrence places from ``coalesce.group_rows(routing keys)``.

    keys [U], starts [U+1], order [m] int64 as group_rows returns them (unique
    keys increasing). Returns:
      requests [W] int64: unique rows asked of each owner;
      occ_unique [m] int64: index into keys of each occurrence;
      occ_rank [m] int64: the occurrence's place among those sent to its
          owner, in position order;
      occurrences [W] int64: occurrences sent to each owner.
    """
    m = order.shape[0]
    requests = np.zeros(world_size, np.int64)
    occ_unique = np.empty(m, np.int64)
    for u in range(keys.shape[0]):
        requests[keys[u] // shard_rows] += 1
        for k in range(starts[u], starts[u + 1]):
            occ_unique[order[k]] = u
    occurrences = np.zeros(world_size, np.int64)
    occ_rank = np.empty(m, np.int64)
    for k in range(m):
        owner = keys[occ_unique[k]] // shard_rows
        occ_rank[k] = occurrences[owner]
        occurrences[owner] += 1
    return requests, occ_unique, occ_rank, occurrences


@njit_parallel
def pool_fetched_rows(out, fetched, row_start, bag_starts, kept_weights, divisors, combiner):
    """In place: out [B, D] float32, row b = combined fetched rows of bag b.

    fetched [*] float32 holds the rows sent back by their owners (flat);
    row_start [m] int64 is where kept occurrence k's row starts in it;
    bag_starts [B+1], kept_weights [m], divisors [B] from
    ``kept_occurrences``. The sum runs in position order and is divided
    last, as in ``lookup.embedding_bag_forward``, so the result has the
    same bits.
    """
    dim = out.shape[1]
    for b in prange(out.shape[0]):
        row = out[b]
        row[:] = 0.0
        divisor = divisors[b]
        if divisor == 0.0:
            continue
        for k in range(bag_starts[b], bag_starts[b + 1]):
            w = kept_weights[k]
            base = row_start[k]
            for j in range(dim):
                row[j] += w * fetched[base + j]
        if combiner != SUM:
            for j in range(dim):
                row[j] /= divisor


@njit
def owner_rows(owners, bag_starts, world_size):
    """The upstream gradient rows each owner needs, and each occurrence's.

    owners [m] int64: owner of each kept occurrence (position order);
    bag_starts [B+1] int64 from ``kept_occurrences``. Returns (row_bags [P]
    int64: bags whose d_out row is sent, owner-major, increasing per owner;
    row_counts [W] int64: rows sent to each owner; occ_row [m] int64: the
    place of the occurrence's bag among its owner's rows).
    """
    m = owners.shape[0]
    num_bags = bag_starts.shape[0] - 1
    last = np.full(world_size, -1, np.int64)
    row_counts = np.zeros(world_size, np.int64)
    occ_row = np.empty(m, np.int64)
    for b in range(num_bags):
        for k in range(bag_starts[b], bag_starts[b + 1]):
            o = owners[k]
            if last[o] != b:
                last[o] = b
                row_counts[o] += 1
            occ_row[k] = row_counts[o] - 1
    base = np.zeros(world_size + 1, np.int64)
    for o in range(world_size):
        base[o + 1] = base[o] + row_counts[o]
    row_bags = np.empty(base[world_size], np.int64)
    last[:] = -1
    for b in range(num_bags):
        for k in range(bag_starts[b], bag_starts[b + 1]):
            o = owners[k]
            if last[o] != b:
                last[o] = b
                row_bags[base[o] + occ_row[k]] = b
    return row_bags, row_counts, occ_row


@njit_parallel
def copy_rows(out, row_start, src, src_rows):
    """In place: out [*] float32, ``out[row_start[j]:+D] = src[src_rows[j]]``.
    src [B, D] float32; row_start, src_rows [P] int64."""
    dim = src.shape[1]
    for j in prange(src_rows.shape[0]):
        base = row_start[j]
        source = src[src_rows[j]]
        for d in range(dim):
            out[base + d] = source[d]
