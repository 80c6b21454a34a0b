"""Row sharding of tables (``id mod world_size``) and batch slicing.

Rank r of W owns global rows ``r, r + W, r + 2W, ...`` of every table, at
local rows ``0, 1, 2, ...`` (``local = id // W``): ids spread evenly over
ranks whatever their distribution of hot rows, and no lookup needs a
directory. A rank's optimizer keeps the slots of its shard, so slots live
beside their rows.

A global batch of B examples is split into W contiguous slices, rank r
taking rows ``[B*r//W, B*(r+1)//W)``: the global order of the examples is
rank 0's slice, then rank 1's, ... (the order the backward sums in).
"""
import numpy as np

from ..data._batching import slice_rows
from ..nn.embedding import EmbeddingTable
from ..variable import Variable

__all__ = ["shard_size", "shard_rows", "owned_ids", "ShardedTable", "batch_slice",
           "local_batch"]


def shard_size(num_embeddings, rank, world_size):
    """Rows of a ``num_embeddings``-row table held by ``rank``: the rows it
    owns, or one unused placeholder row when it owns none (a table smaller
    than the world; optimizers do not take 0-row variables).

    >>> [shard_size(10, r, 3) for r in range(3)], shard_size(2, 2, 3)
    ([4, 3, 3], 1)
    """
    return max(1, (num_embeddings - rank + world_size - 1) // world_size)


def shard_rows(num_embeddings, world_size):
    """The largest shard's rows, ``ceil(num_embeddings / world_size)``."""
    return (num_embeddings + world_size - 1) // world_size


def owned_ids(num_embeddings, rank, world_size):
    """Global ids of the rows rank ``rank`` owns, in local row order: [R]
    int64 (R may be 0; see ``shard_size``)."""
    return np.arange(rank, num_embeddings, world_size, dtype=np.int64)


class ShardedTable:
    """This rank's shard of an ``EmbeddingTable``, standing in for it.

    ``weight`` is a ``Variable`` with the full table's name (so slots and
    checkpoint entries keep their names) holding rows ``rank::world_size``.
    ``num_embeddings`` stays the global row count: lookups validate and hash
    global ids, then route each id to its owner.

    Args:
        table: the ``EmbeddingTable`` to shard (its values are copied).
        rank, world_size: this rank and W.

    >>> t = EmbeddingTable(5, 2, "t", initializer="zeros")
    >>> s = ShardedTable(t, rank=1, world_size=2)
    >>> s.weight.shape, s.num_embeddings, s.weight.name
    ((2, 2), 5, 't')
    """

    def __init__(self, table, rank, world_size):
        if not isinstance(table, EmbeddingTable):
            raise TypeError(f"ShardedTable: expected an EmbeddingTable, got {type(table).__name__}")
        if not 0 <= rank < world_size:
            raise ValueError(f"ShardedTable: rank {rank} is outside [0, {world_size})")
        self.num_embeddings = table.num_embeddings
        self.embedding_dim = table.embedding_dim
        self.padding_idx = table.padding_idx
        self.hash_ids = table.hash_ids
        self.seed = table.seed
        self.rank, self.world_size = int(rank), int(world_size)
        self.shard_rows = shard_rows(self.num_embeddings, self.world_size)
        # A strided view copied into a new contiguous array: the full table
        # can be freed once its last reference goes.
        shard = np.ascontiguousarray(table.weight.value[self.rank::self.world_size])
        if shard.shape[0] == 0:  # owns no row: one placeholder row, never looked up
            shard = np.zeros((1,) + shard.shape[1:], shard.dtype)
        source = table.weight
        if source.is_half:  # 16 bits stay 16 bits; exchanges carry the rows widened
            self.weight = Variable(shard, source.name, source.trainable, dtype=source.storage,
                                   rounding=source.rounding, rounding_seed=source.rounding_seed)
            # local row l is global row l * W + rank: stochastic rounding
            # hashes the global row (``optim.base.half_narrowing``)
            self.weight.global_rows = (self.world_size, self.rank)
        else:
            self.weight = Variable(shard, source.name, source.trainable)

    @property
    def name(self):
        return self.weight.name

    def ids(self, values, name=None):
        """Global int64 ids of ``values`` (``id mod num_embeddings`` when
        ``hash_ids``), exactly as ``EmbeddingTable.ids``."""
        return EmbeddingTable.ids(self, values, name)  # reads hash_ids, num_embeddings, name

    def __repr__(self):
        return (f"ShardedTable(name={self.name!r}, num_embeddings={self.num_embeddings}, "
                f"embedding_dim={self.embedding_dim}, rank={self.rank}, "
                f"world_size={self.world_size}, rows={self.weight.shape[0]})")


def batch_slice(num_examples, rank, world_size):
    """(start, stop) of rank ``rank``'s slice of a global batch.

    >>> [batch_slice(10, r, 3) for r in range(3)]
    [(0, 3), (3, 6), (6, 10)]
    """
    return num_examples * rank // world_size, num_examples * (rank + 1) // world_size


def local_batch(batch, comm):
    """This rank's slice of a global ``Batch`` (every rank reads the same
    global batches and keeps its own rows; values are views)."""
    start, stop = batch_slice(batch.size, comm.rank, comm.size)
    return slice_rows(batch, start, stop)
