"""Parquet click logs, read row group by row group (never the whole file).

A Parquet file is parsed into the same intermediate as a CSV chunk (a
``Parsed`` of token keys, labels and dense features), so a Parquet file and
the CSV of the same rows give the same vocabulary, the same batches and the
same trained model, bit for bit:

    Arrow column                      feature         token of a row
    int*, uint*, string, dictionary   categorical     the decimal text / the string
    list<int* | string>               multi_hot       each element; nulls and ""
                                                      dropped, none left -> missing
    string + schema multi_hot         multi_hot       split on the schema's separator
    float*, (int* with a schema)      numeric         the value; null is missing (normalized as in a CSV)

A null or ``""`` categorical cell is missing (id 0), like an empty CSV cell.
Without a TOML schema the columns' Arrow types choose each feature's type and
``label`` names the label column; with one, the schema's features and label
are read and every column's type is checked against it when the files are
opened. Rows are numbered from 1 within each file (like lines), and a bad
row raises ``DataError`` as ``file:row: row group g: what``.

Memory: one slice of at most ``chunk_rows`` rows of one row group is parsed
at a time (``ParquetFile.iter_batches`` over that row group), so peak memory
depends on the row groups' size, not the file's.
"""
import glob
import os
from dataclasses import dataclass

import numpy as np

from ..kernels import data_hash as _hash
from ..kernels import data_keys as _keys
from ._parsed import Parsed, RawFeature
from .dataset import TextDataset
from .delimited import SchemaColumns
from .errors import DataError, SchemaError
from .numeric import DEFAULT_NORMALIZER, LOG_NORMALIZERS, NORMALIZERS
from .schema import Schema

__all__ = ["ParquetParser", "ParquetDataset", "RowChunk", "parquet_paths", "infer_schema"]

#: Rows a default 4 MiB ``chunk_bytes`` reads at once: ``chunk_bytes // 64``.
BYTES_PER_ROW = 64


def _arrow():
    try:
        import pyarrow as pa
        import pyarrow.compute as pc
        import pyarrow.parquet as pq
    except ImportError:  # pragma: no cover - exercised without the extra
        raise ImportError("format 'parquet' needs pyarrow: pip install "
                          "'sparse_train[parquet]'") from None
    return pa, pc, pq


def parquet_paths(path):
    """The files of ``path``: a file, a glob pattern (sorted matches) or a
    list of either, in order. Raises ``FileNotFoundError`` naming a
    pattern without matches."""
    items = list(path) if isinstance(path, (list, tuple)) else [path]
    paths = []
    for item in items:
        text = os.fspath(item)
        if glob.has_magic(text):
            found = sorted(glob.glob(text))
            if not found:
                raise FileNotFoundError(f"no Parquet file matches {text!r}")
            paths.extend(found)
        else:
            paths.append(text)
    return paths


def _kind(arrow_type):
    """"int", "string", "float", "bool", "list_int", "list_string" or None."""
    pa, _, _ = _arrow()
    t = pa.types
    if t.is_dictionary(arrow_type):
        arrow_type = arrow_type.value_type
    if t.is_integer(arrow_type):
        return "int"
    if t.is_string(arrow_type) or t.is_large_string(arrow_type) or (
            hasattr(t, "is_string_view") and t.is_string_view(arrow_type)):
        return "string"
    if t.is_floating(arrow_type):
        return "float"
    if t.is_boolean(arrow_type):
        return "bool"
    if t.is_list(arrow_type) or t.is_large_list(arrow_type):
        inner = _kind(arrow_type.value_type)
        return f"list_{inner}" if inner in ("int", "string") else None
    return None


def infer_schema(arrow_schema, label, source="<parquet>"):
    """A ``Schema`` from an Arrow schema: integer and string columns are
    categorical, lists of them multi_hot, floating columns numeric; the
    column ``label`` (integer, floating or boolean) is the label. A column of any
    other type is an error naming it (a TOML schema reads chosen columns)."""
    if label is None:
        raise SchemaError("format 'parquet' without a schema needs label= (the label column)",
                          source)
    if label not in arrow_schema.names:
        raise SchemaError(f"label column {label!r} is not in the file (columns: "
                          f"{', '.join(arrow_schema.names)})", source)
    features = []
    for field in arrow_schema:
        if field.name == label:
            continue
        kind = _kind(field.type)
        if kind in ("int", "string"):
            features.append({"name": field.name, "type": "categorical"})
        elif kind in ("list_int", "list_string"):
            features.append({"name": field.name, "type": "multi_hot", "separator": "|"})
        elif kind == "float":
            features.append({"name": field.name, "type": "numeric"})
        else:
            raise SchemaError(f"column {field.name!r} has type {field.type}, which is none of "
                              f"integer, string, list of those, floating (give a schema to "
                              f"read other columns only)", source)
    return Schema.from_dict({"label": {"column": label}, "features": features}, source)


@dataclass
class RowChunk:
    """Rows of one row group of one file: an Arrow ``RecordBatch`` and the
    1-based row number in the file of each row (the ``LineChunk``
    interface ``TextDataset`` reads)."""
    path: str
    file_index: int
    row_group: int
    table: object
    line_numbers: np.ndarray

    def __len__(self):
        return int(self.line_numbers.shape[0])

    def select(self, rows):
        """The chunk restricted to ``rows`` (a bool mask or a slice)."""
        pa, _, _ = _arrow()
        if isinstance(rows, slice):
            start, stop, _ = rows.indices(len(self))
            table = self.table.slice(start, max(stop - start, 0))
        else:
            table = self.table.filter(pa.array(np.asarray(rows, bool)))
        return RowChunk(self.path, self.file_index, self.row_group, table,
                        self.line_numbers[rows])


class ParquetParser(SchemaColumns):
    """Turns ``RowChunk``s into ``Parsed`` (labels, dense, token keys).

    Args:
        schema: the ``Schema`` (given or ``infer_schema``'s).
        arrow_schemas: {path: Arrow schema} of every file; each column the
            schema reads must be in every file, with a type the feature
            can read (checked here, before any row is read).
    """

    #: True: categorical features give raw int64 keys (``hashing.raw_key``,
    #: ids="dynamic"); integer columns then pass their values unchanged.
    raw_keys = False

    def __init__(self, schema, arrow_schemas, normalizer=DEFAULT_NORMALIZER):
        if normalizer not in NORMALIZERS:
            raise ValueError(f"normalizer must be one of {', '.join(NORMALIZERS)}, "
                             f"got {normalizer!r}")
        self.schema = schema
        self.normalizer = normalizer
        self._columns = list(dict.fromkeys(
            [schema.label] + [f.column for f in schema.features]))
        self._kinds = None
        for path, arrow_schema in arrow_schemas.items():
            kinds = self._check_file(path, arrow_schema)
            self._kinds = self._kinds or kinds
        # raw values beyond float32 range are bad rows unless a log brings
        # them back (as DelimitedParser)
        self._plain = np.array([self._kind(f) not in LOG_NORMALIZERS
                                for f in schema.dense_features], bool)

    def _check_file(self, path, arrow_schema):
        schema, kinds = self.schema, {}
        names = arrow_schema.names
        wanted = [("label", schema.label, ("int", "float", "bool"))]
        wanted += [(f"feature {f.name!r}", f.column, _READABLE[f.type]) for f in schema.features]
        for what, column, allowed in wanted:
            if column not in names:
                raise SchemaError(f"{what} reads column {column!r}, which the file does not "
                                  f"have (columns: {', '.join(names)})", path)
            kind = _kind(arrow_schema.field(column).type)
            if kind not in allowed:
                raise SchemaError(f"{what}: column {column!r} has type "
                                  f"{arrow_schema.field(column).type}; it must be "
                                  f"{' or '.join(_TYPE_WORDS[k] for k in allowed)}", path)
            if self._kinds is not None and self._kinds.get(column) != kind:
                raise SchemaError(f"column {column!r} has type {arrow_schema.field(column).type} "
                                  f"here but {_TYPE_WORDS[self._kinds[column]]} in the "
                                  f"first file", path)
            kinds[column] = kind
        return kinds

    @property
    def columns(self):
        """The Arrow columns read, label first."""
        return list(self._columns)

    def chunks(self, paths, chunk_rows):
        """``RowChunk``s of at most ``chunk_rows`` rows over the files in
        order, row group by row group."""
        _, _, pq = _arrow()
        for file_index, path in enumerate(paths):
            with pq.ParquetFile(path) as reader:
                first = 1
                for group in range(reader.metadata.num_row_groups):
                    for table in reader.iter_batches(batch_size=chunk_rows, row_groups=[group],
                                                     columns=self._columns,
                                                     use_threads=False):
                        n = table.num_rows
                        if n:
                            yield RowChunk(path, file_index, group, table,
                                           np.arange(first, first + n, dtype=np.int64))
                        first += n

    def parse(self, chunk, keep_tokens=False):
        """``Parsed`` of a ``RowChunk`` (``keep_tokens``: unused, token
        texts are always at hand in the Arrow arrays)."""
        table = chunk.table
        labels, label_status = self._labels(table.column(self.schema.label))
        n = labels.shape[0]
        numbers = np.zeros((len(self.schema.dense_features), n), np.float64)
        number_bad = np.zeros((len(self.schema.dense_features), n), bool)
        number_missing = np.zeros_like(number_bad)
        for j, feature in enumerate(self.schema.dense_features):
            numbers[j], number_bad[j], number_missing[j] = _numbers(table.column(feature.column))
        dense = self._numeric(numbers, number_bad, number_missing)
        sparse = {f.name: self._sparse(table.column(f.column), f)
                  for f in self.schema.sparse_features}
        bad = (label_status != 0) | number_bad.any(axis=0)
        reason = None
        if bad.any():
            def reason(i):
                return self._reason(chunk, i, label_status, number_bad)
        else:
            bad = None
        return Parsed(labels, dense, sparse, bad, reason,
                      numeric=tuple(f.name for f in self.schema.dense_features))

    # -- columns
    def _labels(self, column):
        """Labels [n] float32 and status [n] int8 (``DelimitedParser``'s:
        1 missing, 2 not finite, 3 not 0 or 1 without a threshold)."""
        values, missing = _as_float64(column)
        status = np.where(missing, 1, 0).astype(np.int8)
        status[(status == 0) & ~np.isfinite(values)] = 2
        threshold = self.schema.threshold
        if threshold is not None:
            labels = (values >= threshold).astype(np.float32)
        else:
            labels = values.astype(np.float32)
            status[(status == 0) & ~((values == 0.0) | (values == 1.0))] = 3
        return labels, status

    def _numeric(self, values, bad, missing):
        """Raw numeric features [n, d] float64 of values [d, n], NaN where
        null or bad (``Parsed.encode`` normalizes them, as for a CSV); marks
        in ``bad`` (in place) values beyond float32 range unless the
        feature's normalizer takes their log."""
        if self._plain.any():
            bad[self._plain] |= ~missing[self._plain] & (
                np.abs(values[self._plain]) > np.finfo(np.float32).max)
        values[bad | missing] = np.nan
        return np.ascontiguousarray(values.T)

    def _sparse(self, column, feature):
        pa, pc, _ = _arrow()
        kind = _kind(column.type)
        if feature.type == "categorical":
            strings = _strings(column)
            keys = _string_keys(strings, self.raw_keys)
            offsets = np.arange(keys.shape[0] + 1, dtype=np.int64)
            return RawFeature(keys, offsets, None,
                              lambda positions: strings.take(pa.array(positions)).to_pylist())
        if kind == "string":  # a separated string column
            column = pc.split_pattern(_strings(column), feature.separator)
        lists = column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column
        bounds = np.asarray(lists.offsets, np.int64)
        values = _strings(lists.values.slice(int(bounds[0]), int(bounds[-1] - bounds[0])))
        item_keys = _string_keys(values, self.raw_keys)
        # empty tokens are dropped, as in a CSV cell
        keep = (item_keys != (_keys.MISSING_RAW_KEY if self.raw_keys else 0))
        bag = np.repeat(np.arange(bounds.shape[0] - 1), np.diff(bounds))[keep]
        counts = np.bincount(bag, minlength=bounds.shape[0] - 1)
        lengths = np.maximum(counts, 1)  # a bag without a token holds the missing id
        offsets = np.zeros(lengths.shape[0] + 1, np.int64)
        np.cumsum(lengths, out=offsets[1:])
        keys = (np.full(int(offsets[-1]), _keys.MISSING_RAW_KEY, np.int64) if self.raw_keys
                else np.zeros(int(offsets[-1]), np.uint64))
        source = np.full(keys.shape[0], -1, np.int64)
        kept = np.flatnonzero(keep)
        slots = offsets[:-1][bag] + (np.arange(kept.shape[0]) - np.repeat(
            np.cumsum(counts) - counts, counts))
        keys[slots] = item_keys[kept]
        source[slots] = kept

        def tokens_at(positions):
            return values.take(pa.array(source[positions])).to_pylist()
        return RawFeature(keys, offsets, None, tokens_at)

    def _reason(self, chunk, i, label_status, number_bad):
        where = f"row group {chunk.row_group}"
        label = self.schema.label
        status = label_status[i]
        if status == 1:
            return f"{where}: label column {label!r} is null"
        if status == 2:
            return f"{where}: label column {label!r} is not a finite number"
        if status == 3:
            value = chunk.table.column(label)[i].as_py()
            return (f"{where}: label column {label!r}: {value} is not 0 or 1 (a click "
                    f"label, as AUC needs; give [label] threshold to binarise it)")
        for j, feature in enumerate(self.schema.dense_features):
            if number_bad[j, i]:
                value = chunk.table.column(feature.column)[i].as_py()
                return (f"{where}: numeric column {feature.column!r}: {value!r} is not a "
                        f"number within float32 range")
        return f"{where}: malformed row"


_READABLE = {"categorical": ("int", "string"),
             "multi_hot": ("list_int", "list_string", "string"),
             "numeric": ("int", "float")}
_TYPE_WORDS = {"int": "integer", "string": "string", "float": "floating", "bool": "boolean",
               "list_int": "a list of integers", "list_string": "a list of strings"}


def _combined(column):
    pa, _, _ = _arrow()
    return column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column


def _strings(column):
    """A column as a (large) string array: integers as decimal text."""
    pa, pc, _ = _arrow()
    column = _combined(column)
    if pa.types.is_dictionary(column.type):
        column = column.dictionary_decode()
    if not (pa.types.is_string(column.type) or pa.types.is_large_string(column.type)):
        column = pc.cast(column, pa.large_string())
    return column


def _string_keys(strings, raw=False):
    """Token keys [n] uint64 of a string array; 0 for null and "". ``raw``:
    raw int64 keys instead (``kernels.data_keys``; ``MISSING_RAW_KEY`` for
    null and "")."""
    pa, _, _ = _arrow()
    n = len(strings)
    buffers = strings.buffers()
    dtype = np.int64 if pa.types.is_large_string(strings.type) else np.int32
    offsets = np.frombuffer(buffers[1], dtype)[strings.offset:strings.offset + n + 1] \
        if buffers[1] is not None else np.zeros(n + 1, dtype)
    data = np.frombuffer(buffers[2], np.uint8) if buffers[2] is not None \
        else np.zeros(1, np.uint8)
    starts = offsets[:-1].astype(np.int64)
    ends = offsets[1:].astype(np.int64)
    starts[ends == starts] = -1
    if strings.null_count:
        starts[np.asarray(strings.is_null())] = -1
    if raw:
        keys = np.empty(n, np.int64)
        _keys.raw_token_keys(keys, data, starts, ends, np.zeros(n, np.uint8), np.int64(-1),
                             _keys.MISSING_RAW_KEY)
        return keys
    keys = np.empty(n, np.uint64)
    _hash.token_keys(keys, data, starts, ends, np.zeros(n, np.uint8), np.int64(-1))
    return keys


def _as_float64(column):
    """(values [n] float64 with nulls as 0, null mask [n])."""
    pa, pc, _ = _arrow()
    column = _combined(column)
    missing = np.asarray(column.is_null()) if column.null_count else \
        np.zeros(len(column), bool)
    values = pc.fill_null(pc.cast(column, pa.float64(), safe=False), 0.0)
    values = values.to_numpy(zero_copy_only=False)
    return np.array(values, np.float64), missing


def _numbers(column):
    """Numeric feature: (values [n] float64; bad [n]: NaN or infinite;
    missing [n]: null)."""
    values, missing = _as_float64(column)
    return values, ~missing & ~np.isfinite(values), missing


class ParquetDataset(TextDataset):
    """Rows of Parquet files, parsed row group by row group (made by
    ``open_dataset(..., format="parquet")``)."""

    def _chunks(self):
        return self.parser.chunks(self.paths, max(1, self.chunk_bytes // BYTES_PER_ROW))


def open_parquet(paths, schema, label, normalizer=DEFAULT_NORMALIZER):
    """The ``ParquetParser`` of files (their schemas checked now)."""
    _, _, pq = _arrow()
    arrow_schemas = {}
    for path in paths:
        try:
            arrow_schemas[path] = pq.read_schema(path)
        except Exception as err:  # pyarrow's errors have no common base
            raise DataError(f"not a readable Parquet file: {err}", path) from None
    if schema is None:
        schema = infer_schema(arrow_schemas[paths[0]], label, paths[0])
    else:
        schema = schema if isinstance(schema, Schema) else Schema.load(schema)
        if label is not None and label != schema.label:
            raise SchemaError(f"label={label!r} differs from the schema's label column "
                              f"{schema.label!r}", schema.source)
    return ParquetParser(schema, arrow_schemas, normalizer)
