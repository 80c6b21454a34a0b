"""Numeric features: normalizers and quantile buckets fitted on training rows.

Each numeric column of a CSV / Criteo log has one encoder, fitted in the
pass that counts the vocabulary (``TextDataset.build_ids``) and kept beside
the vocabulary (``save_vocabulary``, ``Dataset.preprocessing_state``), so
validation and later data get the training statistics. With ``x`` a raw
value and ``m``, ``s``, ``lo``, ``hi`` the training mean, population standard
deviation (ddof 0, as scikit-learn's ``StandardScaler``), minimum and maximum:

    "none"          y = x                            missing -> 0
    "log1p"         y = log(1 + x) if x > 0 else 0   missing -> 0 (Criteo's)
    "standard"      y = (x - m) / s                  missing -> 0 (= the mean)
    "minmax"        y = (x - lo) / (hi - lo)         missing -> (m - lo) / (hi - lo)
    "log_standard"  t = sign(x) log(1 + |x|), y = (t - m_t) / s_t over t
                                                     missing -> 0
    bucketize = N   id = 1 + #{boundaries b_k <= x}, id 0 for missing;
                    b_k = the k/N quantiles (k = 1..N-1, NumPy's linear
                    interpolation) of the training values, duplicates
                    dropped; the column becomes a categorical feature of
                    ``len(b) + 2`` ids

A zero spread (s = 0, hi = lo) counts as 1. ``DEFAULT_NORMALIZER`` applies to a
numeric column that declares nothing: "log_standard". CTR numerics are mostly
heavy-tailed counts (Criteo's I1..I13 reach 10^5..10^6): a plain z-score
leaves their tails tens of standard deviations out, where they dominate a
linear logit; the signed log compresses them first (keeping the sign of
negative values, unlike Criteo's log1p), then the z-score gives every column
unit scale for one shared learning rate, with missing cells at the mean.
Measured with scikit-learn's LR (5 x 5-fold CV) on the DeepCTR Criteo sample,
all features: log_standard AUC 0.648, log1p 0.634, standard 0.603, buckets
0.582, minmax 0.524; on clothing_reviews (age, a feedback count; the words
carry the signal) every choice is within 0.0005 (0.9387-0.9392).

Statistics are exact over the first ``MAX_STATISTIC_ROWS`` training rows
(file order), so they have the same bits whatever the batch size, chunk size
or thread count; rows beyond that do not change them.
"""
import numpy as np

__all__ = ["NumericEncoder", "NumericStatistics", "NORMALIZERS", "DEFAULT_NORMALIZER",
           "MAX_STATISTIC_ROWS", "numeric_encoder"]

NORMALIZERS = ("none", "log1p", "standard", "minmax", "log_standard")
#: Normalizers whose log takes any finite raw value into float32 range.
LOG_NORMALIZERS = ("log1p", "log_standard")
DEFAULT_NORMALIZER = "log_standard"
#: Training rows (the first, in file order) the statistics are computed on.
MAX_STATISTIC_ROWS = 1 << 20
_NEEDS_STATISTICS = ("standard", "minmax", "log_standard", "bucketize")


def _signed_log1p(x):
    return np.sign(x) * np.log1p(np.abs(x))


class NumericEncoder:
    """The fitted rule of one numeric column (see the module docstring).

    Args:
        kind: one of ``NORMALIZERS`` or "bucketize".
        mean, std, min, max: training statistics (of the signed log for
            "log_standard"); needed by the kinds that use them.
        boundaries: "bucketize": sorted, unique bucket boundaries.

    >>> e = NumericEncoder("standard", mean=2.0, std=4.0)
    >>> e.apply(np.array([6.0, np.nan])).tolist()
    [1.0, 0.0]
    >>> b = NumericEncoder("bucketize", boundaries=[1.0, 5.0])
    >>> b.num_embeddings, b.ids(np.array([0.0, 1.0, 7.0, np.nan])).tolist()
    (4, [1, 2, 3, 0])
    """

    def __init__(self, kind, mean=None, std=None, min=None, max=None, boundaries=None):
        if kind not in NORMALIZERS + ("bucketize",):
            raise ValueError(f"normalizer must be one of {', '.join(NORMALIZERS)} or "
                             f"bucketize, got {kind!r}")
        self.kind = kind
        self.mean, self.std, self.min, self.max = (
            None if v is None else float(v) for v in (mean, std, min, max))
        if kind in ("standard", "log_standard") and (self.mean is None or self.std is None):
            raise ValueError(f"normalizer {kind!r} needs mean and std")
        if kind == "minmax" and None in (self.mean, self.min, self.max):
            raise ValueError("normalizer 'minmax' needs mean, min and max")
        self.boundaries = None
        if kind == "bucketize":
            if boundaries is None:
                raise ValueError("bucketize needs boundaries")
            b = np.asarray(boundaries, np.float64)
            if b.ndim != 1 or not np.isfinite(b).all() or (np.diff(b) <= 0).any():
                raise ValueError("bucket boundaries must be finite and increasing")
            self.boundaries = b

    @property
    def num_embeddings(self):
        """Ids of a bucketized column (0 missing, 1.. buckets); None otherwise."""
        return None if self.boundaries is None else self.boundaries.shape[0] + 2

    def apply(self, values):
        """Normalized values [n] float32 of raw values [n] float64 (NaN = missing)."""
        x = np.asarray(values, np.float64)
        missing = np.isnan(x)
        kind = self.kind
        if kind == "none":
            y = x
        elif kind == "log1p":
            y = np.where(x > 0.0, np.log1p(np.maximum(x, 0.0)), 0.0)
        elif kind == "minmax":
            spread = (self.max - self.min) or 1.0
            y = (np.where(missing, self.mean, x) - self.min) / spread
            missing = None
        elif kind in ("standard", "log_standard"):
            t = _signed_log1p(x) if kind == "log_standard" else x
            y = (t - self.mean) / (self.std or 1.0)
        else:
            raise ValueError("a bucketized column gives ids, not values")
        if missing is not None:
            y = np.where(missing, 0.0, y)
        return y.astype(np.float32)

    def ids(self, values):
        """Bucket ids [n] int64 of raw values [n] float64 (NaN = missing -> 0)."""
        x = np.asarray(values, np.float64)
        out = 1 + np.searchsorted(self.boundaries, x, side="right").astype(np.int64)
        out[np.isnan(x)] = 0
        return out

    def to_dict(self):
        out = {"type": "numeric", "normalizer": self.kind}
        for key in ("mean", "std", "min", "max"):
            if getattr(self, key) is not None:
                out[key] = getattr(self, key)
        if self.boundaries is not None:
            out["boundaries"] = self.boundaries.tolist()
        return out

    @classmethod
    def from_dict(cls, d):
        return cls(d["normalizer"], d.get("mean"), d.get("std"), d.get("min"), d.get("max"),
                   d.get("boundaries"))

    def __eq__(self, other):
        return isinstance(other, NumericEncoder) and self.to_dict() == other.to_dict()

    def __repr__(self):
        return f"NumericEncoder({self.to_dict()})"


def numeric_encoder(kind, values=None, bucketize=None):
    """The ``NumericEncoder`` of ``kind`` fitted on training values [n]
    float64 (NaN = missing; ignored); "bucketize" takes ``bucketize`` = N.

    >>> numeric_encoder("minmax", np.array([1.0, np.nan, 3.0])).to_dict()
    {'type': 'numeric', 'normalizer': 'minmax', 'mean': 2.0, 'min': 1.0, 'max': 3.0}
    """
    if kind not in _NEEDS_STATISTICS:
        return NumericEncoder(kind)
    x = np.asarray(values, np.float64)
    x = x[~np.isnan(x)]
    if kind == "bucketize":
        if x.shape[0] == 0:
            return NumericEncoder(kind, boundaries=[])
        q = np.arange(1, bucketize, dtype=np.float64) / bucketize
        return NumericEncoder(kind, boundaries=np.unique(np.quantile(x, q)))
    if x.shape[0] == 0:  # nothing seen: the identity on the (0, 1) scale
        return NumericEncoder(kind, mean=0.0, std=1.0, min=0.0, max=1.0)
    if kind == "log_standard":
        x = _signed_log1p(x)
    if kind == "minmax":
        return NumericEncoder(kind, mean=x.mean(), min=x.min(), max=x.max())
    return NumericEncoder(kind, mean=x.mean(), std=x.std())


def needs_statistics(kind):
    return kind in _NEEDS_STATISTICS


class NumericStatistics:
    """Keeps one column's raw values of the first ``limit`` training rows
    (file order), for ``numeric_encoder``.

    >>> s = NumericStatistics("standard", limit=3)
    >>> s.add(np.array([1.0, 2.0])); s.add(np.array([3.0, 100.0]))
    >>> s.encoder().mean
    2.0
    """

    def __init__(self, kind, bucketize=None, limit=MAX_STATISTIC_ROWS):
        self.kind, self.bucketize, self.limit = kind, bucketize, int(limit)
        self._parts, self._rows = [], 0

    def add(self, values):
        room = self.limit - self._rows
        if room > 0:
            part = np.array(values[:room], np.float64)
            self._parts.append(part)
            self._rows += part.shape[0]

    @property
    def full(self):
        """Whether ``limit`` rows are kept (later rows change nothing)."""
        return self._rows >= self.limit

    def encoder(self):
        values = np.concatenate(self._parts) if self._parts else np.zeros(0)
        return numeric_encoder(self.kind, values, self.bucketize)
