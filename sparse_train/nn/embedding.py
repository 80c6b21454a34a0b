"""``EmbeddingTable``: a [num_embeddings, embedding_dim] float32 (or
16-bit) weight."""
import zlib

import numpy as np

from .. import functional as F
from .. import half
from .._aligned import aligned_empty
from ..variable import Variable

__all__ = ["EmbeddingTable", "INITIALIZERS"]

_INIT_CHUNK_ROWS = 1 << 16  # initialise in chunks: no float64 copy of a big table


def _truncated_normal(rng, shape, stddev):
    """Normal(0, stddev) redrawn beyond 2 stddev (TF ``truncated_normal``)."""
    out = rng.standard_normal(shape)
    bad = np.abs(out) > 2.0
    while bad.any():
        out[bad] = rng.standard_normal(int(bad.sum()))
        bad = np.abs(out) > 2.0
    return out * stddev


INITIALIZERS = {
    # TF embedding_column's default: truncated normal, stddev 1/sqrt(D).
    "truncated_normal": lambda rng, shape, d: _truncated_normal(rng, shape, 1.0 / np.sqrt(d)),
    # torch.nn.Embedding's default: N(0, 1).
    "normal": lambda rng, shape, d: rng.standard_normal(shape),
    # Uniform(-1/sqrt(D), 1/sqrt(D)).
    "uniform": lambda rng, shape, d: rng.uniform(-1.0, 1.0, shape) / np.sqrt(d),
    "zeros": lambda rng, shape, d: np.zeros(shape),
}


def _is_integer(value):
    """A whole number (``5``, ``np.int64(5)``, ``5.0``), not a bool or a string."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, float, np.number)):
        return False
    return bool(np.isfinite(value)) and int(value) == value


class EmbeddingTable:
    """An embedding table and its lookups (torch ``nn.EmbeddingBag`` vocabulary).

    The weight is the ``Variable`` ``self.weight`` (named ``name``), shape
    ``[num_embeddings, embedding_dim]`` float32, filled by a seeded
    initializer, row by row chunk so a large table is never held twice.

    Args:
        num_embeddings: V, number of rows (> 0).
        embedding_dim: D (> 0).
        name: the weight's name (key of its slots and checkpoint entry).
        initializer: ``"truncated_normal"`` (TF default, stddev 1/sqrt(D)),
            ``"normal"`` (torch default), ``"uniform"`` (+-1/sqrt(D)) or
            ``"zeros"``.
        seed: initializer seed; default: derived from ``name`` (CRC-32), so
            tables differ and runs repeat.
        padding_idx: optional row kept at zero and skipped by lookups.
        hash_ids: if True, an id >= V maps to ``id mod V`` instead of being an
            error (negative ids are still an error).
        out: optional C-contiguous [V, D] array to initialise in place and
            use as the weight (e.g. rows of a stacked table), of the storage
            dtype (float32, or ``half.HALF_DTYPES[dtype]``).
        dtype: ``"float32"`` (default), or a 16-bit table (SPEC §7):
            ``"bfloat16"`` (stored as uint16 bit patterns) or ``"float16"``
            (np.float16). Half the memory a row; lookups widen rows to
            float32, optimizers update each row in float32 (slots stay
            float32) and narrow it back. The initial values are drawn in
            float64 and narrowed nearest-even.
        rounding: how a 16-bit table's updates narrow: ``"nearest"`` (even)
            or ``"stochastic"`` (seeded by ``seed``, the global step, the
            row and the column: the same bits for any thread count).

    >>> t = EmbeddingTable(10, 4, "user_id")
    >>> t.lookup([1, 2, 3], [0, 1, 3]).shape
    (2, 4)
    """

    def __init__(self, num_embeddings, embedding_dim, name,
                 initializer="truncated_normal", seed=None, padding_idx=None,
                 hash_ids=False, out=None, dtype="float32", rounding="nearest"):
        if not isinstance(name, str) or not name:
            raise ValueError(f"EmbeddingTable: name must be a non-empty string, got {name!r}")
        for what, value in (("num_embeddings", num_embeddings), ("embedding_dim", embedding_dim)):
            if not _is_integer(value) or value <= 0:
                raise ValueError(f"EmbeddingTable {name!r}: {what} must be a positive integer, got {value!r}")
        if initializer not in INITIALIZERS:
            raise ValueError(
                f"EmbeddingTable {name!r}: initializer must be one of {sorted(INITIALIZERS)}, "
                f"got {initializer!r}")
        if padding_idx is not None and (not _is_integer(padding_idx)
                                        or not 0 <= padding_idx < num_embeddings):
            raise ValueError(
                f"EmbeddingTable {name!r}: padding_idx must be an integer in "
                f"[0, {num_embeddings}), got {padding_idx!r}")
        half.check_table_dtype(dtype, f"EmbeddingTable {name!r}")
        half.check_rounding(rounding, f"EmbeddingTable {name!r}")
        storage = np.dtype(np.float32) if dtype == "float32" else half.HALF_DTYPES[dtype]
        self.num_embeddings = int(num_embeddings)
        self.embedding_dim = int(embedding_dim)
        self.padding_idx = None if padding_idx is None else int(padding_idx)
        self.hash_ids = bool(hash_ids)
        self.seed = zlib.crc32(name.encode()) if seed is None else int(seed)
        shape = (self.num_embeddings, self.embedding_dim)
        if out is None:
            value = aligned_empty(shape, storage, f"embedding table {name!r}")
        elif (out.shape != shape or out.dtype != storage or not out.flags.c_contiguous):
            raise ValueError(f"EmbeddingTable {name!r}: out must be a C-contiguous {shape} "
                             f"{storage} array, got {out.shape} {out.dtype}")
        else:
            value = out
        rng = np.random.default_rng(self.seed)
        for start in range(0, self.num_embeddings, _INIT_CHUNK_ROWS):
            chunk = value[start:start + _INIT_CHUNK_ROWS]
            drawn = INITIALIZERS[initializer](rng, chunk.shape, self.embedding_dim)
            if dtype == "float32":
                chunk[...] = drawn
            else:
                half.narrow(drawn, dtype, out=chunk)
        if padding_idx is not None:
            value[padding_idx] = 0  # +0.0 in every format
        self.weight = (Variable(value, name) if dtype == "float32" else
                       Variable(value, name, dtype=dtype, rounding=rounding,
                                rounding_seed=self.seed))

    @classmethod
    def wrap(cls, weight):
        """An ``EmbeddingTable`` over an existing [V, D] float32 (or 16-bit)
        ``Variable`` (no copy, no initialisation; no padding, no hashing)."""
        if (not isinstance(weight, Variable) or weight.value.ndim != 2
                or (weight.dtype != np.float32 and not weight.is_half)):
            raise ValueError(f"EmbeddingTable.wrap: expected a [V, D] float32 Variable, got {weight!r}")
        table = cls.__new__(cls)
        table.num_embeddings, table.embedding_dim = weight.shape
        table.padding_idx, table.hash_ids, table.seed = None, False, None
        table.weight = weight
        return table

    @property
    def name(self):
        return self.weight.name

    @property
    def dtype(self):
        """``"float32"``, ``"bfloat16"`` or ``"float16"``: how rows are stored."""
        return self.weight.storage

    def ids(self, values, name=None):
        """``values`` as int64 ids of this table (``id mod V`` if ``hash_ids``).

        Non-integer ids (e.g. floats) are an error, never truncated."""
        values = F.as_ids(values, "values", name or self.name)
        if not self.hash_ids:
            return values
        negative = np.flatnonzero(values < 0)
        if negative.size:
            raise ValueError(
                f"feature {name or self.name!r}: id {values[negative[0]]} at position "
                f"{negative[0]} is negative (hashed tables take ids >= 0)")
        return values % self.num_embeddings

    def lookup(self, values, offsets, weights=None, combiner="sum", name=None):
        """``functional.embedding_bag`` over this table: [B, D] float32."""
        return F.embedding_bag(self.weight, self.ids(values, name), offsets, weights,
                               combiner, self.padding_idx, name or self.name)

    def lookup_grad(self, d_out, values, offsets, weights=None, combiner="sum", name=None):
        """``functional.embedding_bag_grad`` for this table: a RowSparseGrad."""
        return F.embedding_bag_grad(d_out, self.ids(values, name), offsets,
                                    self.num_embeddings, weights, combiner,
                                    self.padding_idx, name or self.name)

    def __repr__(self):
        extra = "" if self.dtype == "float32" else f", dtype={self.dtype!r}"
        return (f"EmbeddingTable(name={self.name!r}, num_embeddings={self.num_embeddings}, "
                f"embedding_dim={self.embedding_dim}{extra})")
