"""Dynamic tables over MPI: keys sharded by a fixed hash, lookups exchanged.

Rank r of W owns the keys k with ``key_owner(k, W) == r`` (the splitmix64
finalizer of k, mod W): a function of the key alone, so any rank can route
a key without a directory, and a checkpoint of W ranks reshards onto any
other W' by the same rule (``reshard_table_states``). Each rank holds a
``DynamicEmbeddingTable`` with the same options for the keys it owns; its
optimizer's slots grow with it.

One step of ``ShardedDynamicTable`` on rank r (every rank calls it with its
slice of the global batch, ``sharding.local_batch``)::

    lookup:       unique keys of the slice, with their occurrence counts,
                  to their owners (Alltoallv); each owner counts, admits and
                  stamps ALL ranks' occurrences in one training resolve (the
                  counts of one process's lookup of the global batch) and
                  sends back the rows; rank r pools its bags from them.
    lookup_grad:  per kept occurrence, in position order, to its owner: the
                  key's place among those it sent, its coefficient
                  ``w_i / divisor_b`` and its bag's d_out row; the owner
                  stacks the senders in rank order (= global position order)
                  and builds the summed-gradient plan.

Both are the single-process arithmetic on the same numbers in the same
order, so N ranks give the same pooled outputs, tables, slots and counts as
one process given the same upstream gradients (tests/distributed/
test_dynamic_mpi.py checks 2 and 3 ranks bit for bit).
"""
import numpy as np

from .. import functional as F
from ..kernels import lookup as _lookup
from ..kernels.coalesce import group_rows
from ..sparse import GradPlan, RowSparseGrad
from .faults import DistributedError

__all__ = ["key_owner", "ShardedDynamicTable", "reshard_table_states"]

_GOLDEN, _MIX1, _MIX2 = (np.uint64(0x9E3779B97F4A7C15), np.uint64(0xBF58476D1CE4E5B9),
                         np.uint64(0x94D049BB133111EB))


def key_owner(keys, world_size):
    """The rank owning each key: ``splitmix64(key) mod world_size``, [n] int64.

    splitmix64's finalizer (Steele et al. 2014) spreads sequential and
    strided keys evenly, unlike ``key mod W`` (ids that are all even would
    land on half the ranks).

    >>> key_owner(np.array([0, 1, -1, 2**62], np.int64), 3).tolist()
    [1, 2, 2, 1]
    >>> int(key_owner(np.array([0]), 2**62)[0]) == 0xE220A8397B1DCDAF % 2**62  # splitmix64(0)
    True
    """
    z = np.ascontiguousarray(keys, np.int64).view(np.uint64)
    z = z + _GOLDEN
    z = (z ^ (z >> np.uint64(30))) * _MIX1
    z = (z ^ (z >> np.uint64(27))) * _MIX2
    z = z ^ (z >> np.uint64(31))
    return (z % np.uint64(world_size)).astype(np.int64)


def reshard_table_states(states, rank, world_size):
    """Rank ``rank`` of ``world_size``'s share of a table saved in parts.

    Args:
        states: full states (``table.state_dict()``) of the old shards, any
            number (keys are disjoint between them).
        rank, world_size: the new rank and world size (1: the whole table).

    Returns:
        the state of the keys ``key_owner`` gives this rank, sorted by key.

    >>> i64 = lambda *x: np.array(x, np.int64)
    >>> part = lambda k: {"keys": i64(*k), "values": np.zeros((len(k), 1), np.float32),
    ...                   "pending_keys": i64(), "pending_counts": i64()}
    >>> reshard_table_states([part([3, 8]), part([5])], 0, 1)["keys"].tolist()
    [3, 5, 8]
    """
    out = {}
    for key_field in ("keys", "pending_keys"):
        fields = [f for f in states[0] if _aligned_with(f) == key_field]
        keys = np.concatenate([s[key_field] for s in states])
        order = np.argsort(keys, kind="stable")
        keep = order[key_owner(keys[order], world_size) == rank]
        for field in fields:
            out[field] = np.ascontiguousarray(np.concatenate([s[field] for s in states])[keep])
    return out


def _aligned_with(field):
    if field.startswith("pending_"):
        return "pending_keys"
    return None if field in ("tombstones",) else "keys"


class ShardedDynamicTable:
    """This rank's shard of a ``DynamicEmbeddingTable``, looked up by all ranks.

    Args:
        table: a ``DynamicEmbeddingTable`` built with the same options on
            every rank (it will hold the keys this rank owns; build it empty).
        comm: the ``Communicator``.

    ``weight`` is ``table.weight`` (same name: slots and checkpoint entries
    keep it); apply ``lookup_grad``'s gradient to it with any optimizer, as
    on one process. ``lookup`` and ``lookup_grad`` are collectives.
    """

    def __init__(self, table, comm):
        if not hasattr(table, "resolve") or not hasattr(table, "state_dict"):
            raise TypeError(f"ShardedDynamicTable: expected a DynamicEmbeddingTable, "
                            f"got {type(table).__name__}")
        self.table, self.comm = table, comm
        self._steps = {}  # feature name -> _Step of its last training lookup

    @property
    def weight(self):
        return self.table.weight

    @property
    def name(self):
        return self.table.name

    @property
    def embedding_dim(self):
        return self.table.embedding_dim

    def lookup(self, values, offsets, weights=None, combiner="sum", training=True,
               global_step=None, name=None):
        """Pooled lookup of this rank's bags: [B_local, D] float32 (as
        ``DynamicEmbeddingTable.lookup`` over the global batch, counting,
        admitting and stamping every rank's keys at their owners)."""
        where = name or self.name
        try:
            values = F.as_ids(values, "values", where)
            bags = F.check_bags(np.zeros(values.shape[0], np.int64), offsets, weights, 1,
                                combiner, None, where)
            error = None
        except ValueError as exc:
            values, bags, error = np.empty(0, np.int64), None, exc
        keys, inverse, counts = np.unique(values, return_inverse=True, return_counts=True)
        owner = key_owner(keys, self.comm.size)
        order = np.argsort(owner, kind="stable")
        sizes = np.bincount(owner, minlength=self.comm.size)
        got_keys, got_sizes = _exchange(self.comm, keys[order], sizes, error, where)
        got_counts, _ = _exchange(self.comm, counts[order].astype(np.int64), sizes, None, where)
        rows, failure = None, None
        try:
            occurrences = np.repeat(got_keys, got_counts) if training else got_keys
            rows = self.table.resolve(occurrences, training=training, global_step=global_step,
                                      name=where)
            if training:  # the row of each received key: at its first occurrence
                rows = rows[np.cumsum(got_counts) - got_counts]
        except ValueError as exc:
            failure = exc
        back = (np.empty((0, self.embedding_dim), np.float32) if rows is None
                else self.table.weight.value[rows])
        fetched, _ = _exchange(self.comm, back, got_sizes, failure, where)
        local = np.empty((keys.shape[0], self.embedding_dim), np.float32)
        local[order] = fetched
        if training:
            self._steps[where] = _Step(where, values, inverse, owner, sizes, rows, got_sizes)
        return F.pool_checked(local, bags._replace(values=inverse.astype(np.int64)))

    def lookup_grad(self, d_out, values, offsets, weights=None, combiner="sum", name=None):
        """Gradient of the last training ``lookup`` (same keys) with respect
        to this rank's ``weight``: a ``RowSparseGrad`` summing every rank's
        contributions to the rows this rank owns, in global position order;
        keys without a row send nothing."""
        where = name or self.name
        step = self._steps.get(where)
        error = None
        try:
            values = F.as_ids(values, "values", where)
            if step is None or not np.array_equal(step.values, values):
                raise ValueError(f"{where}: lookup_grad needs the keys of the last training "
                                 f"lookup of this feature")
            positions = np.arange(values.shape[0], dtype=np.int64)
            bags = F.check_bags(positions, offsets, weights, max(values.shape[0], 1), combiner,
                                None, where)
            d_out = np.ascontiguousarray(d_out, np.float32)
            if d_out.shape != (bags.offsets.shape[0] - 1, self.embedding_dim):
                raise ValueError(f"{where}: d_out must be [{bags.offsets.shape[0] - 1}, "
                                 f"{self.embedding_dim}], got {d_out.shape}")
            kept, _, bag_of, coef = _lookup.embedding_bag_grad_plan(*bags)
        except ValueError as exc:
            error, kept = exc, np.empty(0, np.int64)
            bag_of, coef = kept, np.empty(0, np.float32)
            d_out = np.empty((0, self.embedding_dim), np.float32)
        if error is None:
            owner = step.owner[step.inverse[kept]]
            place = _place_among_sent(step, kept)
        else:
            owner, place = kept, kept
        order = np.argsort(owner, kind="stable")  # owner-major, position order within
        sizes = np.bincount(owner, minlength=self.comm.size)
        got_place, got_sizes = _exchange(self.comm, place[order], sizes, error, where)
        got_coef, _ = _exchange(self.comm, coef[order], sizes, None, where)
        got_rows, _ = _exchange(self.comm, d_out[bag_of[order]], sizes, None, where)
        starts = np.concatenate([[0], np.cumsum(step.got_sizes)])
        rows_of = np.concatenate([step.rows[starts[s]:starts[s + 1]][got_place[a:b]]
                                  for s, (a, b) in enumerate(_bounds(got_sizes))]) \
            if got_place.size else np.empty(0, np.int64)
        rows, row_starts, src_index = group_rows(rows_of)
        plan = GradPlan(rows, row_starts, src_index, got_coef[src_index],
                        np.ascontiguousarray(got_rows, np.float32).reshape(-1, self.embedding_dim),
                        np.float32(1.0))
        grad = RowSparseGrad._from_plan(plan, (self.table.rows_allocated, self.embedding_dim))
        return F.drop_grad_rows_below(grad, 1)


class _Step:
    """What a training lookup leaves for ``lookup_grad``: the keys, each
    position's unique key, the owners and per-owner counts of the unique
    keys sent, and (owner side) the rows of the keys received per sender."""

    def __init__(self, name, values, inverse, owner, sizes, rows, got_sizes):
        self.name, self.values, self.inverse = name, values.copy(), inverse
        self.owner, self.sizes, self.rows, self.got_sizes = owner, sizes, rows, got_sizes


def _place_among_sent(step, positions):
    """For each position, its key's index among the keys sent to its owner."""
    unique = step.inverse[positions]
    order = np.argsort(step.owner, kind="stable")
    place = np.empty(order.shape[0], np.int64)
    first = np.concatenate([[0], np.cumsum(step.sizes)])[:-1]
    place[order] = np.arange(order.shape[0]) - first[step.owner[order]]
    return place[unique]


def _bounds(sizes):
    ends = np.cumsum(sizes)
    return list(zip(ends - sizes, ends))


def _exchange(comm, send, sizes, error, where):
    """Send ``send`` (rows grouped by destination, ``sizes[d]`` rows for
    rank d) to every rank; (rows received in rank order, [size] rows from
    each). An ``error`` on any rank raises ``DistributedError`` on all."""
    send = np.ascontiguousarray(send)
    width = int(np.prod(send.shape[1:], dtype=np.int64))
    header = np.stack([np.asarray(sizes, np.int64), np.full(comm.size, error is not None)],
                      axis=1)
    got = comm.alltoall(header)
    if got[:, 1].any():
        failed = [int(r) for r in np.flatnonzero(got[:, 1])]
        if error is not None:
            raise error
        raise DistributedError(f"{where}: the dynamic table exchange failed on rank(s) "
                               f"{failed}; see their error")
    recv_sizes = got[:, 0].astype(np.int64)
    flat = comm.alltoallv(send.reshape(-1), np.asarray(sizes, np.int64) * width,
                          recv_sizes * width)
    return flat.reshape((-1,) + send.shape[1:]), recv_sizes
