"""Embedding-bag layers: one feature's pooled lookup (``EmbeddingBag``) and a
table per feature for a whole ``DataSpec`` (``EmbeddingBagCollection``, the
torchrec name), where several features may share one table; or, with
``dynamic=``, one ``DynamicEmbeddingTable`` per feature over raw int64 keys
(``training_lookups`` marks the lookups of a train step)."""

import contextlib
import contextvars

import numpy as np

from .. import autodiff as ad
from .. import half
from .._aligned import aligned_empty
from ..collections import get_all_collection_keys, get_collection_ref, register_variable
from ..data.batch import Batch, DataSpec
from ..functional import COMBINERS, check_bags
from ..kernels._jit import by_work
from ..kernels.bag_checks import bags_look_valid
from ..kernels.lookup import fuse_bags, fuse_bags_serial
from ..ragged import Ragged
from ..variable import Variable
from .embedding import EmbeddingTable
from .init import layer_seed
from .linear import check_positive

__all__ = ["EmbeddingBag", "EmbeddingBagCollection", "default_combiner", "training_lookups",
           "training_step", "dynamic_embedding_bag", "DYNAMIC_OPTIONS"]

#: The global step of the train step being run (``training_lookups``), None
#: outside one: dynamic tables count and admit keys only inside.
_TRAINING_STEP = contextvars.ContextVar("sparse_train_training_step", default=None)

#: What ``dynamic=`` may set of each ``DynamicEmbeddingTable`` (its keyword
#: arguments; DeepRec's EmbeddingVariable options).
DYNAMIC_OPTIONS = ("filter_freq", "steps_to_live", "l2_weight_threshold", "default_value",
                   "capacity", "max_pending")


@contextlib.contextmanager
def training_lookups(global_step=None):
    """Within this block, lookups of dynamic tables are TRAINING lookups at
    ``int(global_step)`` (0 if None): each key occurrence is counted, keys
    reaching ``filter_freq`` are admitted and every key read is stamped
    with the step (SPEC section 6). Outside it (evaluation, prediction)
    they neither count, admit nor insert. ``training.train_step`` runs the
    forward in it; static tables ignore it.

    >>> with training_lookups(7):
    ...     training_step()
    7
    >>> training_step() is None
    True
    """
    token = _TRAINING_STEP.set(0 if global_step is None else int(global_step))
    try:
        yield
    finally:
        _TRAINING_STEP.reset(token)


def training_step():
    """The global step of the enclosing ``training_lookups``, or None."""
    return _TRAINING_STEP.get()


def _dynamic_table_class():
    from .dynamic_embedding import DynamicEmbeddingTable  # dyncore's module
    return DynamicEmbeddingTable


def _check_dynamic(dynamic, where):
    """``dynamic=`` as a dict of table options (None: not dynamic)."""
    if dynamic is None or dynamic is False:
        return None
    options = {} if dynamic is True else dict(dynamic)
    unknown = sorted(set(options) - set(DYNAMIC_OPTIONS))
    if unknown:
        raise ValueError(f"{where}: dynamic has unknown option(s) {unknown}; options are "
                         f"{list(DYNAMIC_OPTIONS)}")
    return options


def dynamic_embedding_bag(table, ids, combiner="sum", name=None):
    """Pooled lookup of ``ids`` (a ``Ragged`` of raw int64 keys) in a
    ``DynamicEmbeddingTable``, as an autodiff op: [B, D] out (the table's
    ``lookup``, SPEC section 3 per bag) and a row-sparse gradient of
    ``table.weight`` (``table.lookup_grad``: rows of admitted keys only).
    Inside ``training_lookups`` the lookup counts and admits keys at that
    global step; elsewhere it only reads (unknown keys: the default value).
    """
    step = training_step()
    out = table.lookup(ids.values, ids.offsets, ids.weights, combiner,
                       training=step is not None, global_step=step, name=name)
    # the leaf is made after the lookup: an admission may have grown the rows
    leaf = ad.Tensor(table.weight)
    values, offsets, weights = ids.values, ids.offsets, ids.weights

    def backward(g):
        d_out = np.ascontiguousarray(g, dtype=np.float32)
        return (table.lookup_grad(d_out, values, offsets, weights, combiner, name=name),)
    return ad.Tensor.from_op(out, (leaf,), backward, "dynamic_embedding_bag")


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
        dynamic: None (static tables; but a spec whose features have no
            ``num_embeddings``, raw int64 keys from ``ids="dynamic"``,
            gets dynamic ones), or a dict of ``DynamicEmbeddingTable``
            options (``DYNAMIC_OPTIONS``: ``filter_freq``,
            ``steps_to_live``, ``l2_weight_threshold``, ``default_value``,
            ``capacity``; True = {}): then each feature has its own
            ``DynamicEmbeddingTable`` ``"{name}/{feature}"`` in
            ``self.tables`` (no stacked table; ``tables=`` may rename but
            not share), looked up one feature at a time with the same
            combiners, ``variables()`` lists each table's ``weight``, and
            lookups count and admit keys only inside ``training_lookups``
            (``train_step``). ``evict(global_step)`` evicts,
            ``admitted_keys()`` counts.
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
                 initializer="truncated_normal", init_scale=1.0, features=None, dynamic=None,
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
        dynamic = _check_dynamic(dynamic, f"EmbeddingBagCollection {name!r}")
        if dynamic is None and any(f.num_embeddings is None for f in specs):
            dynamic = {}  # raw int64 keys (ids="dynamic"): only a dynamic table takes them
        if dynamic is not None and dtype != "float32":
            raise ValueError(f"EmbeddingBagCollection {name!r}: dynamic tables are float32; "
                             f"dtype={dtype!r} needs static tables (a vocabulary or hashed ids)")
        #: The ``DynamicEmbeddingTable`` options (None: static stacked tables).
        self.dynamic = dynamic
        combiners = combiner if isinstance(combiner, dict) else dict.fromkeys(names, combiner)
        if dynamic is not None:
            self._build_dynamic(specs, tables, combiners, seed, initializer, init_scale)
            return
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
        self.bags = {f.name: EmbeddingBag(self.tables[tables[f.name]],
                                          combiners.get(f.name) or default_combiner(f),
                                          name=f.name)
                     for f in specs}

    def _build_dynamic(self, specs, tables, combiners, seed, initializer, init_scale):
        """One ``DynamicEmbeddingTable`` per feature, ``"{name}/{table}"``
        (keys of two features never share a row, so two features may not
        name one table). ``self.bags`` maps each feature to its combiner."""
        owner = {}
        for feature in specs:
            table = tables.setdefault(feature.name, feature.name)
            if table in owner:
                raise ValueError(f"EmbeddingBagCollection {self.name!r}: features "
                                 f"{owner[table]!r} and {feature.name!r} share table {table!r}; "
                                 f"dynamic tables are one a feature")
            owner[table] = feature.name
        bags = {f.name: combiners.get(f.name) or default_combiner(f) for f in specs}
        for feature, combiner in bags.items():
            _check_combiner(combiner, f"EmbeddingBagCollection {self.name!r} feature {feature!r}")
        cls = _dynamic_table_class()
        extra = {}
        if init_scale != 1:
            if "init_scale" not in _parameters(cls):
                raise ValueError(f"EmbeddingBagCollection {self.name!r}: init_scale "
                                 f"{init_scale} needs a DynamicEmbeddingTable with init_scale")
            extra["init_scale"] = float(init_scale)
        self.tables = {}
        for feature in specs:
            full = f"{self.name}/{tables[feature.name]}"
            self.tables[tables[feature.name]] = cls(
                self.embedding_dim, full, initializer, seed=layer_seed(seed, full),
                **self.dynamic, **extra)
        self.table = self.lookup = None  # no stacked table
        self._feature_row = None
        for table in self.tables.values():
            register_variable(table.weight, embedding=True)
        self._feature_table = {f.name: self.tables[tables[f.name]] for f in specs}
        self.bags = bags

    @property
    def is_dynamic(self):
        """True with ``DynamicEmbeddingTable``s (``dynamic=``)."""
        return self.dynamic is not None

    @property
    def weight(self):
        """The stacked weight ``Variable`` (the optimizer's and checkpoint's)."""
        if self.is_dynamic:
            raise ValueError(f"EmbeddingBagCollection {self.name!r} has a dynamic table per "
                             f"feature, no stacked weight: use variables() or tables")
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
        if self.is_dynamic:
            return self._stacked_dynamic(batch)
        pooled = self.lookup(self.fused_ragged(batch))
        return ad.reshape(pooled, (-1, self.num_features, self.embedding_dim))

    def flat(self, batch):
        """[B, F * D] Tensor: the features' embeddings concatenated."""
        return ad.reshape(self.stacked(batch), (-1, self.num_features * self.embedding_dim))

    def _stacked_dynamic(self, batch):
        """[B, F, D]: one ``dynamic_embedding_bag`` per feature, stacked."""
        sparse = self._sparse(batch)
        num_bags, first = None, None
        for feature in self.bags:
            ragged = sparse[feature]
            if not isinstance(ragged, Ragged):
                raise TypeError(f"feature {feature!r}: expected a Ragged, got "
                                f"{type(ragged).__name__}")
            if num_bags is None:
                num_bags, first = ragged.num_bags, feature
            elif ragged.num_bags != num_bags:
                raise ValueError(f"feature {feature!r} has {ragged.num_bags} bags, "
                                 f"feature {first!r} has {num_bags}")
        pooled = [dynamic_embedding_bag(self._feature_table[feature], sparse[feature],
                                        combiner, feature)
                  for feature, combiner in self.bags.items()]
        if len(pooled) == 1:
            return ad.reshape(pooled[0], (-1, 1, self.embedding_dim))
        return ad.stack(pooled, axis=1)

    def evict(self, global_step):
        """Dynamic tables: ``table.evict(global_step)`` of each (DeepRec's
        GlobalStepEvict / L2WeightEvict, SPEC section 6); returns the number
        of keys evicted. Static tables: 0."""
        if not self.is_dynamic:
            return 0
        return sum(int(table.evict(int(global_step))) for table in self.tables.values())

    def admitted_keys(self):
        """{table name: admitted keys} of the dynamic tables ({} if static)."""
        if not self.is_dynamic:
            return {}
        return {table.name: len(table) for table in self.tables.values()}

    def fused_ragged(self, batch):
        """The ``Ragged`` of the one sum lookup in the stacked table that
        pools every feature: bag ``b * F + f`` holds feature f's ids of
        example b, offset to its table's rows, weighted by the combiner's
        coefficients (``kernels.lookup.fuse_bags``). Each feature's ids are
        checked first (errors name the feature)."""
        if self.is_dynamic:
            raise ValueError(f"EmbeddingBagCollection {self.name!r}: dynamic tables have no "
                             f"fused lookup (one lookup a feature)")
        sparse = self._sparse(batch)
        if not isinstance(batch, Batch):  # a bare dict: nowhere to keep it
            return Ragged(*self._fused_bags(sparse)[:3])
        checked = batch.derived.setdefault("checked_features", {})
        # Built once per batch and kept in ``batch.derived``. The key is every
        # feature's arrays, not the dict: a dict reused with a feature's
        # Ragged replaced must not get the previous ids' lookup. (Arrays
        # changed in place are not seen.)
        key = tuple(_arrays_of(sparse[f]) for f in self.bags)
        # keyed by what the fused ids depend on (each feature's table size,
        # hashing, combiner and row offset), not by the layer: a collection
        # of the same layout reuses them (DeepFM's embeddings and linear
        # term: one fuse a step fewer), and the key keeps no layer alive
        layout = self._fused_layout()
        cached_key, fused = batch.derived.get(("fused_ragged", layout), (None, None))
        if not _same_arrays(cached_key, key):
            # the ids and offsets alone are shared by collections that differ
            # only in combiners, when no bag was dropped (a zero divisor):
            # an unweighted all-sum collection (DeepFM's linear term after
            # its mean-combined embeddings) then skips its fuse
            ids_layout = ("fused_ids", tuple(entry[:3] + entry[4:] for entry in layout))
            ids_key, ids = batch.derived.get(ids_layout, (None, None))
            if _same_arrays(ids_key, key) and self._unweighted_sums(sparse):
                # the very arrays were checked against the same table sizes
                # when those ids were fused: no second scan, no second concat
                fused = Ragged(ids[0], ids[1], None)
                batch.derived[("fused_ragged", layout)] = (key, fused)
                return fused
            values, offsets, weights, complete = self._fused_bags(sparse, checked)
            fused = Ragged(values, offsets, weights)
            batch.derived[("fused_ragged", layout)] = (key, fused)
            if complete:
                batch.derived[ids_layout] = (key, (fused.values, fused.offsets))
        return fused

    def _unweighted_sums(self, sparse):
        """Whether every feature is a ``Ragged`` without weights pooled by
        ``"sum"``: a fuse of ids alone, whatever fused them."""
        return all(isinstance(bag.combiner, str) and bag.combiner == "sum"
                   and isinstance(sparse[feature], Ragged) and sparse[feature].weights is None
                   for feature, bag in self.bags.items())

    def _fused_layout(self):
        """What ``_fused_bags`` reads of this collection besides the batch:
        per feature (name, table size, hash_ids, combiner, first row)."""
        return tuple((feature, bag.table.num_embeddings, bag.table.hash_ids,
                      bag.combiner if isinstance(bag.combiner, str) else id(bag),
                      self._feature_row[feature])
                     for feature, bag in self.bags.items())

    def _sparse(self, batch):
        sparse = batch.sparse if isinstance(batch, Batch) else batch
        missing = [f for f in self.bags if f not in sparse]
        if missing:
            raise KeyError(f"batch has no sparse feature {missing[0]!r}; it has {sorted(sparse)}")
        return sparse

    def _fused_bags(self, sparse, checked=None):
        """(values, offsets, weights or None, complete) of one sum lookup in
        the stacked table pooling every feature (``kernels.lookup.fuse_bags``);
        complete: no id was left out (no zero-divisor bag). ``checked``: a
        batch's dict of features already checked (``_checked_feature``), or
        None. (Sharing another collection's fused ids is decided before,
        in ``fused_ragged``.)"""
        screened = self._screened_bags(sparse)
        if screened is not None:
            return screened
        parts, starts, combiners, rows, num_bags, first = [], [], [], [], None, 0
        weighted = False
        for feature, bag in self.bags.items():
            ragged = sparse[feature]
            if not isinstance(ragged, Ragged):
                raise TypeError(f"feature {feature!r}: expected a Ragged, got "
                                f"{type(ragged).__name__}")
            values, offsets, weights, has_weights, combiner, _ = _checked_feature(
                feature, bag, ragged, checked)
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
        values, offsets, weights = self._fuse(values, np.stack(starts), weights, combiners, rows)
        return values, offsets, (weights if weighted else None), values.shape[0] == first

    def _fuse(self, values, starts, weights, combiners, rows):
        """``kernels.lookup.fuse_bags`` (its serial twin for a small batch,
        ``_jit.by_work``) of the features' concatenated ``values`` and
        ``weights``, ``starts`` [F, B + 1] their bags' starts in ``values``;
        ``combiners``, ``rows``: per feature, its combiner code and its row
        block in the stacked table."""
        fuse = by_work(values.shape[0] * self.embedding_dim, fuse_bags, fuse_bags_serial)
        return fuse(values, starts, weights, np.array(combiners, np.int64),
                    np.array(rows, np.int64))

    def _screened_bags(self, sparse):
        """``_fused_bags`` of plain features (int64 ids and offsets, float32
        weights or none, unhashed tables, named combiners) after ONE scan
        of them all (``kernels.bag_checks.bags_look_valid``), or None: a
        feature that is not plain, or a scan that finds a problem, is left
        to the per-feature checks (``check_bags``), which raise naming it."""
        arrays, num_embeddings, combiners, rows, has_weights = [], [], [], [], []
        for feature, bag in self.bags.items():
            ragged, table = sparse[feature], bag.table
            if (not isinstance(ragged, Ragged) or table.hash_ids
                    or not isinstance(bag.combiner, str) or bag.combiner not in COMBINERS):
                return None
            values, offsets, weights = ragged.values, ragged.offsets, ragged.weights
            if not (_plain(values, np.int64) and _plain(offsets, np.int64) and (
                    weights is None or (_plain(weights, np.float32)
                                        and weights.shape == values.shape))):
                return None
            if arrays and offsets.shape[0] != arrays[0][1].shape[0]:
                return None
            arrays.append((values, offsets, weights))
            num_embeddings.append(table.num_embeddings)
            combiners.append(COMBINERS[bag.combiner])
            rows.append(self._feature_row[feature])
            has_weights.append(weights is not None)
        if not arrays:
            return None
        counts = np.array([0] + [v.shape[0] for v, _, _ in arrays], np.int64)
        value_starts = np.cumsum(counts)
        values = np.concatenate([v for v, _, _ in arrays])
        offsets = np.stack([o for _, o, _ in arrays])
        weights = (np.concatenate([np.ones(v.shape[0], np.float32) if w is None else w
                                   for v, _, w in arrays]) if any(has_weights)
                   else np.empty(0, np.float32))
        if not bags_look_valid(values, value_starts, offsets,
                               np.array(num_embeddings, np.int64), weights):
            return None
        weighted = any(has_weights) or any(c != COMBINERS["sum"] for c in combiners)
        if not any(has_weights):
            weights = np.ones(values.shape[0], np.float32)
        values, offsets, weights = self._fuse(values, offsets + value_starts[:-1, None], weights,
                                              combiners, rows)
        return values, offsets, (weights if weighted else None), values.shape[0] == counts.sum()

    def replace_table(self, table, lookup):
        """Swap the stacked table for ``table`` (e.g. this rank's shard,
        ``distributed.ShardedTable``) and its one lookup for ``lookup`` (fed
        ``fused_ragged``), re-pointing the variable collections
        (``sparse_train.collections``) at the new weight so they do not keep
        the old one alive; the per-feature table views are let go."""
        if self.is_dynamic:
            raise ValueError(f"EmbeddingBagCollection {self.name!r}: dynamic tables cannot be "
                             f"replaced by a shard (not supported yet)")
        old = self.table.weight
        replace_in_collections(old, table.weight)
        self.table, self.lookup = table, lookup
        for view in self.tables.values():
            view.weight = None

    def variables(self):
        """The weight of the tables (row-sparse gradient): the stacked one,
        or each dynamic table's ``weight`` (a ``DynamicVariable``)."""
        if self.is_dynamic:
            return [table.weight for table in self.tables.values()]
        return [self.weight]

    def __repr__(self):
        kind = ", dynamic" if self.is_dynamic else ""
        return (f"EmbeddingBagCollection(name={self.name!r}, features={self.num_features}, "
                f"tables={len(self.tables)}, embedding_dim={self.embedding_dim}{kind})")


def _plain(array, dtype):
    """Whether ``array`` is a C-contiguous 1-D ndarray of ``dtype``."""
    return (isinstance(array, np.ndarray) and array.dtype == dtype and array.ndim == 1
            and array.flags.c_contiguous)


def _same_arrays(cached_key, key):
    """Whether a ``fused_ragged`` cache key (per feature: its Ragged and
    arrays) holds the very same objects as ``key``."""
    return cached_key is not None and len(cached_key) == len(key) and all(
        a is b for old, new in zip(cached_key, key) for a, b in zip(old, new))


def _checked_feature(feature, bag, ragged, checked):
    """``check_bags`` of one feature's ``ragged`` for ``bag``'s table, made
    once per batch: ``checked`` (a batch's dict, or None) keeps it for the
    next collection of the model reading the same feature into a table of
    the same size (DeepFM's embeddings and linear term: 10 checks a step
    fewer). A hit needs the very same arrays (changed in place: not seen,
    as ``fused_ragged``)."""
    table = bag.table
    key = (feature, table.num_embeddings, table.hash_ids)
    arrays = (ragged.values, ragged.offsets, ragged.weights)
    combiner = COMBINERS.get(bag.combiner) if isinstance(bag.combiner, str) else None
    if checked is not None and combiner is not None:
        hit = checked.get(key)
        if hit is not None and all(a is b for a, b in zip(hit[0], arrays)):
            return hit[1]._replace(combiner=combiner)
    bags = check_bags(table.ids(ragged.values, feature), ragged.offsets, ragged.weights,
                      table.num_embeddings, bag.combiner, None, feature)
    if checked is not None:
        checked[key] = (arrays, bags)
    return bags


def _parameters(cls):
    import inspect
    return inspect.signature(cls.__init__).parameters


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
