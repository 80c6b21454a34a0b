"""The all-to-all exchanges of a model's sharded lookups, one step at a time.

Every rank holds a slice of the global batch and one shard of every table
(``sharding``). A step moves, for ALL lookups of the model at once:

forward (``LookupExchange.forward``, before the model's forward pass)
    1. ``Alltoall`` of counts: per owner and lookup, the unique rows asked;
       the local batch size; an error flag (a rank with bad ids tells the
       others instead of leaving them waiting).
    2. ``Alltoallv`` of int64 local row ids to their owners (unique per
       lookup and owner).
    3. ``Alltoallv`` of float32 rows back; each rank pools its own bags
       (``ShardedEmbeddingBag``) with the single-process arithmetic, so the
       pooled outputs have the same bits as on one process.

backward (``LookupExchange.backward``, after the reverse pass)
    4. ``Alltoall`` of counts: per owner and lookup, occurrences and
       upstream gradient rows to send.
    5. One ``Alltoallv`` of bytes. For each owner and lookup: the d_out row
       of every bag holding an id of that owner (once per owner), and per
       occurrence, in position order, its local row (int64), its bag's
       place among those rows (int32) and its coefficient ``w_i /
       divisor_b`` (float32).

    The owner stacks the senders in rank order (= global position order,
    rank r's slice following rank r-1's) and builds the summed-gradient plan
    of ``kernels.coalesce``: ``src`` = the received d_out rows, ``src_coef``
    = the coefficients. That is the single-process plan of
    ``embedding_bag_grad`` restricted to its rows: the update kernel forms
    the same float32 products and adds them in the same order, so tables
    and slots get the same bits, given the same d_out. Lookups of one table
    are joined in the order the reverse pass reached them
    (``concat_row_sparse``, as the autodiff engine does).

Sending d_out rows and per-occurrence coefficients, not the [n, D] products
``coef_i * d_out[b]``, costs 16 bytes an occurrence plus one row per (bag,
owner): for multi-hot bags far less than a row per occurrence, for one id
a bag 8 bytes more. Rows summed on the sender would be cheaper still but
would add partial sums in another order than one process (issue 6 asks for
the same model).

Buffers are laid out owner-major, lookup-minor: the segment for rank d
holds lookup 0's part, then lookup 1's, ... Table widths may differ (an
FM's linear tables have D = 1).
"""
import time
from collections import defaultdict

import numpy as np

from .. import autodiff as ad
from ..functional import COMBINERS, check_bags
from ..kernels import distributed_exchange as kx
from ..kernels.coalesce import group_rows
from ..sparse import GradPlan, RowSparseGrad
from .faults import DistributedError

__all__ = ["ShardedEmbeddingBag", "LookupExchange"]

_ONE = np.float32(1.0)


class ShardedEmbeddingBag:
    """Stands in for ``nn.EmbeddingBag`` over a ``ShardedTable``: returns the
    pooled rows the step's exchange fetched, and hands its upstream gradient
    to the exchange instead of returning a table gradient.

    ``exchange`` and ``index`` (its place among the exchange's lookups) are
    set by ``LookupExchange``.
    """

    def __init__(self, table, combiner="sum", name=None):
        if combiner not in COMBINERS:
            raise ValueError(f"ShardedEmbeddingBag: combiner must be one of "
                             f"{sorted(COMBINERS)}, got {combiner!r}")
        self.table = table
        self.combiner = combiner
        self.name = name or table.name
        self.exchange = None
        self.index = None

    def __call__(self, ids, weight=None):
        """``ids`` (this rank's ``Ragged``) -> [B, D] Tensor; ``weight`` is the
        graph leaf of the shard (one per table per forward, as
        ``EmbeddingBagCollection`` makes)."""
        weight = ad.Tensor(self.table.weight) if weight is None else weight
        out = self.exchange.pooled(self.index, ids)
        exchange, index = self.exchange, self.index

        def backward(g):
            exchange.record_grad(index, g)
            return (None,)  # the owners' gradient comes from LookupExchange.backward
        return ad.Tensor.from_op(out, (weight,), backward, "sharded_embedding_bag")

    def __repr__(self):
        return (f"ShardedEmbeddingBag(feature={self.name!r}, table={self.table.name!r}, "
                f"combiner={self.combiner!r})")


class _Lookup:
    """One lookup's state within a step, on the rank holding its bags.

    From ``kernels.distributed_exchange``: the kept occurrences (position
    order, by bag) with their weights and coefficients, the unique routing
    keys, and per occurrence its owner, local row and place among those
    sent to its owner. ``row_start`` locates each occurrence's fetched row.
    """

    __slots__ = ("ids", "num_bags", "dim", "combiner", "bag_starts", "kept_weights", "coefs",
                 "divisors", "keys", "key_owner", "key_first", "occ_unique", "requests",
                 "occurrences", "owners", "local_rows", "occ_rank", "row_start")


class _Step:
    """What the forward exchange leaves for the pooling and the backward."""

    def __init__(self, lookups, global_batch_size, batch_start):
        self.lookups = lookups
        self.fetched = None
        self.global_batch_size = global_batch_size
        self.batch_start = batch_start
        self.grads = []  # [(lookup index, d_out)] in the order the reverse pass called


class LookupExchange:
    """Runs the exchanges of ``bags`` (a list of ``ShardedEmbeddingBag``, in
    the same order on every rank) over ``comm``.

    ``timings`` accumulates seconds spent in collectives (waiting for slower
    ranks included): ``"lookup_exchange"`` (forward) and
    ``"gradient_exchange"`` (backward).
    """

    def __init__(self, comm, bags):
        self.comm = comm
        self.bags = list(bags)
        for index, bag in enumerate(self.bags):
            bag.exchange, bag.index = self, index
        self.dims = np.array([bag.table.embedding_dim for bag in self.bags], np.int64)
        self.timings = defaultdict(float)
        self._step = None

    @property
    def global_batch_size(self):
        """Examples in the current step's global batch (all ranks)."""
        return self._current().global_batch_size

    @property
    def batch_start(self):
        """Position of this rank's first example in the global batch."""
        return self._current().batch_start

    # ------------------------------------------------------------- forward
    def forward(self, sparse, batch_size):
        """Fetch the rows of every lookup for this rank's batch; starts a step.

        Args:
            sparse: feature name -> ``Ragged`` (this rank's slice).
            batch_size: examples in this rank's slice.

        Raises ValueError / KeyError for bad ids here, and
        ``DistributedError`` on the other ranks (which stop too).
        """
        num = len(self.bags)
        lookups, error = [], None
        counts = np.zeros((self.comm.size, num + 2), np.int64)  # requests, batch size, error
        try:
            for index, bag in enumerate(self.bags):
                lookup = self._prepare(bag, sparse)
                counts[:, index] = lookup.requests
                lookups.append(lookup)
        except (ValueError, KeyError, TypeError) as exc:
            error = exc
            counts[:, num + 1] = 1
        counts[:, num] = batch_size
        received = self._timed("lookup_exchange", self.comm.alltoall, counts)
        if error is not None:
            raise error
        failed = np.flatnonzero(received[:, num + 1])
        if failed.size:
            raise DistributedError(f"rank(s) {failed.tolist()} could not prepare their lookups "
                                   f"(see their error); this rank stops too")
        sizes = received[:, num]
        self._step = _Step(lookups, int(sizes.sum()), int(sizes[:self.comm.rank].sum()))
        requests_out, requests_in = counts[:, :num], received[:, :num]
        ids_in = self._send_requests(lookups, requests_out, requests_in)
        self._step.fetched = self._send_rows(lookups, requests_out, requests_in, ids_in)

    def _prepare(self, bag, sparse):
        """Validated ids of one lookup, its kept occurrences and their routes."""
        if bag.name not in sparse:
            raise KeyError(f"batch has no sparse feature {bag.name!r}; it has {sorted(sparse)}")
        ragged, table, size = sparse[bag.name], bag.table, self.comm.size
        values, offsets, weights, has_weights, combiner, padding = check_bags(
            table.ids(ragged.values, bag.name), ragged.offsets, ragged.weights,
            table.num_embeddings, bag.combiner, table.padding_idx, bag.name)
        lookup = _Lookup()
        lookup.ids, lookup.num_bags, lookup.dim = ragged, offsets.shape[0] - 1, table.embedding_dim
        lookup.combiner = combiner
        positions, lookup.bag_starts, lookup.kept_weights, lookup.coefs, lookup.divisors = \
            kx.kept_occurrences(values, offsets, weights, has_weights, combiner, padding)
        ids = values[positions]
        keys, starts, order = group_rows(kx.routing_keys(ids, size, table.shard_rows))
        lookup.keys = keys
        lookup.requests, lookup.occ_unique, lookup.occ_rank, lookup.occurrences = \
            kx.route_groups(keys, starts, order, size, table.shard_rows)
        lookup.key_owner = keys // table.shard_rows
        lookup.key_first = _exclusive_cumsum(lookup.requests)
        lookup.owners = ids % size
        lookup.local_rows = ids // size
        return lookup

    def _send_requests(self, lookups, requests_out, requests_in):
        """Alltoallv of the unique local row ids; returns those received."""
        base = _segment_starts(requests_out, np.ones(len(lookups), np.int64))
        send = np.empty(int(requests_out.sum()), np.int64)
        for index, lookup in enumerate(lookups):
            owner = lookup.key_owner
            place = np.arange(lookup.keys.shape[0]) - lookup.key_first[owner]
            send[base[owner, index] + place] = (lookup.keys
                                                - owner * self.bags[index].table.shard_rows)
        return self._timed("lookup_exchange", self.comm.alltoallv, send,
                           requests_out.sum(axis=1), requests_in.sum(axis=1))

    def _send_rows(self, lookups, requests_out, requests_in, ids_in):
        """Owners gather the rows asked of them and send them back; returns
        the fetched rows (flat) and sets each lookup's ``row_start``."""
        dims = self.dims
        id_base = _segment_starts(requests_in, np.ones(len(self.bags), np.int64))
        reply_base = _segment_starts(requests_in, dims)
        reply = np.empty(int((requests_in * dims).sum()), np.float32)
        for source in range(self.comm.size):
            for index, bag in enumerate(self.bags):
                count, dim = int(requests_in[source, index]), int(dims[index])
                if count:
                    ids = ids_in[id_base[source, index]:id_base[source, index] + count]
                    start = reply_base[source, index]
                    rows = reply[start:start + count * dim].reshape(count, dim)
                    if bag.table.weight.is_half:  # exact: the widened 16-bit rows
                        rows[...] = bag.table.weight.widened(ids)
                    else:
                        np.take(bag.table.weight.value, ids, axis=0, out=rows)
        fetched = self._timed("lookup_exchange", self.comm.alltoallv, reply,
                              (requests_in * dims).sum(axis=1), (requests_out * dims).sum(axis=1))
        fetched_base = _segment_starts(requests_out, dims)
        for index, lookup in enumerate(lookups):
            owner = lookup.key_owner
            place = np.arange(lookup.keys.shape[0]) - lookup.key_first[owner]
            unique_start = fetched_base[owner, index] + place * dims[index]
            lookup.row_start = unique_start[lookup.occ_unique]
        return fetched

    def pooled(self, index, ids):
        """[B, D] float32 pooled output of lookup ``index`` (its rows were
        fetched by ``forward``); ``ids`` must be the ``Ragged`` given there."""
        step = self._current()
        lookup = step.lookups[index]
        if ids is not lookup.ids:
            raise ValueError(f"feature {self.bags[index].name!r}: the ids differ from those "
                             f"given to the step's exchange (DistributedModel.forward)")
        out = np.empty((lookup.num_bags, lookup.dim), np.float32)
        kx.pool_fetched_rows(out, step.fetched, lookup.row_start, lookup.bag_starts,
                             lookup.kept_weights, lookup.divisors, lookup.combiner)
        return out

    # ------------------------------------------------------------ backward
    def record_grad(self, index, d_out):
        """Called by a lookup's backward with its upstream gradient [B, D]."""
        step = self._current()
        lookup = step.lookups[index]
        d_out = np.ascontiguousarray(d_out, dtype=np.float32)
        if d_out.shape != (lookup.num_bags, lookup.dim):
            raise ValueError(f"feature {self.bags[index].name!r}: upstream gradient of shape "
                             f"{d_out.shape}, expected {(lookup.num_bags, lookup.dim)}")
        if any(done == index for done, _ in step.grads):
            raise ValueError(f"feature {self.bags[index].name!r} was looked up twice in one "
                             f"step; a sharded lookup runs once per forward")
        step.grads.append((index, d_out))

    def backward(self):
        """Send every recorded upstream gradient to the owners; returns
        {table name: ``RowSparseGrad`` of this rank's shard} for the tables
        whose lookups got a gradient. Ends the step."""
        step = self._current()
        self._step = None
        size, num = self.comm.size, len(self.bags)
        counts = np.zeros((size, 2 * num), np.int64)  # occurrences, rows per owner and lookup
        routes = {}
        for index, _ in step.grads:
            lookup = step.lookups[index]
            routes[index] = kx.owner_rows(lookup.owners, lookup.bag_starts, size)
            counts[:, index] = lookup.occurrences
            counts[:, num + index] = routes[index][1]
        received = self._timed("gradient_exchange", self.comm.alltoall, counts)
        out_bytes, in_bytes = self._segment_bytes(counts), self._segment_bytes(received)
        send = np.empty(int(out_bytes.sum()), np.uint8)
        base = _segment_starts(out_bytes, np.ones(num, np.int64))
        for index, d_out in step.grads:
            self._pack(send, base[:, index], step.lookups[index], routes[index], d_out)
        recv = self._timed("gradient_exchange", self.comm.alltoallv, send,
                           out_bytes.sum(axis=1), in_bytes.sum(axis=1))
        recv_base = _segment_starts(in_bytes, np.ones(num, np.int64))
        return self._owner_grads(step, received, recv, recv_base)

    def _segment_bytes(self, counts):
        """[W, L] bytes of each (rank, lookup) segment: 16 bytes an
        occurrence (int64 row, int32 place, float32 coef) then the float32
        d_out rows, padded to 8 bytes."""
        num = len(self.bags)
        size = 16 * counts[:, :num] + 4 * counts[:, num:] * self.dims
        return (size + 7) // 8 * 8

    def _pack(self, send, base, lookup, route, d_out):
        """Write one lookup's segments (one per owner, starting at byte
        ``base[owner]``) into ``send``."""
        row_bags, row_counts, occ_row = route
        occurrences = lookup.occurrences
        owners, n = lookup.owners, occurrences[lookup.owners]
        start = base[owners]
        send.view(np.int64)[start // 8 + lookup.occ_rank] = lookup.local_rows
        send.view(np.int32)[(start + 8 * n) // 4 + lookup.occ_rank] = occ_row
        send.view(np.float32)[(start + 12 * n) // 4 + lookup.occ_rank] = lookup.coefs
        row_owner = np.repeat(np.arange(self.comm.size), row_counts)
        place = np.arange(row_bags.shape[0]) - _exclusive_cumsum(row_counts)[row_owner]
        rows_start = (base[row_owner] + 16 * occurrences[row_owner]) // 4 + place * d_out.shape[1]
        kx.copy_rows(send.view(np.float32), rows_start, d_out, row_bags)

    def _owner_grads(self, step, counts, recv, base):
        """{table name: gradient}: per lookup, every rank's part in rank
        order as one plan; per table, lookups in the reverse pass's order."""
        num, parts = len(self.bags), {}
        for index, _ in step.grads:
            table, dim = self.bags[index].table, int(self.dims[index])
            ids, places, coefs, rows, first_row = [], [], [], [], 0
            for source in range(self.comm.size):
                n, p = int(counts[source, index]), int(counts[source, num + index])
                at = int(base[source, index])
                ids.append(recv[at:at + 8 * n].view(np.int64))
                places.append(recv[at + 8 * n:at + 12 * n].view(np.int32) + first_row)
                coefs.append(recv[at + 12 * n:at + 16 * n].view(np.float32))
                rows.append(recv[at + 16 * n:at + 16 * n + 4 * p * dim].view(np.float32))
                first_row += p
            ids = np.concatenate(ids)
            rows_u, starts, order = group_rows(ids)
            plan = GradPlan(rows_u, starts, np.concatenate(places)[order].astype(np.int64),
                    np.concatenate(coefs)[order], np.concatenate(rows).reshape(-1, dim), _ONE)
            grad = RowSparseGrad._from_plan(plan, table.weight.shape)
            parts.setdefault(table.name, []).append(grad)
        return {name: ad.concat_row_sparse(grads) for name, grads in parts.items()}

    # -------------------------------------------------------------- helpers
    def _current(self):
        if self._step is None:
            raise ValueError("no lookup exchange in progress: call DistributedModel.forward "
                             "(or train_step) with this rank's batch first")
        return self._step

    def _timed(self, what, collective, *args):
        start = time.perf_counter()
        result = collective(*args)
        self.timings[what] += time.perf_counter() - start
        return result


def _exclusive_cumsum(counts):
    out = np.zeros(counts.shape[0], np.int64)
    np.cumsum(counts[:-1], out=out[1:])
    return out


def _segment_starts(counts, widths):
    """[W, L] start of lookup L's part in rank d's segment of a buffer laid
    out owner-major, lookup-minor; ``counts`` [W, L] items, ``widths`` [L]
    elements an item."""
    sizes = counts * widths
    rank_start = _exclusive_cumsum(sizes.sum(axis=1))
    inner = np.zeros_like(sizes)
    np.cumsum(sizes[:, :-1], axis=1, out=inner[:, 1:])
    return rank_start[:, None] + inner
