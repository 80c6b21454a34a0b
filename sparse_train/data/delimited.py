"""CSV / TSV click logs described by a ``Schema`` (Criteo is one such schema).

The parser turns a chunk of whole lines into labels, dense features and the
token keys of every sparse feature, all in Numba kernels
(``kernels/data_csv.py``); Python runs once a column, never once a row.
"""
import csv

import numpy as np

from ..kernels import data_csv as _csv
from ..kernels import data_hash as _hash
from ..kernels import data_keys as _keys
from ._lines import MAX_LINE_BYTES, first_line
from ._parsed import Parsed, RawFeature
from .errors import DataError, SchemaError
from .numeric import DEFAULT_NORMALIZER, LOG_NORMALIZERS, NORMALIZERS
from .schema import Schema

__all__ = ["DelimitedParser", "resolve_columns"]


def _split_header(line, schema):
    """Column names of a header line (quotes honoured, like the data)."""
    row = next(csv.reader([line], delimiter=schema.delimiter,
                          quotechar=schema.quote or None,
                          quoting=csv.QUOTE_MINIMAL if schema.quote else csv.QUOTE_NONE))
    return [name.strip() for name in row]


def resolve_columns(schema, paths, max_line_bytes=MAX_LINE_BYTES):
    """The column names of the files, checked against the schema before any
    line is read: from ``names`` if given, else from each file's header
    (every file must have the same header). Raises ``SchemaError`` for a
    column the schema reads that the files lack, ``DataError`` for an empty
    file or headers that differ."""
    columns = None
    for path in paths:
        line = first_line(path, max_line_bytes)
        if line is None:
            raise DataError("the file is empty", path)
        if schema.names is not None:
            found = _split_header(line, schema)
            if not schema.header and len(found) != len(schema.names):
                raise DataError(f"line 1 has {len(found)} cells, but the schema "
                                f"({schema.source}) names {len(schema.names)} columns", path, 1)
            columns = list(schema.names)
            continue
        header = _split_header(line, schema)
        if columns is None:
            if len(set(header)) != len(header):
                raise DataError(f"the header repeats column names: {header}", path, 1)
            schema.check_columns(header, f"the header of {path}")
            columns = header
        elif header != columns:
            raise DataError(f"header differs from the first file's ({paths[0]})", path, 1)
    return columns


class SchemaColumns:
    """What a parser of a ``Schema`` (``self.schema``, ``self.normalizer``:
    the normalizer of numeric features that declare none) tells the dataset
    about its columns; shared by the CSV and the Parquet parsers."""

    def _kind(self, feature):
        if feature.bucketize is not None:
            return "bucketize"
        return feature.normalizer or self.normalizer

    @property
    def dense_names(self):
        return tuple(f.name for f in self.schema.dense_features if f.bucketize is None)

    @property
    def numeric_columns(self):
        """(name, kind, buckets) of each numeric feature, in order: kind is a
        normalizer or "bucketize" (buckets: N, else None)."""
        return tuple((f.name, self._kind(f), f.bucketize) for f in self.schema.dense_features)

    @property
    def sparse_columns(self):
        """(name, multi_hot, weighted) of each sparse feature, in order: the
        categorical and multi_hot ones, then the bucketized numeric ones."""
        return (tuple((f.name, f.type == "multi_hot", False)
                      for f in self.schema.sparse_features)
                + tuple((f.name, False, False) for f in self.schema.dense_features
                        if f.bucketize is not None))


class DelimitedParser(SchemaColumns):
    """Parses chunks of a delimited file described by ``schema``.

    Args:
        schema: a ``Schema``.
        columns: the column names of the file (``resolve_columns``).
        normalizer: the normalizer of numeric features that declare none.

    ``parse`` leaves numeric features raw (float64, NaN where missing, in
    ``Parsed.dense``); ``Parsed.encode`` normalizes or bucketizes them with
    the fitted ``NumericEncoder``s.

    >>> import numpy as np
    >>> from sparse_train.data._lines import LineChunk
    >>> s = Schema.from_dict({"data": {"header": False, "names": ["y", "a", "g"]},
    ...     "label": {"column": "y"}, "features": [{"name": "a", "type": "numeric"},
    ...     {"name": "g", "type": "multi_hot", "separator": "|"}]})
    >>> buf = np.frombuffer(b"1,2.5,x|y\\n0,,\\n", np.uint8)
    >>> chunk = LineChunk("f.csv", 0, buf, np.array([0, 10]), np.array([9, 13]), np.array([1, 2]))
    >>> p = DelimitedParser(s, ["y", "a", "g"]).parse(chunk)
    >>> p.labels.tolist(), p.dense[:, 0].tolist(), p.sparse["g"].offsets.tolist()
    ([1.0, 0.0], [2.5, nan], [0, 2, 3])
    """

    #: True: categorical features give raw int64 keys (``hashing.raw_key``,
    #: ids="dynamic") instead of token keys for a vocabulary or buckets.
    raw_keys = False

    def __init__(self, schema, columns, normalizer=DEFAULT_NORMALIZER):
        if not isinstance(schema, Schema):
            raise TypeError(f"schema must be a Schema, got {type(schema).__name__}")
        if normalizer not in NORMALIZERS:
            raise ValueError(f"normalizer must be one of {', '.join(NORMALIZERS)}, "
                             f"got {normalizer!r}")
        self.schema = schema
        self.normalizer = normalizer
        self.columns = list(columns)
        schema.check_columns(self.columns, "the data")
        index = {name: i for i, name in enumerate(self.columns)}
        self._label = index[schema.label]
        self._dense = [(f, index[f.column]) for f in schema.dense_features]
        self._sparse = [(f, index[f.column]) for f in schema.sparse_features]
        self._quote = np.int64(ord(schema.quote) if schema.quote else -1)
        self._marks = np.array([ord(schema.delimiter), self._quote], np.int64)
        # what parse_delimited does with each column: label -> number slot 0,
        # numeric feature j -> slot 1 + j, categorical k -> key row k. A column
        # has one role there; a second feature on it is read afterwards
        # (``_late``) from its cell spans.
        plan = np.zeros((len(self.columns), 3), np.int64)
        plan[:, 2] = -1
        plan[self._label, :2] = (_csv.ROLE_NUMBER, 0)
        self._late = []
        for j, (_, c) in enumerate(self._dense):
            self._assign(plan, c, _csv.ROLE_NUMBER, 1 + j)
        # raw values beyond float32 range are bad lines unless a log brings
        # them back (Criteo's log1p convention)
        self._plain = np.array([self._kind(f) not in LOG_NORMALIZERS for f, _ in self._dense],
                               bool)
        self._categorical = {}
        for feature, c in self._sparse:
            if feature.type == "categorical":
                self._categorical[feature.name] = len(self._categorical)
                self._assign(plan, c, _csv.ROLE_TOKEN, self._categorical[feature.name])
        # cell spans are kept only where needed: multi-hot and late columns,
        # and while counting a vocabulary, categorical ones (token texts)
        needed = [c for f, c in self._sparse if f.type == "multi_hot"]
        needed += [c for c, _, _ in self._late]
        self._plans = {}
        for keep_tokens in (False, True):
            columns = needed + ([c for f, c in self._sparse] if keep_tokens else [])
            kept = list(dict.fromkeys(columns))
            with_spans = plan.copy()
            with_spans[kept, 2] = np.arange(len(kept))
            self._plans[keep_tokens] = with_spans

    def _assign(self, plan, column, role, slot):
        if plan[column, 0] == _csv.ROLE_SKIP:
            plan[column, :2] = (role, slot)
        else:
            self._late.append((column, role, slot))

    def parse(self, chunk, keep_tokens=False):
        """``Parsed`` of a ``LineChunk``; ``keep_tokens`` lets
        ``RawFeature.tokens_at`` read token texts (for a vocabulary)."""
        n, num_cols = len(chunk), len(self.columns)
        buf = chunk.buf
        # raw keys are read from the cells' spans, kept as for token texts
        plan = self._plans[bool(keep_tokens) or self.raw_keys]
        spans = np.zeros((n, int(plan[:, 2].max(initial=-1)) + 1, 2), np.int64)
        numbers = np.zeros((1 + len(self._dense), n), np.float64)
        number_status = np.zeros((1 + len(self._dense), n), np.int8)
        keys = np.zeros((len(self._categorical), n), np.uint64)
        lines = np.stack([chunk.line_starts, chunk.line_ends])
        cells = _csv.parse_delimited(numbers, number_status, keys, spans, buf, lines,
                                     plan, self._marks)
        self._read_late(buf, spans, plan, numbers, number_status, keys)
        bad = cells != num_cols
        labels, label_status = self._labels(numbers[0], number_status[0])
        bad |= label_status != 0
        dense = self._numeric(numbers[1:], number_status[1:])
        bad |= (number_status[1:] == _csv.NUMBER_BAD).any(axis=0)
        sparse = {}
        for feature, c in self._sparse:
            slot = plan[c, 2]
            if feature.type == "multi_hot":
                sparse[feature.name] = self._multi_hot(buf, *_column_spans(spans, slot), feature)
            else:
                cell_spans = (spans[:, slot, 0], spans[:, slot, 1]) if slot >= 0 else None
                sparse[feature.name] = self._categorical_feature(
                    buf, cell_spans, keys[self._categorical[feature.name]])
        reason = None
        if bad.any():
            def reason(i):
                return self._reason(chunk, i, cells, label_status, number_status[1:])
        else:
            bad = None
        return Parsed(labels, dense, sparse, bad, reason,
                      numeric=tuple(f.name for f, _ in self._dense))

    def _read_late(self, buf, spans, plan, numbers, number_status, keys):
        """Fill the numbers or keys of features that share a column with an
        earlier feature, from the column's cell spans."""
        for c, role, slot in self._late:
            starts, ends = _column_spans(spans, plan[c, 2])
            if role == _csv.ROLE_NUMBER:
                _csv.parse_numbers(numbers[slot], number_status[slot], buf, starts, ends,
                                   self._quote)
                continue
            n = starts.shape[0]
            token_starts = np.empty(n, np.int64)
            token_ends = np.empty(n, np.int64)
            token_quoted = np.empty(n, np.uint8)
            _csv.cell_tokens(token_starts, token_ends, token_quoted, buf, starts, ends,
                             self._quote)
            _hash.token_keys(keys[slot], buf, token_starts, token_ends, token_quoted,
                             self._quote)

    def _labels(self, values, status):
        """Labels [n] float32 and status [n] int8: 0 ok, 1 empty, 2 not a
        number, 3 not 0 or 1 without a threshold (a click label: AUC and
        the log loss of a 0/1 outcome need exactly 0 or 1)."""
        status = status.copy()
        threshold = self.schema.threshold
        if threshold is not None:
            labels = (values >= threshold).astype(np.float32)
            status[(status == 0) & ~np.isfinite(values)] = 2
        else:
            labels = values.astype(np.float32)
            status[(status == 0) & ~((values == 0.0) | (values == 1.0))] = 3
        return labels, status

    def _numeric(self, values, status):
        """Raw numeric features [n, d] float64 from values, status [d, n]:
        NaN where missing or bad; marks as ``NUMBER_BAD`` in ``status`` (in
        place) values that are not finite, and values beyond float32 range
        unless the feature's normalizer takes their log."""
        ok = status == _csv.NUMBER_OK
        bad = ok & ~np.isfinite(values)
        if self._plain.any():
            bad[self._plain] |= ok[self._plain] & (
                np.abs(values[self._plain]) > np.finfo(np.float32).max)
        if bad.any():
            status[bad] = _csv.NUMBER_BAD
        values[status != _csv.NUMBER_OK] = np.nan
        return np.ascontiguousarray(values.T)

    def _categorical_feature(self, buf, cell_spans, keys):
        quote = self._quote
        if self.raw_keys:
            keys = _raw_keys(buf, cell_spans[0], cell_spans[1], quote)

        def tokens_at(positions):
            if cell_spans is None:
                raise RuntimeError("token texts need parse(chunk, keep_tokens=True)")
            m = positions.shape[0]
            token_starts = np.empty(m, np.int64)
            token_ends = np.empty(m, np.int64)
            token_quoted = np.empty(m, np.uint8)
            _csv.cell_tokens(token_starts, token_ends, token_quoted, buf,
                             cell_spans[0][positions], cell_spans[1][positions], quote)
            return _token_texts(buf, token_starts, token_ends, token_quoted, quote)
        return RawFeature(keys, np.arange(keys.shape[0] + 1, dtype=np.int64), None, tokens_at)

    def _multi_hot(self, buf, starts, ends, feature):
        n = starts.shape[0]
        counts = np.empty(n, np.int64)
        separator = np.int64(ord(feature.separator))
        _csv.count_separated(counts, buf, starts, ends, separator, self._quote)
        offsets = np.zeros(n + 1, np.int64)
        np.cumsum(counts, out=offsets[1:])
        m = int(offsets[-1])
        token_starts = np.empty(m, np.int64)
        token_ends = np.empty(m, np.int64)
        token_quoted = np.empty(m, np.uint8)
        _csv.split_separated(token_starts, token_ends, token_quoted, buf, starts, ends,
                             offsets, separator, self._quote)
        if self.raw_keys:
            keys = np.empty(m, np.int64)
            _keys.raw_token_keys(keys, buf, token_starts, token_ends, token_quoted,
                                 self._quote, _keys.MISSING_RAW_KEY)
        else:
            keys = np.empty(m, np.uint64)
            _hash.token_keys(keys, buf, token_starts, token_ends, token_quoted, self._quote)
        quote = self._quote

        def tokens_at(positions):
            return _token_texts(buf, token_starts[positions], token_ends[positions],
                                token_quoted[positions], quote)
        return RawFeature(keys, offsets, None, tokens_at)

    def _reason(self, chunk, i, cells, label_status, number_status):
        def cell(c):
            return _split_header(chunk.line_text(i, limit=10 ** 6), self.schema)[c]
        num_cols = len(self.columns)
        if cells[i] == _csv.BAD_QUOTE:
            return f"unterminated quote or text after a closing quote: {chunk.line_text(i)!r}"
        if cells[i] != num_cols:
            return (f"expected {num_cols} cells separated by {self.schema.delimiter!r}, "
                    f"got {cells[i]}: {chunk.line_text(i)!r}")
        label = self.schema.label
        status = label_status[i]
        if status == 1:
            return f"label column {label!r} is empty"
        if status == 2:
            return f"label column {label!r}: {cell(self._label)!r} is not a number"
        if status == 3:
            return (f"label column {label!r}: {cell(self._label)} is not 0 or 1 (a click "
                    f"label, as AUC needs; give [label] threshold to binarise it)")
        for j, (feature, c) in enumerate(self._dense):
            if number_status[j, i] == _csv.NUMBER_BAD:
                return (f"numeric column {feature.column!r}: {cell(c)!r} is not a "
                        f"number within float32 range")
        return "malformed line"


def _raw_keys(buf, starts, ends, quote):
    """Raw int64 keys [n] of one token a cell (``kernels.data_keys``)."""
    n = starts.shape[0]
    token_starts = np.empty(n, np.int64)
    token_ends = np.empty(n, np.int64)
    token_quoted = np.empty(n, np.uint8)
    _csv.cell_tokens(token_starts, token_ends, token_quoted, buf, np.ascontiguousarray(starts),
                     np.ascontiguousarray(ends), quote)
    keys = np.empty(n, np.int64)
    _keys.raw_token_keys(keys, buf, token_starts, token_ends, token_quoted, quote,
                         _keys.MISSING_RAW_KEY)
    return keys


def _column_spans(spans, slot):
    """Contiguous (starts, ends) [n] int64 of one span slot."""
    return (np.ascontiguousarray(spans[:, slot, 0]), np.ascontiguousarray(spans[:, slot, 1]))


def _token_texts(buf, token_starts, token_ends, token_quoted, quote):
    """Decoded texts of token spans (unescaping doubled quotes)."""
    lengths = np.maximum(token_ends - token_starts, 0)
    out = np.empty(int(lengths.sum()), np.uint8)
    offsets = np.empty(token_starts.shape[0] + 1, np.int64)
    _csv.gather_tokens(out, offsets, buf, np.ascontiguousarray(token_starts),
                       np.ascontiguousarray(token_ends), np.ascontiguousarray(token_quoted), quote)
    raw = out.tobytes()
    return [raw[offsets[k]:offsets[k + 1]].decode("utf-8", "surrogateescape")
            for k in range(token_starts.shape[0])]
