"""Embedding-bag layers: one feature's pooled lookup (``EmbeddingBag``) and a
table per feature for a whole ``DataSpec`` (``EmbeddingBagCollection``, the
torchrec name), where several features may share one table."""

import numpy as np

from .. import autodiff as ad
from ..collections import register_variable
from ..data.batch import Batch, DataSpec
from ..functional import COMBINERS
from ..ragged import Ragged
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

    >>> from sparse_train.data import DataSpec, FeatureSpec
    >>> spec = DataSpec((FeatureSpec("a", 5), FeatureSpec("b", 7)))
    >>> ebc = EmbeddingBagCollection(spec, 3, "demo/emb", tables={"a": "ab", "b": "ab"})
    >>> [t.name for t in ebc.tables.values()], ebc.tables["ab"].num_embeddings
    (['demo/emb/ab'], 7)
    """

    def __init__(self, spec, embedding_dim, name, seed=0, combiner=None, tables=None,
                 initializer="truncated_normal", init_scale=1.0, features=None):
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
        sizes = {}
        for feature in specs:
            table = tables.setdefault(feature.name, feature.name)
            sizes[table] = max(sizes.get(table, 0), feature.num_embeddings)
        self.tables = {}
        for table, size in sizes.items():
            full = f"{name}/{table}"
            self.tables[table] = EmbeddingTable(size, self.embedding_dim, full, initializer,
                                                seed=layer_seed(seed, full))
            if init_scale != 1:
                self.tables[table].weight.value *= np.float32(init_scale)
            register_variable(self.tables[table].weight, embedding=True)
        combiners = combiner if isinstance(combiner, dict) else dict.fromkeys(names, combiner)
        self.bags = {f.name: EmbeddingBag(self.tables[tables[f.name]],
                                          combiners.get(f.name) or default_combiner(f),
                                          name=f.name)
                     for f in specs}

    @property
    def feature_names(self):
        return list(self.bags)

    @property
    def num_features(self):
        return len(self.bags)

    def __call__(self, batch):
        """[B, D] Tensor per feature, in feature order."""
        sparse = batch.sparse if isinstance(batch, Batch) else batch
        leaves = {}  # one graph leaf per table per call
        outputs = []
        for feature, bag in self.bags.items():
            if feature not in sparse:
                raise KeyError(f"batch has no sparse feature {feature!r}; it has {sorted(sparse)}")
            table = bag.table.name
            if table not in leaves:
                leaves[table] = ad.Tensor(bag.table.weight)
            outputs.append(bag(sparse[feature], leaves[table]))
        return outputs

    def stacked(self, batch):
        """[B, F, D] Tensor: the features' embeddings side by side."""
        return ad.stack(self(batch), axis=1)

    def variables(self):
        """The tables' weights (row-sparse gradients)."""
        return [table.weight for table in self.tables.values()]

    def __repr__(self):
        return (f"EmbeddingBagCollection(name={self.name!r}, features={self.num_features}, "
                f"tables={len(self.tables)}, embedding_dim={self.embedding_dim})")
