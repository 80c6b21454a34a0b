"""Embedding-bag layers: one feature's pooled lookup (``EmbeddingBag``) and a
table per feature for a whole ``DataSpec`` (``EmbeddingBagCollection``, the
torchrec name), where several features may share one table."""

import weakref

import numpy as np

from .. import autodiff as ad
from .. import half
from .._aligned import aligned_empty
from ..collections import get_all_collection_keys, get_collection_ref, register_variable
from ..data.batch import Batch, DataSpec
from ..functional import COMBINERS, check_bags
from ..kernels.lookup import fuse_bags
from ..ragged import Ragged
from ..variable import Variable
from .embedding import EmbeddingTable
from .init import layer_seed
from .linear import check_positive

__all__ = ["EmbeddingBag", "EmbeddingBagCollection", "default_combiner"]


def default_combiner(feature):
    """``"mean"`` for an unweighted multi-hot ``FeatureSpec``, else ``"sum"``."""
    return "mean" if feature.multi_hot and not feature.weighted else "sum"


def _check_combiner(combiner, where):
    if combiner not in COMBINERS:
        raise ValueError(f"{where}: combiner must be one of {sorted(COMBINERS)}, got {combiner!r}")
    return combiner


def _arrays_of(ragged):
    """The objects a fused lookup is built from (compared by identity)."""
    if not isinstance(ragged, Ragged):
        return (ragged,)
    return (ragged, ragged.values, ragged.offsets, ragged.weights)


class EmbeddingBag:
    """Pooled lookup of one feature in an ``EmbeddingTable``, as an autodiff op
    (``autodiff.embedding_bag``: [B, D] out, row-sparse table gradient).

    Hashing (``table.hash_ids``) and ``table.padding_idx`` apply. Several
    ``EmbeddingBag``s may share a table; their gradients add up to one.

    Args:
        table: the ``EmbeddingTable``.
        combiner: ``"sum"``, ``"mean"`` or ``"sqrtn"`` (SPEC §3).
        name: feature name, used in error messages.

    >>> table = EmbeddingTable(10, 4, "demo/ids")
    >>> bag = EmbeddingBag(table, "mean", name="ids")
    >>> bag(Ragged([1, 2, 3], [0, 2, 3])).shape
    (2, 4)
    """

    def __init__(self, table, combiner="sum", name=None):
        if not isinstance(table, EmbeddingTable):
            raise TypeError(f"EmbeddingBag: table must be an EmbeddingTable, got "
                            f"{type(table).__name__}")
        self.table = table
        self.name = name or table.name
        self.combiner = _check_combiner(combiner, f"EmbeddingBag {self.name!r}")

    def __call__(self, ids, weight=None):
        """``ids`` (a ``Ragged``) -> [B, D] Tensor.

        ``weight`` is an optional Tensor of the table to read (lets several
        lookups share one graph leaf); default: a new leaf of ``table.weight``.
        """
        if not isinstance(ids, Ragged):
            raise TypeError(f"feature {self.name!r}: expected a Ragged, got {type(ids).__name__}")
        weight = ad.Tensor(self.table.weight) if weight is None else weight
        return ad.embedding_bag(weight, self.table.ids(ids.values, self.name), ids.offsets,
                                ids.weights, self.combiner, self.table.padding_idx, self.name)

    def __repr__(self):
        return (f"EmbeddingBag(feature={self.name!r}, table={self.table.name!r}, "
                f"combiner={self.combiner!r})")


class EmbeddingBagCollection:
    """One embedding bag per categorical feature of a ``DataSpec``.

    Feature f of bag b gives ``e[b, f] = combine_{i in bag} w_i table_f[i]``
    (SPEC §3). By default each feature has its own table, named
    ``"{name}/{feature}"``, of the feature's ``num_embeddings`` rows.
    ``tables={"feature": "table"}`` maps features onto named tables: features
    mapped to one table share it (its size is the largest of theirs), and
    their lookups add to one gradient for it.

    Storage (torchrec's / FBGEMM's "table-batched embedding"): all tables are
    row ranges of ONE stacked table ``self.table`` whose weight, named
    ``"{name}/weight"``, is ``self.weight``; the features of a batch are pooled by ONE
    sum lookup (``self.lookup`` of ``fused_ragged(batch)``) whose backward is
    ONE row-sparse gradient, applied by one optimizer call. With 26 tables
    this turns 78 small kernel calls a step into 3. ``self.tables[t]`` is an
    ``EmbeddingTable`` whose weight is a view of its rows (for reading and
    initialisation); ``variables()`` is ``[self.weight]``. Mean and sqrtn
    features are pooled as sums with per-id weights ``w_i / divisor``, which
    gives the same gradient and the same output up to rounding. The per-
    feature ``bags`` hold each feature's table and combiner.

    Args:
        spec: the ``DataSpec``.
        embedding_dim: D.
        name: scope of the tables.
        seed: model seed (each table's seed is derived from it and its name).
        combiner: a combiner for every feature, or ``{feature: combiner}``;
            None (default) or a feature missing from the dict: ``"mean"`` for
            an unweighted multi-hot feature (TF's and torch's default), else
            ``"sum"`` (a weighted feature's values then scale its rows, as in
            an FM over libsvm data; for one id a bag the two agree).
        tables: optional ``{feature: table name}``.
        initializer: ``EmbeddingTable`` initializer (default TF's
            truncated normal, stddev 1/sqrt(D)).
        init_scale: multiplies the initial values (in place, no copy); 1
            keeps the initializer's own scale.
        features: optional subset of feature names (default: all, in order).
        dtype: ``"float32"`` (default), ``"bfloat16"`` or ``"float16"``: the
            stacked table's storage (``EmbeddingTable``; SPEC §7). With 16
            bits, ``init_scale`` multiplies the narrowed initial values,
            which are narrowed again.
        rounding: ``"nearest"`` or ``"stochastic"``, of a 16-bit table's
            updates (stochastic: seeded from ``seed`` and the stacked
            weight's name).

    >>> from sparse_train.data import DataSpec, FeatureSpec
    >>> spec = DataSpec((FeatureSpec("a", 5), FeatureSpec("b", 7)))
    >>> ebc = EmbeddingBagCollection(spec, 3, "demo/emb", tables={"a": "ab", "b": "ab"})
    >>> [t.name for t in ebc.tables.values()], ebc.tables["ab"].num_embeddings, ebc.weight.shape
    (['demo/emb/ab'], 7, (7, 3))
    """

    def __init__(self, spec, embedding_dim, name, seed=0, combiner=None, tables=None,
                 initializer="truncated_normal", init_scale=1.0, features=None,
                 dtype="float32", rounding="nearest"):
        if not isinstance(spec, DataSpec):
            raise TypeError(f"EmbeddingBagCollection: spec must be a DataSpec, got "
                            f"{type(spec).__name__}")
        self.embedding_dim = check_positive(f"EmbeddingBagCollection {name!r}", "embedding_dim",
                                            embedding_dim)
        self.name = name
        names = [f.name for f in spec.sparse_features] if features is None else list(features)
        specs = [spec.feature(n) for n in names]  # KeyError names a missing feature
        tables = dict(tables or {})
        if not init_scale > 0:
            raise ValueError(f"EmbeddingBagCollection {name!r}: init_scale must be > 0, "
                             f"got {init_scale!r}")
        unknown = sorted(set(tables) - set(names))
        if unknown:
            raise ValueError(f"EmbeddingBagCollection {name!r}: tables names unknown "
                             f"features {unknown}")
        half.check_table_dtype(dtype, f"EmbeddingBagCollection {name!r}")
        half.check_rounding(rounding, f"EmbeddingBagCollection {name!r}")
        sizes = {}
        for feature in specs:
            table = tables.setdefault(feature.name, feature.name)
            sizes[table] = max(sizes.get(table, 0), feature.num_embeddings)
        storage = np.float32 if dtype == "float32" else half.HALF_DTYPES[dtype]
        stacked = aligned_empty((sum(sizes.values()), self.embedding_dim), storage,
                                f"the embedding tables of {name!r} ("
                                + ", ".join(f"{t}: {n} rows" for t, n in sizes.items()) + ")")
        self.tables, self._row_offset, first = {}, {}, 0
        for table, size in sizes.items():
            full = f"{name}/{table}"
            self.tables[table] = EmbeddingTable(size, self.embedding_dim, full, initializer,
                                                seed=layer_seed(seed, full),
                                                out=stacked[first:first + size], dtype=dtype)
            self._row_offset[table] = first
            first += size
        if init_scale != 1:
            _scale_rows(stacked, np.float32(init_scale), dtype)
        #: The stacked table of every feature, and its one lookup.
        self.table = EmbeddingTable.wrap(
            Variable(stacked, f"{name}/weight") if dtype == "float32" else
            Variable(stacked, f"{name}/weight", dtype=dtype, rounding=rounding,
                     rounding_seed=layer_seed(seed, f"{name}/weight")))
        self.lookup = EmbeddingBag(self.table, "sum", name=name)
        register_variable(self.weight, embedding=True)
        self._feature_row = {f.name: self._row_offset[tables[f.name]] for f in specs}
        combiners = combiner if isinstance(combiner, dict) else dict.fromkeys(names, combiner)
        self.bags = {f.name: EmbeddingBag(self.tables[tables[f.name]],
                                          combiners.get(f.name) or default_combiner(f),
                                          name=f.name)
                     for f in specs}

    @property
    def weight(self):
        """The stacked weight ``Variable`` (the optimizer's and checkpoint's)."""
        return self.table.weight

    @property
    def feature_names(self):
        return list(self.bags)

    @property
    def num_features(self):
        return len(self.bags)

    def __call__(self, batch):
        """[B, D] Tensor per feature, in feature order (slices of ``stacked``)."""
        stacked = self.stacked(batch)
        return [ad.select(stacked, f, axis=1) for f in range(self.num_features)]

    def stacked(self, batch):
        """[B, F, D] Tensor: the features' embeddings side by side."""
        pooled = self.lookup(self.fused_ragged(batch))
        return ad.reshape(pooled, (-1, self.num_features, self.embedding_dim))

    def flat(self, batch):
        """[B, F * D] Tensor: the features' embeddings concatenated."""
        return ad.reshape(self.stacked(batch), (-1, self.num_features * self.embedding_dim))

    def fused_ragged(self, batch):
        """The ``Ragged`` of the one sum lookup in the stacked table that
        pools every feature: bag ``b * F + f`` holds feature f's ids of
        example b, offset to its table's rows, weighted by the combiner's
        coefficients (``kernels.lookup.fuse_bags``). Each feature's ids are
        checked first (errors name the feature)."""
        sparse = self._sparse(batch)
        if not isinstance(batch, Batch):  # a bare dict: nowhere to keep it
            return Ragged(*self._fused_bags(sparse))
        # Built once per batch and kept in ``batch.derived``. The key is every
        # feature's arrays, not the dict: a dict reused with a feature's
        # Ragged replaced must not get the previous ids' lookup. (Arrays
        # changed in place are not seen.)
        key = tuple(_arrays_of(sparse[f]) for f in self.bags)
        # keyed by this layer's id, with a weak reference to tell it from a
        # later layer that reuses the id (and without keeping the layer alive)
        owner, cached_key, fused = batch.derived.get(("fused_ragged", id(self)),
                                                     (None, None, None))
        if owner is None or owner() is not self or len(cached_key) != len(key) or any(
                a is not b for old, new in zip(cached_key, key) for a, b in zip(old, new)):
            fused = Ragged(*self._fused_bags(sparse))
            batch.derived[("fused_ragged", id(self))] = (weakref.ref(self), key, fused)
        return fused

    def _sparse(self, batch):
        sparse = batch.sparse if isinstance(batch, Batch) else batch
        missing = [f for f in self.bags if f not in sparse]
        if missing:
            raise KeyError(f"batch has no sparse feature {missing[0]!r}; it has {sorted(sparse)}")
        return sparse

    def _fused_bags(self, sparse):
        """(values, offsets, weights or None) of one sum lookup in the stacked
        table pooling every feature (``kernels.lookup.fuse_bags``)."""
        parts, starts, combiners, rows, num_bags, first = [], [], [], [], None, 0
        weighted = False
        for feature, bag in self.bags.items():
            ragged = sparse[feature]
            if not isinstance(ragged, Ragged):
                raise TypeError(f"feature {feature!r}: expected a Ragged, got "
                                f"{type(ragged).__name__}")
            values, offsets, weights, has_weights, combiner, _ = check_bags(
                bag.table.ids(ragged.values, feature), ragged.offsets, ragged.weights,
                bag.table.num_embeddings, bag.combiner, None, feature)
            if num_bags is None:
                num_bags = offsets.shape[0] - 1
            elif offsets.shape[0] - 1 != num_bags:
                raise ValueError(f"feature {feature!r} has {offsets.shape[0] - 1} bags, "
                                 f"feature {next(iter(self.bags))!r} has {num_bags}")
            parts.append((values, weights if has_weights else None))
            starts.append(offsets + first)
            first += values.shape[0]
            combiners.append(combiner)
            rows.append(self._feature_row[feature])
            weighted |= has_weights or combiner != COMBINERS["sum"]
        values = np.concatenate([v for v, _ in parts]) if parts else np.empty(0, np.int64)
        weights = np.concatenate([np.ones(v.shape[0], np.float32) if w is None else w
                                  for v, w in parts]) if parts else np.empty(0, np.float32)
        values, offsets, weights = fuse_bags(values, np.stack(starts), weights,
                                             np.array(combiners, np.int64),
                                             np.array(rows, np.int64))
        return values, offsets, (weights if weighted else None)

    def replace_table(self, table, lookup):
        """Swap the stacked table for ``table`` (e.g. this rank's shard,
        ``distributed.ShardedTable``) and its one lookup for ``lookup`` (fed
        ``fused_ragged``), re-pointing the variable collections
        (``sparse_train.collections``) at the new weight so they do not keep
        the old one alive; the per-feature table views are let go."""
        old = self.table.weight
        replace_in_collections(old, table.weight)
        self.table, self.lookup = table, lookup
        for view in self.tables.values():
            view.weight = None

    def variables(self):
        """The weight of the tables (row-sparse gradient): the stacked one."""
        return [self.weight]

    def __repr__(self):
        return (f"EmbeddingBagCollection(name={self.name!r}, features={self.num_features}, "
                f"tables={len(self.tables)}, embedding_dim={self.embedding_dim})")


def _scale_rows(stacked, scale, dtype, chunk_rows=1 << 16):
    """In place: ``stacked *= scale`` (float32), a 16-bit table widened and
    narrowed chunk by chunk (never a float32 copy of the whole table)."""
    if dtype == "float32":
        stacked *= scale
        return
    for start in range(0, stacked.shape[0], chunk_rows):
        chunk = stacked[start:start + chunk_rows]
        half.narrow(half.widen(chunk, dtype) * scale, dtype, out=chunk)


def replace_in_collections(old, new):
    """Point every variable collection (``sparse_train.collections``) that
    holds ``old`` at ``new`` instead."""
    for key in get_all_collection_keys():
        items = get_collection_ref(key)
        for i, item in enumerate(items):
            if item is old:
                items[i] = new
