"""Brute-force references for the readers: plain Python, one row at a time.

Written from the documented formats (``sparse_train/data/*.py`` docstrings),
with Python's ``csv`` module, ``str.split`` and ``float``; the only import
from the library is ``token_key`` (the documented hash, itself tested against
an independent implementation in ``test_data_hashing.py``).
"""
import csv
import math
from collections import Counter
from pathlib import Path

import numpy as np

from sparse_train.data import token_key

SHARED = Path(__file__).resolve().parents[3] / "shared" / "datasets"


def vocabulary_ids(token_lists, min_count):
    """token -> id: 0 missing, 1 OOV, 2 + rank by (-count, key)."""
    counts = Counter(t for tokens in token_lists for t in tokens if t is not None)
    kept = [t for t, c in counts.items() if c >= min_count]
    kept.sort(key=lambda t: (-counts[t], token_key(t)))
    return {t: 2 + r for r, t in enumerate(kept)}


def encode(tokens, ids, mode, buckets=None):
    """Ids of a row's tokens (None = missing)."""
    out = []
    for t in tokens:
        if t is None:
            out.append(0)
        elif mode == "hash":
            out.append(1 + token_key(t) % buckets)
        else:
            out.append(ids.get(t, 1))
    return out


def ragged(rows):
    """(values, offsets) of a list of id lists."""
    offsets = np.zeros(len(rows) + 1, np.int64)
    offsets[1:] = np.cumsum([len(r) for r in rows])
    values = np.array([v for r in rows for v in r], np.int64)
    return values, offsets


def log1p_transform(x):
    return math.log1p(x) if x > 0 else 0.0


def reference_numeric(cells, kind=None, buckets=None, fit=None):
    """Float64 NumPy reference of a numeric column's preprocessing fitted on
    the cells ``fit`` (default: ``cells``): cells (str, "" = missing) ->
    values [n] float32, or ids [n] int64 for kind "bucketize". kind None =
    the default, log_standard."""
    kind = kind or "log_standard"
    fit = cells if fit is None else fit
    missing = np.array([c == "" for c in cells])
    x = np.array([float(c) if c != "" else 0.0 for c in cells], np.float64)
    seen = np.array([float(c) for c in fit if c != ""], np.float64)
    if kind == "bucketize":
        edges = np.unique(np.quantile(seen, np.arange(1, buckets) / buckets))
        ids = np.array([1 + int(np.sum(edges <= v)) for v in x], np.int64)
        return np.where(missing, 0, ids)
    if kind == "none":
        y = x
    elif kind == "log1p":
        y = np.array([log1p_transform(v) for v in x])
    elif kind == "minmax":
        lo, hi, mean = seen.min(), seen.max(), seen.mean()
        y = (np.where(missing, mean, x) - lo) / ((hi - lo) or 1.0)
    else:
        t = np.sign(x) * np.log1p(np.abs(x)) if kind == "log_standard" else x
        ts = np.sign(seen) * np.log1p(np.abs(seen)) if kind == "log_standard" else seen
        mean, std = ts.mean(), np.sqrt(np.mean((ts - ts.mean()) ** 2))
        y = (t - mean) / (std or 1.0)
    return np.where(missing, 0.0 if kind != "minmax" else y, y).astype(np.float32)


def parse_csv_rows(text, delimiter, header, names=None):
    """(column names, list of dict rows) of CSV text."""
    reader = csv.reader(text.splitlines(), delimiter=delimiter, quotechar='"')
    rows = [r for r in reader if r]
    if header:
        columns, rows = (names or rows[0]), rows[1:]
    else:
        columns = names
    return columns, [dict(zip(columns, r)) for r in rows]


def reference_delimited(rows, label, threshold, features, mode="vocabulary", min_count=1,
                        buckets=None):
    """What a ``Schema`` reader must produce for dict rows.

    features: list of (name, type, separator, transform); a numeric
    feature's transform is its normalizer (None: the default). Returns
    (labels, dense [n, d] float32, {name: (values, offsets)}).
    """
    labels = []
    for r in rows:
        v = float(r[label])
        labels.append(float(v >= threshold) if threshold is not None else v)
    dense_cols = []
    sparse = {}
    for name, kind, separator, transform in features:
        if kind == "numeric":
            dense_cols.append(reference_numeric([r[name] for r in rows], transform))
            continue
        token_rows = []
        for r in rows:
            cell = r[name]
            if kind == "multi_hot":
                tokens = [t for t in cell.split(separator) if t] or [None]
            else:
                tokens = [cell if cell else None]
            token_rows.append(tokens)
        ids = vocabulary_ids(token_rows, min_count) if mode == "vocabulary" else None
        sparse[name] = ragged([encode(t, ids, mode, buckets) for t in token_rows])
    dense = np.array(dense_cols, np.float32).T.reshape(len(rows), -1)
    return np.array(labels, np.float32), dense, sparse


def parse_pairs_rows(text, with_field):
    """(labels, list of rows of (field, index, value)) of libsvm/libffm text."""
    labels, rows = [], []
    for line in text.splitlines():
        parts = line.split()
        if not parts:
            continue
        y = float(parts[0])
        labels.append(0.0 if y == -1 else y)
        row = []
        for token in parts[1:]:
            pieces = token.split(":")
            if with_field:
                row.append((int(pieces[0]), int(pieces[1]), float(pieces[2])))
            else:
                row.append((None, int(pieces[0]), float(pieces[1])))
        rows.append(row)
    return np.array(labels, np.float32), rows


def reference_pairs(rows, field_of, feature_names, mode="vocabulary", min_count=1, buckets=None):
    """{name: (values, offsets, weights)} for pair rows; ``field_of(k, field,
    index)`` gives the feature number of pair k of a row."""
    per_feature = {name: [] for name in feature_names}
    for row in rows:
        bags = {name: [] for name in feature_names}
        for k, (field, index, value) in enumerate(row):
            bags[feature_names[field_of(k, field, index)]].append((str(index), value))
        for name in feature_names:
            per_feature[name].append(bags[name])
    out = {}
    for name, bag_rows in per_feature.items():
        token_rows = [[t for t, _ in bag] for bag in bag_rows]
        ids = vocabulary_ids(token_rows, min_count) if mode == "vocabulary" else None
        values, offsets = ragged([encode(t, ids, mode, buckets) for t in token_rows])
        weights = np.array([w for bag in bag_rows for _, w in bag], np.float32)
        out[name] = (values, offsets, weights)
    return out


def collect(dataset, **kwargs):
    """All batches of one pass, concatenated into one (labels, dense, sparse)."""
    batches = list(dataset.batches(**kwargs))
    labels = np.concatenate([b.labels for b in batches])
    dense = np.concatenate([b.dense for b in batches])
    sparse = {}
    for name in batches[0].sparse:
        values, offsets, weights = [], [0], []
        for b in batches:
            r = b.sparse[name]
            values.append(r.values)
            offsets.extend((r.offsets[1:] + offsets[-1]).tolist())
            if r.weights is not None:
                weights.append(r.weights)
        sparse[name] = (np.concatenate(values), np.array(offsets, np.int64),
                        np.concatenate(weights) if weights else None)
    return labels, dense, sparse


def assert_same_batches(a, b):
    """Two lists of batches are equal array for array."""
    assert len(a) == len(b)
    for x, y in zip(a, b):
        np.testing.assert_array_equal(x.labels, y.labels)
        np.testing.assert_array_equal(x.dense, y.dense)
        assert list(x.sparse) == list(y.sparse)
        for name in x.sparse:
            rx, ry = x.sparse[name], y.sparse[name]
            np.testing.assert_array_equal(rx.values, ry.values)
            np.testing.assert_array_equal(rx.offsets, ry.offsets)
            if rx.weights is None:
                assert ry.weights is None
            else:
                np.testing.assert_array_equal(rx.weights, ry.weights)
