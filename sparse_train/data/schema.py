"""The TOML schema that describes a CSV / TSV click log (the documented contract).

    [data]
    delimiter = ","        # "\\t" for TSV; one character
    header = true          # the first line names the columns; else give
    names = ["a", "b"]     #   names (with header = true, names replace the
                           #   header's and the header line is skipped)
    quote = '"'            # optional; "" turns quoting off
    [label]
    column = "rating"
    threshold = 4          # optional: label = 1 if value >= threshold else 0;
                           #   without it the label must be 0 or 1
    [[features]]
    name = "user_id"
    type = "categorical"   # one id a row
    [[features]]
    name = "genres"
    type = "multi_hot"     # several ids a row
    separator = "|"
    [[features]]
    name = "age"
    type = "numeric"
    normalizer = "standard"  # optional: "standard", "minmax", "log1p",
                           #   "log_standard" or "none" (see data/numeric.py);
                           #   default "log_standard"
    [[features]]
    name = "price"
    type = "numeric"
    bucketize = 10         # optional: quantile buckets of the training rows,
                           #   then a categorical feature (ids 0 missing, 1..)

Optional keys of a ``[[features]]`` entry: ``column`` (the column read, when
it differs from ``name``), and for categorical / multi_hot features ``ids``
("vocabulary" or "hash"), ``min_count`` and ``hash_buckets``, which override
the reader's defaults for that feature; for numeric features ``transform``
("log1p" or "none", the older spelling of ``normalizer``). Columns no feature
names are ignored. An empty cell is missing: id 0 for categorical and
multi_hot features (one missing id in the bag), for numeric ones the
training mean (0 after a z-score), 0 under "none" / "log1p", id 0 when
bucketized. A bucketized column appears in the ``DataSpec`` as a sparse
feature of the column's feature name, after the categorical and multi_hot
ones (in schema order). Unknown keys are errors, so a
misspelt key does not pass silently.
"""
import math
import sys
from dataclasses import dataclass
from pathlib import Path

from .errors import SchemaError
from .numeric import NORMALIZERS

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised on 3.10 only
    import tomli as tomllib

__all__ = ["Schema", "FeatureColumn", "criteo_schema", "FEATURE_TYPES", "TRANSFORMS",
           "NORMALIZERS"]

FEATURE_TYPES = ("categorical", "multi_hot", "numeric")
TRANSFORMS = ("none", "log1p")
ID_KINDS = ("vocabulary", "hash")

_DATA_KEYS = {"delimiter", "header", "names", "quote"}
_LABEL_KEYS = {"column", "threshold"}
_FEATURE_KEYS = {"name", "type", "column", "separator", "transform", "normalizer",
                 "bucketize", "ids", "min_count", "hash_buckets"}


@dataclass(frozen=True)
class FeatureColumn:
    """One ``[[features]]`` entry: a feature ``name`` read from ``column``.

    ``normalizer`` (numeric): as declared (``transform`` folded in), None
    when the entry declares none (the reader's default applies);
    ``bucketize``: N quantile buckets, or None."""
    name: str
    type: str
    column: str
    separator: str = None
    transform: str = "none"
    ids: str = None
    min_count: int = None
    hash_buckets: int = None
    normalizer: str = None
    bucketize: int = None


@dataclass(frozen=True)
class Schema:
    """How to read a delimited click log: columns, label, features.

    Build with ``Schema.load(path)`` (TOML file), ``Schema.from_toml(text)``
    or ``Schema.from_dict(d)``; every problem raises ``SchemaError`` naming
    the file and the entry.

    >>> s = Schema.from_toml('''
    ... [data]
    ... delimiter = ","
    ... header = true
    ... [label]
    ... column = "rating"
    ... threshold = 4
    ... [[features]]
    ... name = "genres"
    ... type = "multi_hot"
    ... separator = "|"
    ... ''')
    >>> s.label, s.threshold, s.features[0].separator
    ('rating', 4.0, '|')
    """
    label: str
    features: tuple
    delimiter: str = ","
    header: bool = True
    names: tuple = None
    quote: str = '"'
    threshold: float = None
    source: str = "<schema>"

    @classmethod
    def load(cls, path):
        """Read and validate a TOML schema file."""
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"schema file not found: {path}")
        raw = path.read_bytes()
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as err:
            raise SchemaError(f"not UTF-8 text (byte {raw[err.start]:#04x})", path,
                              raw.count(b"\n", 0, err.start) + 1) from None
        return cls.from_toml(text, source=str(path))

    @classmethod
    def from_toml(cls, text, source="<schema>"):
        """Parse and validate TOML text."""
        try:
            doc = tomllib.loads(text)
        except tomllib.TOMLDecodeError as err:
            raise SchemaError(f"invalid TOML: {err}", source) from None
        return cls.from_dict(doc, source)

    @classmethod
    def from_dict(cls, doc, source="<schema>"):
        """Validate a parsed schema (the TOML tables as dicts)."""
        def fail(reason):
            raise SchemaError(reason, source)

        unknown = set(doc) - {"data", "label", "features"}
        if unknown:
            fail(f"unknown table(s) {sorted(unknown)}; expected [data], [label], [[features]]")
        data = _table(doc, "data", _DATA_KEYS, fail, required=False)
        label = _table(doc, "label", _LABEL_KEYS, fail, required=True)

        delimiter = data.get("delimiter", ",")
        if not isinstance(delimiter, str) or len(delimiter.encode()) != 1 or delimiter == "\n":
            fail(f"[data] delimiter must be one single-byte character, got {delimiter!r}")
        quote = data.get("quote", '"')
        if not isinstance(quote, str) or len(quote.encode()) > 1 or quote == delimiter:
            fail(f"[data] quote must be one character other than the delimiter, or \"\", got {quote!r}")
        header = data.get("header", True)
        if not isinstance(header, bool):
            fail(f"[data] header must be true or false, got {header!r}")
        names = data.get("names")
        if names is not None:
            if (not isinstance(names, list) or not names
                    or not all(isinstance(n, str) and n for n in names)):
                fail(f"[data] names must be a non-empty list of column names, got {names!r}")
            if len(set(names)) != len(names):
                fail(f"[data] names has duplicates: {_duplicates(names)}")
            names = tuple(names)
        elif not header:
            fail("[data] header = false needs names = [...] (the column names)")

        column = label.get("column")
        if not isinstance(column, str) or not column:
            fail(f"[label] column must be a column name, got {column!r}")
        threshold = label.get("threshold")
        if threshold is not None:
            if isinstance(threshold, bool) or not isinstance(threshold, (int, float)) \
                    or not math.isfinite(threshold):
                fail(f"[label] threshold must be a number, got {threshold!r}")
            threshold = float(threshold)

        entries = doc.get("features")
        if not isinstance(entries, list) or not entries:
            fail("needs at least one [[features]] entry")
        features = tuple(_feature(i, entry, column, fail) for i, entry in enumerate(entries))
        seen = [f.name for f in features]
        if len(set(seen)) != len(seen):
            fail(f"[[features]] names must be unique, duplicates: {_duplicates(seen)}")
        schema = cls(label=column, features=features, delimiter=delimiter, header=header,
                     names=names, quote=quote, threshold=threshold, source=str(source))
        if names is not None:
            schema.check_columns(names, "[data] names")
        return schema

    @property
    def dense_features(self):
        """The numeric features (bucketized ones included: they are read as
        numbers, then become ids)."""
        return tuple(f for f in self.features if f.type == "numeric")

    @property
    def bucketized_features(self):
        return tuple(f for f in self.features if f.bucketize is not None)

    @property
    def sparse_features(self):
        return tuple(f for f in self.features if f.type != "numeric")

    def check_columns(self, columns, where):
        """Raise ``SchemaError`` if the label or a feature reads a column not
        in ``columns`` (the names from ``where``, e.g. a data file's header)."""
        columns = list(columns)
        wanted = [("[label] column", self.label)]
        wanted += [(f"[[features]] {f.name!r}", f.column) for f in self.features]
        for what, column in wanted:
            if column not in columns:
                raise SchemaError(
                    f"{what} reads column {column!r}, which {where} does not have "
                    f"(columns: {', '.join(columns)})", self.source)


def _duplicates(names):
    return sorted({n for n in names if names.count(n) > 1})


def _table(doc, name, keys, fail, required):
    table = doc.get(name)
    if table is None:
        if required:
            fail(f"missing [{name}] table")
        return {}
    if not isinstance(table, dict):
        fail(f"[{name}] must be a table")
    unknown = set(table) - keys
    if unknown:
        fail(f"[{name}] has unknown key(s) {sorted(unknown)}; allowed: {sorted(keys)}")
    return table


def _feature(i, entry, label, fail):
    where = f"[[features]] #{i + 1}"
    if not isinstance(entry, dict):
        fail(f"{where} must be a table")
    name = entry.get("name")
    if not isinstance(name, str) or not name:
        fail(f"{where}: name must be a non-empty string, got {name!r}")
    where = f"{where} ({name!r})"
    unknown = set(entry) - _FEATURE_KEYS
    if unknown:
        fail(f"{where}: unknown key(s) {sorted(unknown)}; allowed: {sorted(_FEATURE_KEYS)}")
    kind = entry.get("type")
    if kind not in FEATURE_TYPES:
        fail(f"{where}: type must be one of {', '.join(FEATURE_TYPES)}, got {kind!r}")
    column = entry.get("column", name)
    if not isinstance(column, str) or not column:
        fail(f"{where}: column must be a column name, got {column!r}")
    if column == label:
        fail(f"{where}: reads the label column {label!r}")
    separator = entry.get("separator")
    if kind == "multi_hot":
        if not isinstance(separator, str) or len(separator.encode()) != 1:
            fail(f"{where}: multi_hot needs separator = one single-byte character, got {separator!r}")
    elif separator is not None:
        fail(f"{where}: separator applies to multi_hot features only")
    transform = entry.get("transform", "none")
    normalizer, bucketize = entry.get("normalizer"), entry.get("bucketize")
    if kind == "numeric":
        if transform not in TRANSFORMS:
            fail(f"{where}: transform must be one of {', '.join(TRANSFORMS)}, got {transform!r}")
        if normalizer is not None and normalizer not in NORMALIZERS:
            fail(f"{where}: normalizer must be one of {', '.join(NORMALIZERS)}, "
                 f"got {normalizer!r}")
        if "transform" in entry:
            if normalizer is not None and normalizer != transform:
                fail(f"{where}: transform = {transform!r} and normalizer = {normalizer!r} "
                     f"disagree (transform is the older name of normalizer: give one)")
            normalizer = transform
        if bucketize is not None:
            if isinstance(bucketize, bool) or not isinstance(bucketize, int) or bucketize < 2:
                fail(f"{where}: bucketize must be an integer >= 2 (the number of "
                     f"buckets), got {bucketize!r}")
            if normalizer is not None:
                fail(f"{where}: give bucketize or normalizer/transform, not both")
        transform = "log1p" if normalizer == "log1p" else "none"
    else:
        for key in ("transform", "normalizer", "bucketize"):
            if key in entry:
                fail(f"{where}: {key} applies to numeric features only")
    options = {}
    for key in ("ids", "min_count", "hash_buckets"):
        if key in entry and kind == "numeric":
            fail(f"{where}: {key} applies to categorical and multi_hot features only")
    ids = entry.get("ids")
    if ids is not None and ids not in ID_KINDS:
        fail(f"{where}: ids must be one of {', '.join(ID_KINDS)}, got {ids!r}")
    for key in ("min_count", "hash_buckets"):
        value = entry.get(key)
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
            fail(f"{where}: {key} must be a positive integer, got {value!r}")
        options[key] = value
    return FeatureColumn(name=name, type=kind, column=column, separator=separator,
                         transform=transform, ids=ids, normalizer=normalizer,
                         bucketize=bucketize, **options)


#: Column names of the Criteo display-advertising data (Kaggle DAC, 1TB logs).
CRITEO_NAMES = ("label",) + tuple(f"I{i}" for i in range(1, 14)) + tuple(
    f"C{i}" for i in range(1, 27))


def criteo_schema(numeric_transform="log1p", delimiter="\t", header=False):
    """The schema of Criteo display-ads logs: ``label``, numeric ``I1..I13``,
    categorical ``C1..C26``; the original TSV has no header.

    Args:
        numeric_transform: the normalizer of I1..I13: "log1p" (log(1 + x)
            for x > 0, else 0; the usual Criteo preprocessing, e.g. DLRM),
            "none", or another of ``NORMALIZERS`` ("standard", ...).

    >>> s = criteo_schema()
    >>> len(s.dense_features), len(s.sparse_features), s.delimiter == "\\t"
    (13, 26, True)
    """
    if numeric_transform is None:
        numeric_transform = "none"
    features = [{"name": f"I{i}", "type": "numeric", "normalizer": numeric_transform}
                for i in range(1, 14)]
    features += [{"name": f"C{i}", "type": "categorical"} for i in range(1, 27)]
    data = {"delimiter": delimiter, "header": header}
    if not header:
        data["names"] = list(CRITEO_NAMES)
    return Schema.from_dict({"data": data, "label": {"column": "label"}, "features": features},
                            source="<criteo schema>")
