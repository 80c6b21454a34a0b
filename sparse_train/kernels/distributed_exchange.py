"""Routing of row-sharded lookups between ranks (``sparse_train.distributed``).

A table of V rows is sharded over W ranks by ``id mod W``: global row ``g``
lives on rank ``g % W`` at local row ``g // W``. One lookup (one feature's
embedding bag) on one rank is served in three moves:

1. ``kept_occurrences``: the positions whose rows matter (not padding, in a
   bag whose divisor is not zero), each with its bag and its gradient
   coefficient ``w_i / divisor_b``, computed exactly as
   ``lookup.embedding_bag_grad_plan`` computes them.
2. ``route_ids``: the unique rows asked of each owner (requests), and where
   each occurrence's row comes back.
3. ``pool_fetched_rows``: the pooled output from the fetched rows, with the
   arithmetic of ``lookup.embedding_bag_forward`` (same order, same bits).

Backward, ``scatter_occurrence_grads`` writes one gradient row per
occurrence, ``coef_i * d_out[b]`` in float32 (the very product the
single-process update kernel forms inside ``summed_grad_row``), for its
owner. The owner sums them in global position order, so a table's summed
gradient has the same bits as on one process.
"""
import numpy as np

from ._jit import njit, njit_parallel, prange
from .coalesce import group_rows
from .lookup import SUM, bag_divisor


@njit
def kept_occurrences(values, offsets, weights, has_weights, combiner, padding_idx):
    """Positions that read a row, in position order, and each bag's divisor.

    values [n] int64; offsets [B+1] int64; weights [n] float32 or empty.
    Returns (positions [m] int64, bags [m] int64, coefs [m] float32,
    divisors [B] float32). A position is kept unless it holds ``padding_idx``
    or its bag's divisor is zero (such a bag outputs zeros and sends no
    gradient). coef = w (sum) or w / divisor (mean, sqrtn), as in
    ``lookup.embedding_bag_grad_plan``.
    """
    n = values.shape[0]
    num_bags = offsets.shape[0] - 1
    positions = np.empty(n, np.int64)
    bags = np.empty(n, np.int64)
    coefs = np.empty(n, np.float32)
    divisors = np.empty(num_bags, np.float32)
    m = 0
    for b in range(num_bags):
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
            bags[m] = b
            coefs[m] = w if combiner == SUM else w / divisor
            m += 1
    return positions[:m].copy(), bags[:m].copy(), coefs[:m].copy(), divisors


@njit
def route_ids(ids, world_size, shard_rows):
    """Group the rows asked for by owner: one request per unique id.

    ids [m] int64 global row ids in [0, V), in position order; shard_rows is
    ceil(V / world_size). Returns:
      keys [U] int64: unique ``owner * shard_rows + local_row``, increasing,
          so grouped by owner and, per owner, by local row;
      requests [W] int64: unique rows asked of each owner;
      occ_unique [m] int64: index into keys of each occurrence;
      occ_rank [m] int64: the occurrence's place among those sent to its
          owner, in position order;
      occurrences [W] int64: occurrences sent to each owner.
    """
    m = ids.shape[0]
    keyed = np.empty(m, np.int64)
    for k in range(m):
        keyed[k] = (ids[k] % world_size) * shard_rows + ids[k] // world_size
    keys, starts, order = group_rows(keyed)
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
    return keys, requests, occ_unique, occ_rank, occurrences


@njit_parallel
def pool_fetched_rows(out, fetched, row_start, offsets, weights, has_weights,
                      divisors, combiner):
    """In place: out [B, D] float32, row b = combined fetched rows of bag b.

    fetched [*] float32 holds the rows sent back by their owners (flat);
    row_start [n] int64 is where position i's row starts in it, -1 for a
    position that reads no row (padding, or a bag with a zero divisor);
    divisors [B] float32 from ``kept_occurrences``. The sum runs in position
    order and is divided last, as in ``lookup.embedding_bag_forward``, so the
    result has the same bits.
    """
    dim = out.shape[1]
    for b in prange(out.shape[0]):
        row = out[b]
        row[:] = 0.0
        divisor = divisors[b]
        if divisor == 0.0:
            continue
        for i in range(offsets[b], offsets[b + 1]):
            base = row_start[i]
            if base < 0:
                continue
            w = weights[i] if has_weights else np.float32(1.0)
            for j in range(dim):
                row[j] += w * fetched[base + j]
        if combiner != SUM:
            for j in range(dim):
                row[j] /= divisor


@njit_parallel
def scatter_occurrence_grads(out_grads, out_ids, d_out, bags, coefs, local_rows,
                             grad_start, id_start):
    """In place: out_grads [*] float32 and out_ids [*] int64 (send buffers).

    For occurrence k: ``out_grads[grad_start[k]:+D] = coefs[k] * d_out[bags[k]]``
    (float32 products) and ``out_ids[id_start[k]] = local_rows[k]``.
    d_out [B, D] float32; bags, local_rows, grad_start, id_start [m] int64;
    coefs [m] float32.
    """
    dim = d_out.shape[1]
    for k in prange(bags.shape[0]):
        coef = coefs[k]
        source = d_out[bags[k]]
        base = grad_start[k]
        for j in range(dim):
            out_grads[base + j] = coef * source[j]
        out_ids[id_start[k]] = local_rows[k]
