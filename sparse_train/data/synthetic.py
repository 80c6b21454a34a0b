"""A synthetic click log with a known optimum, generated in memory.

Categorical features draw ids with Zipf frequencies, multi-hot features draw
bags of Zipf ids, numeric features are standard normal. Labels come from a
planted factorisation machine (Rendle 2010), the model DeepFM's FM part can
represent exactly:

    logit = bias + sum_f w_f[id_f] + x . a + sum_{f<g} <v_f[id_f], v_g[id_g]>
    click ~ Bernoulli(sigmoid(logit))

where a multi-hot feature contributes the mean of its bag's w and v (so a
``combiner="mean"`` lookup matches). ``planted_auc`` is the AUC of the
planted logit on the generated rows: what no model can beat on this data
(up to sampling noise); pairwise interactions are why FM / DeepFM can beat
LR. The default sizes keep every id frequent enough to be learnt from
200,000 rows: a plain NumPy FM (Adagrad, 7 epochs, a 90/10 split by seed 0)
came within 0.008 AUC of the planted model on the held-out rows (0.800 vs
0.808).
"""
from functools import lru_cache

import numpy as np

from ..metrics import auc
from ..ragged import Ragged
from ._batching import take_rows
from .batch import Batch, DataSpec, FeatureSpec
from .dataset import Dataset, _check_fraction, held_out_rows
from .vocabulary import RawKeys

__all__ = ["SyntheticClickLog", "write_criteo_like", "zipf_ranks"]


def zipf_ranks(rng, num_ranks, count, exponent=1.1):
    """``count`` draws of a Zipf(exponent) law truncated to ranks [0, num_ranks):
    rank r (0-based) has probability proportional to ``(r + 1) ** -exponent``,
    drawn by inverse CDF (one ``rng.random(count)``; none rejected). The
    float64 CDF of the last two (num_ranks, exponent) is cached.

    Returns:
        [count] int64 ranks.

    >>> ranks = zipf_ranks(np.random.default_rng(0), 1000, 10_000)
    >>> bool((ranks == 0).mean() > (ranks == 9).mean())
    True
    """
    ranks = np.searchsorted(_zipf_cdf(int(num_ranks), float(exponent)), rng.random(count),
                            side="right")
    return np.minimum(ranks, num_ranks - 1).astype(np.int64)


@lru_cache(maxsize=2)
def _zipf_cdf(num_ranks, exponent):
    cdf = np.cumsum(np.arange(1, num_ranks + 1, dtype=np.float64) ** -exponent)
    cdf /= cdf[-1]
    cdf.flags.writeable = False
    return cdf


def _zipf_ids(rng, size, count, exponent, permutation):
    """count ids in [0, size): ``zipf_ranks``, rank r being id permutation[r],
    so frequent ids are spread over the table."""
    return permutation[zipf_ranks(rng, size, count, exponent)]


def _bag_mean(table, values, offsets):
    """Mean of table rows over each bag (all bags non-empty)."""
    sums = np.add.reduceat(table[values], offsets[:-1], axis=0)
    lengths = np.diff(offsets).astype(np.float64)
    return sums / (lengths if sums.ndim == 1 else lengths[:, None])


class SyntheticClickLog(Dataset):
    """A seeded synthetic click log from a planted FM (module docstring).

    Args:
        num_examples: rows.
        categorical_sizes: ids of each categorical feature ``c0, c1, ..``.
        multi_hot_sizes: ids of each multi-hot feature ``m0, ..``; bags hold
            1 to ``max_bag_size`` ids (duplicates possible).
        num_dense: numeric features ``x0, ..`` (standard normal).
        zipf_exponent: id frequency ~ rank ** -zipf_exponent.
        factor_dim: dimension of the planted interaction vectors v.
        linear_scale, interaction_scale, dense_scale: standard deviations of
            the planted logit's per-id, pairwise and numeric parts (before
            the Zipf skew), so their balance can be chosen.
        bias: the planted logit's constant (sets the click rate).
        batch_size: default batch size.
        seed: the seed of the planted model and of the rows.
        raw_keys: the features' ids are raw keys for dynamic tables
            (``ids="dynamic"``): the same ids, but ``FeatureSpec.
            num_embeddings`` is None (a model builds dynamic tables).

    Attributes:
        planted_auc, planted_logloss: of the planted model on these rows
            (the best achievable, up to sampling noise).
        planted_linear_auc: the same without the pairwise term.
        click_rate: the mean label.

    >>> log = SyntheticClickLog(20_000, seed=1)
    >>> log.spec.feature("m0").multi_hot, round(log.planted_auc, 2) > 0.7
    (True, True)
    >>> train, valid = log.split(0.2, seed=0)
    >>> len(next(valid.batches(batch_size=256)))
    256
    """

    def __init__(self, num_examples=200_000, *, categorical_sizes=(100, 60, 40, 30, 20, 15, 10, 8),
                 multi_hot_sizes=(40, 15), max_bag_size=5, num_dense=4, zipf_exponent=1.1,
                 factor_dim=4, linear_scale=1.0, interaction_scale=1.0, dense_scale=0.5,
                 bias=-1.5, batch_size=1024, seed=0, raw_keys=False):
        _check_positive("num_examples", num_examples)
        _check_positive("max_bag_size", max_bag_size)
        _check_positive("factor_dim", factor_dim)
        _check_positive("batch_size", batch_size)
        for size in tuple(categorical_sizes) + tuple(multi_hot_sizes):
            _check_positive("a feature size", size)
        if not categorical_sizes and not multi_hot_sizes:
            raise ValueError("needs at least one categorical or multi-hot feature")
        if isinstance(num_dense, bool) or int(num_dense) != num_dense or num_dense < 0:
            raise ValueError(f"num_dense must be a non-negative integer, got {num_dense!r}")
        if not zipf_exponent > 0:
            raise ValueError(f"zipf_exponent must be > 0, got {zipf_exponent!r}")
        for name, value in (("linear_scale", linear_scale), ("interaction_scale", interaction_scale),
                            ("dense_scale", dense_scale)):
            if not value >= 0:
                raise ValueError(f"{name} must be >= 0, got {value!r}")
        self.batch_size = int(batch_size)
        self.seed = seed
        num_examples = int(num_examples)
        rng = np.random.default_rng(seed)
        features = [(f"c{i}", int(v), False) for i, v in enumerate(categorical_sizes)]
        features += [(f"m{i}", int(v), True) for i, v in enumerate(multi_hot_sizes)]
        num_fields = len(features)
        pairs = max(num_fields * (num_fields - 1) // 2, 1)
        linear_std = linear_scale / np.sqrt(num_fields)
        factor_std = (interaction_scale ** 2 / (pairs * factor_dim)) ** 0.25
        dense_std = dense_scale / np.sqrt(max(num_dense, 1))

        logit = np.full(num_examples, float(bias))
        factor_sum = np.zeros((num_examples, factor_dim))
        factor_sq = np.zeros(num_examples)
        sparse = {}
        for name, size, multi_hot in features:
            w = rng.normal(0.0, linear_std, size)
            v = rng.normal(0.0, factor_std, (size, factor_dim))
            permutation = rng.permutation(size)
            if multi_hot:
                lengths = rng.integers(1, max_bag_size + 1, num_examples)
                offsets = np.zeros(num_examples + 1, np.int64)
                np.cumsum(lengths, out=offsets[1:])
                values = _zipf_ids(rng, size, int(offsets[-1]), zipf_exponent, permutation)
                logit += _bag_mean(w, values, offsets)
                e = _bag_mean(v, values, offsets)
            else:
                values = _zipf_ids(rng, size, num_examples, zipf_exponent, permutation)
                offsets = np.arange(num_examples + 1, dtype=np.int64)
                logit += w[values]
                e = v[values]
            factor_sum += e
            factor_sq += np.einsum("ij,ij->i", e, e)
            sparse[name] = Ragged(values, offsets)
        dense = rng.standard_normal((num_examples, int(num_dense)))
        logit += dense @ rng.normal(0.0, dense_std, int(num_dense))
        linear_logit = logit.copy()
        logit += 0.5 * (np.einsum("ij,ij->i", factor_sum, factor_sum) - factor_sq)
        probability = 1.0 / (1.0 + np.exp(-logit))
        labels = (rng.random(num_examples) < probability).astype(np.float32)

        self._data = Batch(labels, dense.astype(np.float32), sparse)
        self._logit = logit
        self._linear_logit = linear_logit
        self._rows = np.arange(num_examples, dtype=np.int64)
        self._spec = DataSpec(
            tuple(FeatureSpec(name, None if raw_keys else size, multi_hot)
                  for name, size, multi_hot in features),
            tuple(f"x{j}" for j in range(int(num_dense))))
        self._metrics = None
        self._raw_keys = bool(raw_keys)
        self.num_examples = num_examples

    @property
    def spec(self):
        return self._spec

    @property
    def vocabulary(self):
        """Empty: the synthetic ids are table rows already (with
        ``raw_keys``: a ``RawKeys`` per feature)."""
        if self._raw_keys:
            return {f.name: RawKeys() for f in self._spec.sparse_features}
        return {}

    @property
    def dynamic_ids(self):
        return self._raw_keys

    def _view(self, rows):
        view = object.__new__(SyntheticClickLog)
        view.__dict__.update(self.__dict__)
        view._rows = rows
        view._metrics = None
        view.num_examples = int(rows.shape[0])
        return view

    def _planted_metrics(self):
        if self._metrics is None:
            labels = self._data.labels[self._rows]
            logit = self._logit[self._rows]
            # log(1 + e^-z) for clicks, log(1 + e^z) otherwise, stably
            loss = np.logaddexp(0.0, np.where(labels > 0.5, -logit, logit))
            self._metrics = (auc(labels, logit), float(loss.mean()),
                             float(labels.mean()) if labels.size else float("nan"),
                             auc(labels, self._linear_logit[self._rows]))
        return self._metrics

    @property
    def planted_auc(self):
        return self._planted_metrics()[0]

    @property
    def planted_logloss(self):
        return self._planted_metrics()[1]

    @property
    def click_rate(self):
        return self._planted_metrics()[2]

    @property
    def planted_linear_auc(self):
        """AUC of the planted logit without its pairwise term: how much of the
        signal needs interactions (not a bound on what LR can reach)."""
        return self._planted_metrics()[3]

    def batches(self, batch_size=None, shuffle=False, seed=0, drop_last=False):
        """Yield the ``Batch``es of one pass (see ``Dataset.batches``);
        ``shuffle`` permutes all rows with ``seed``."""
        batch_size = self._check_batch_args(batch_size)
        rows = self._rows
        if shuffle:
            rows = np.random.default_rng(seed).permutation(rows)
        return self._batches(rows, batch_size, drop_last)

    def _batches(self, rows, batch_size, drop_last):
        stop = rows.shape[0] - (rows.shape[0] % batch_size if drop_last else 0)
        for start in range(0, stop, batch_size):
            yield take_rows(self._data, rows[start:start + batch_size])

    def split(self, valid_fraction, seed=0):
        """(train, valid) views by ``held_out_rows`` on the row numbers; each
        reports the planted metrics on its own rows."""
        valid_fraction = _check_fraction(valid_fraction)
        held_out = held_out_rows(0, self._rows + 1, valid_fraction, seed)
        return self._view(self._rows[~held_out]), self._view(self._rows[held_out])

    def __repr__(self):
        return (f"SyntheticClickLog({self.num_examples} rows, seed={self.seed}, "
                f"planted_auc={self.planted_auc:.4f})")


def _check_positive(name, value):
    if isinstance(value, bool) or int(value) != value or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")


def write_criteo_like(path, num_rows, seed=0, vocabulary_size=10_000, missing_rate=0.05):
    """Write a Criteo-shaped TSV (label, I1..I13 integers, C1..C26 8-hex
    tokens with Zipf frequencies over ``vocabulary_size`` tokens or fewer a
    column, empty cells missing, no header), e.g. to measure reader speed.
    Labels are random (no signal).

    >>> import tempfile, os
    >>> p = os.path.join(tempfile.mkdtemp(), "day.tsv")
    >>> write_criteo_like(p, 3)
    >>> [len(line.split("\\t")) for line in open(p)]
    [40, 40, 40]
    """
    rng = np.random.default_rng(seed)
    sizes = [max(2, vocabulary_size >> (j % 8)) for j in range(26)]
    vocabularies = [np.array([f"{x:08x}" for x in rng.integers(0, 2 ** 32, size)])
                    for size in sizes]
    block = 100_000
    with open(path, "w", encoding="ascii", newline="\n") as f:
        for start in range(0, num_rows, block):
            n = min(block, num_rows - start)
            columns = [np.where(rng.random(n) < 0.25, "1", "0")]
            ints = rng.geometric(0.02, (13, n)) - 1
            for j in range(13):
                column = ints[j].astype(str)
                column[rng.random(n) < missing_rate] = ""
                columns.append(column)
            for j, tokens in enumerate(vocabularies):
                column = tokens[_zipf_ids(rng, sizes[j], n, 1.1, np.arange(sizes[j]))]
                column[rng.random(n) < missing_rate] = ""
                columns.append(column)
            f.write("\n".join("\t".join(row) for row in zip(*columns)))
            f.write("\n")
