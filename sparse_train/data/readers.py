"""``open_dataset``: one front door for every format."""
import os
from pathlib import Path

from ._lines import MAX_LINE_BYTES, first_line
from .dataset import TextDataset
from .delimited import DelimitedParser, resolve_columns
from .errors import DataError, SchemaError
from .libsvm import (MAX_BAG_LENGTH, MAX_FIELDS, MAX_INDEX, PairsParser, load_featindex,
                     scan_num_fields)
from .numeric import DEFAULT_NORMALIZER, NORMALIZERS, NumericEncoder, needs_statistics
from .parquet import ParquetDataset, open_parquet, parquet_paths
from .schema import Schema, criteo_schema
from .synthetic import SyntheticClickLog
from .vocabulary import MAX_VOCABULARY_SIZE, load_vocabulary

__all__ = ["open_dataset", "FORMATS"]

FORMATS = ("synthetic", "criteo", "libsvm", "libffm", "csv", "parquet")
_ONLY = {"schema": ("csv", "parquet"), "normalizer": ("csv", "parquet"), "label": ("parquet",),
         "featindex": ("libsvm",), "num_fields": ("libsvm", "libffm"),
         "delimiter": ("criteo",), "header": ("criteo",)}


def open_dataset(path=None, format="synthetic", *, schema=None, batch_size=1024,
                 ids="vocabulary", min_count=1, hash_buckets=1 << 20, vocabulary=None,
                 like=None, on_bad_line="error", numeric_transform="log1p", normalizer=None,
                 delimiter=None,
                 header=None, featindex=None, num_fields=None, weighted=True,
                 chunk_bytes=4 << 20, prefetch=1, max_examples=None, label=None,
                 max_vocabulary_size=MAX_VOCABULARY_SIZE, max_line_bytes=MAX_LINE_BYTES,
                 max_fields=MAX_FIELDS, max_bag_length=MAX_BAG_LENGTH, max_index=MAX_INDEX,
                 **synthetic_options):
    """Open a click log for batch-by-batch reading; returns a ``Dataset``.

    Everything that can be checked without reading the data is checked here
    (files exist, schema valid, columns present); a vocabulary to build is
    counted on first use of ``.spec`` or iteration, so malformed lines are
    reported before the first batch.

    Args:
        path: a file or a list of files read in order (``.gz`` is read
            through gzip); None for ``format="synthetic"``.
        format: "synthetic", "criteo", "libsvm", "libffm", "csv" or
            "parquet" (``data/parquet.py``; path may also be a glob).
        schema: csv: a TOML schema path or a ``Schema`` (see ``schema.py``);
            parquet: optional (default: the columns' Arrow types).
        batch_size: rows a batch.
        ids: "vocabulary" (ids from a vocabulary counted on this data),
            "hash" (stable hash buckets, no pass); a schema may override it
            per feature. Or "dynamic": every categorical feature gives its
            raw int64 keys (``hashing.raw_key``: integer ids as they are,
            strings by a fixed 64-bit hash, missing as ``MISSING_RAW_KEY``),
            for dynamic tables (``DynamicEmbeddingTable``); no vocabulary
            pass, no modulo, ``FeatureSpec.num_embeddings`` None. Numeric
            statistics (normalizers that need them, buckets) are then fitted
            by a pass over the first ``MAX_STATISTIC_ROWS`` training rows
            only, the rows the vocabulary pass would fit them on (so the
            same bits); no pass at all when no normalizer needs one.
        min_count: vocabulary: tokens seen fewer times share the
            out-of-vocabulary id. An int, or a dict feature name -> int.
        hash_buckets: hash: buckets a feature (int, or dict name -> int).
        vocabulary: ids saved by ``Dataset.save_vocabulary`` (a path, or a
            dict name -> ``Vocabulary``/``HashBuckets``/``NumericEncoder``)
            instead of fitting; numeric features keep the statistics saved
            there (the training data's).
        like: another ``Dataset`` (the training data) whose ids this one
            uses, e.g. a validation file.
        on_bad_line: "error" raises ``DataError`` (file:line: what) at the
            first malformed line; "skip" skips and counts them
            (``.skipped_lines``, ``.bad_line_examples``).
        numeric_transform: criteo: the normalizer of I1..I13, "log1p"
            (log(1 + x) for x > 0, else 0; the Criteo convention), "none" or
            another of ``NORMALIZERS`` (``data/numeric.py``).
        normalizer: csv: the normalizer of numeric features whose schema
            entry declares none (None: ``DEFAULT_NORMALIZER``,
            "log_standard"; see ``data/numeric.py`` for the choices).
        delimiter, header: criteo: None detects them from line 1 (a tab
            means TSV; a first cell that is not a number means a header).
        featindex: libsvm: a ``field:value<TAB>index`` file mapping indices
            to fields (each field becomes a feature); its malformed lines
            follow ``on_bad_line`` too.
        num_fields: libffm: number of fields; None finds it with a pass.
            libsvm: read pair k of each row as field k (fixed-order one-hot
            rows); None: one feature ``features`` (or the featindex fields).
        weighted: libsvm / libffm: keep values as per-id weights.
        chunk_bytes: bytes read at a time (memory use is a small multiple).
        prefetch: chunks parsed ahead in a background thread (0: none).
        max_examples: read at most this many rows a pass.
        label: parquet without a schema: the label column.
        max_vocabulary_size: the most ids a fitted vocabulary of one feature
            may have (default ``MAX_VOCABULARY_SIZE`` = 2**27 rows; a hash
            feature's ``hash_buckets`` too); beyond it the counting pass
            raises ``DataError`` naming the feature and the file (use
            min_count or ids="hash"), instead of growing until memory is
            gone. Not applied to ids given by ``vocabulary`` / ``like``.
        max_line_bytes: the longest line of a text file (default
            ``MAX_LINE_BYTES`` = 64 MiB); a longer one is a ``DataError``
            (file:line).
        max_fields: libffm: the largest field number + 1 (and
            ``num_fields``) accepted (default ``MAX_FIELDS`` = 1000; each
            field is a feature).
        max_bag_length: libsvm / libffm: a row of more pairs is a bad line
            (default ``MAX_BAG_LENGTH`` = 2**20).
        max_index: libsvm with a featindex: the largest index of the
            featindex file (default ``MAX_INDEX`` = 2**26 - 1; it sizes a map).
            The last four are limits against hostile input; formats they do
            not concern ignore them.
        **synthetic_options: synthetic: arguments of ``SyntheticClickLog``
            (``num_examples``, ``seed``, ...).

    >>> ds = open_dataset(format="synthetic", num_examples=5000, seed=0)
    >>> [f.name for f in ds.spec.sparse_features][:3], ds.spec.num_dense
    (['c0', 'c1', 'c2'], 4)

    A typical training setup, with a held-out part of one file::

        train, valid = open_dataset("day_0.tsv", "criteo", min_count=10).split(0.1, seed=0)
        for epoch in range(epochs):
            for batch in train.batches(shuffle=True, seed=epoch): ...
        for batch in valid: ...
    """
    if format not in FORMATS:
        raise ValueError(f"format must be one of {', '.join(FORMATS)}, got {format!r}")
    given = {"schema": schema, "featindex": featindex, "num_fields": num_fields,
             "delimiter": delimiter, "header": header, "normalizer": normalizer,
             "label": label}
    for name, value in given.items():
        if value is not None and format not in _ONLY[name]:
            raise ValueError(f"{name} applies to format {' or '.join(_ONLY[name])}, "
                             f"not {format!r}")
    if format == "synthetic":
        if path is not None:
            raise ValueError("format 'synthetic' generates its data: path must be None")
        if ids not in ("vocabulary", "dynamic"):
            raise ValueError(f"format 'synthetic': ids must be 'vocabulary' (its ids are "
                             f"rows already) or 'dynamic', got {ids!r}")
        return SyntheticClickLog(batch_size=batch_size, raw_keys=ids == "dynamic",
                                 **synthetic_options)
    if synthetic_options:
        raise TypeError(f"unexpected argument(s) for format {format!r}: "
                        f"{', '.join(sorted(synthetic_options))}")
    if format == "parquet" and path is not None:
        path = parquet_paths(path)
    paths = _check_paths(path)
    _check_options(batch_size, on_bad_line, chunk_bytes, prefetch, max_examples, ids)
    limits = {"max_vocabulary_size": max_vocabulary_size, "max_line_bytes": max_line_bytes,
              "max_fields": max_fields, "max_bag_length": max_bag_length,
              "max_index": max_index}
    for name, value in limits.items():
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be a positive integer, got {value!r}")
    if like is not None and vocabulary is not None:
        raise ValueError("give vocabulary or like, not both")

    skip_header, extra_skipped, dataset_class = False, [], TextDataset
    if format == "parquet":
        if normalizer is not None and normalizer not in NORMALIZERS:
            raise ValueError(f"normalizer must be one of {', '.join(NORMALIZERS)}, "
                             f"got {normalizer!r}")
        parser = open_parquet(paths, schema, label, normalizer or DEFAULT_NORMALIZER)
        columns = [(f.name, f.ids, f.min_count, f.hash_buckets)
                   for f in parser.schema.sparse_features]
        dataset_class = ParquetDataset
    elif format in ("criteo", "csv"):
        if format == "csv":
            if schema is None:
                raise ValueError("format 'csv' needs schema= (a TOML file or a Schema)")
            schema = schema if isinstance(schema, Schema) else Schema.load(schema)
        else:
            schema = _criteo_schema(paths[0], numeric_transform, delimiter, header,
                                    max_line_bytes)
        if normalizer is not None and normalizer not in NORMALIZERS:
            raise ValueError(f"normalizer must be one of {', '.join(NORMALIZERS)}, "
                             f"got {normalizer!r}")
        parser = DelimitedParser(schema, resolve_columns(schema, paths, max_line_bytes),
                                 normalizer or DEFAULT_NORMALIZER)
        skip_header = schema.header
        # (name, ids, min_count, hash_buckets): a schema may override the defaults
        columns = [(f.name, f.ids, f.min_count, f.hash_buckets) for f in schema.sparse_features]
    else:
        parser, extra_skipped = _pairs_parser(format, paths, featindex, num_fields, weighted,
                                              like, on_bad_line, chunk_bytes, limits)
        columns = [(name, None, None, None) for name in parser.feature_names]

    if ids != "dynamic" and _given_is_dynamic(vocabulary, like):
        ids = "dynamic"  # the training data's raw keys: this data gives them too
    if ids == "dynamic":
        _check_all_dynamic(columns, getattr(parser, "schema", None))
        parser.raw_keys = True
        if vocabulary is not None or like is not None:
            _check_given_dynamic(vocabulary, like, [c[0] for c in columns])
    id_config = {name: _id_config(name, ids if ids == "dynamic" else feature_ids or ids,
                                  feature_min or min_count, feature_buckets or hash_buckets,
                                  max_vocabulary_size)
                 for name, feature_ids, feature_min, feature_buckets in columns}
    numeric = getattr(parser, "numeric_columns", ())
    encoders = _given_encoders(vocabulary, [c[0] for c in columns], like, numeric)
    return dataset_class(paths, parser, id_config, batch_size=int(batch_size),
                         on_bad_line=on_bad_line, chunk_bytes=int(chunk_bytes),
                         prefetch_depth=int(prefetch), max_examples=max_examples,
                         skip_header=skip_header, encoders=encoders,
                         encoder_source=like, extra_skipped=extra_skipped,
                         max_line_bytes=max_line_bytes, max_vocabulary_size=max_vocabulary_size)


def _pairs_parser(format, paths, featindex, num_fields, weighted, like, on_bad_line,
                  chunk_bytes, limits):
    """The libsvm / libffm parser, and the featindex lines it skipped."""
    index, skipped = None, []
    if featindex is not None:
        path = _check_paths(featindex, "featindex file")[0]
        theirs = getattr(getattr(like, "parser", None), "featindex", None)
        if theirs is not None and os.path.samefile(theirs.path, path):
            index = theirs  # the training data's: its skipped lines are counted there
        else:
            index = load_featindex(path, on_bad_line, limits["max_index"])
            skipped = [(index.path, line, reason) for line, reason in index.skipped]
    with_field = format == "libffm"
    if with_field and num_fields is None:
        num_fields = (len(like.spec.sparse_features) if like is not None
                      else scan_num_fields(paths, chunk_bytes, max_fields=limits["max_fields"],
                                           max_line_bytes=limits["max_line_bytes"]))
        if num_fields < 1:
            raise DataError("no well-formed libffm line found", paths[0])
    return PairsParser(with_field, num_fields, index, weighted, limits["max_fields"],
                       limits["max_bag_length"]), skipped


def _check_paths(path, what="data file"):
    if path is None:
        raise ValueError(f"a {what} path is needed")
    paths = list(path) if isinstance(path, (list, tuple)) else [path]
    if not paths:
        raise ValueError(f"no {what} given")
    for p in paths:
        if not isinstance(p, (str, os.PathLike)):
            raise TypeError(f"a {what} path must be str or os.PathLike, got {type(p).__name__}")
        if Path(p).is_dir():
            raise FileNotFoundError(f"{what} {p} is a directory: give its files")
        if not Path(p).is_file():
            raise FileNotFoundError(f"{what} not found: {p}")
    return [str(p) for p in paths]


def _check_options(batch_size, on_bad_line, chunk_bytes, prefetch, max_examples, ids):
    def positive(name, value, minimum=1):
        if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
            raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")
    positive("batch_size", batch_size)
    positive("chunk_bytes", chunk_bytes)
    positive("prefetch", prefetch, 0)
    if max_examples is not None:
        positive("max_examples", max_examples)
    if on_bad_line not in ("error", "skip"):
        raise ValueError(f"on_bad_line must be 'error' or 'skip', got {on_bad_line!r}")
    if ids not in ("vocabulary", "hash", "dynamic"):
        raise ValueError(f"ids must be 'vocabulary', 'hash' or 'dynamic', got {ids!r}")


def _check_all_dynamic(columns, schema):
    """ids="dynamic" gives every categorical feature raw keys: a schema
    entry asking for other ids contradicts it (SchemaError naming it)."""
    for name, feature_ids, feature_min, feature_buckets in columns:
        if feature_ids not in (None, "dynamic") or feature_min or feature_buckets:
            where = getattr(schema, "source", None)
            raise SchemaError(f"feature {name!r}: the schema sets "
                              f"{'ids = ' + repr(feature_ids) if feature_ids else 'min_count or hash_buckets'}"
                              f", but ids='dynamic' gives every categorical feature its raw "
                              f"keys (remove the entry's ids options)"
                              + (f" ({where})" if where else ""))


def _given_is_dynamic(vocabulary, like):
    """Whether like= / vocabulary= carry raw keys (``RawKeys``)."""
    from .vocabulary import RawKeys
    if like is not None:
        return bool(getattr(like, "dynamic_ids", False))
    if vocabulary is None:
        return False
    given = vocabulary if isinstance(vocabulary, dict) else load_vocabulary(vocabulary)
    return any(isinstance(v, RawKeys) for v in given.values())


def _check_given_dynamic(vocabulary, like, names):
    """vocabulary= / like= with ids="dynamic": the given ids must be raw keys too."""
    from .vocabulary import RawKeys
    if like is not None:
        given = like.vocabulary
    elif isinstance(vocabulary, dict):
        given = vocabulary
    else:
        given = load_vocabulary(vocabulary)
    for name in names:
        if name in given and not isinstance(given[name], RawKeys):
            raise DataError(f"feature {name!r}: ids='dynamic' but the given "
                            f"{'like= data' if like is not None else 'vocabulary'} maps it to "
                            f"{type(given[name]).__name__} ids")


def _id_config(name, kind, min_count, hash_buckets, max_vocabulary_size=MAX_VOCABULARY_SIZE):
    """("vocabulary", min_count), ("hash", buckets) or ("dynamic", None) of
    one feature."""
    if kind == "dynamic":
        return kind, None
    value = min_count if kind == "vocabulary" else hash_buckets
    what = "min_count" if kind == "vocabulary" else "hash_buckets"
    if isinstance(value, dict):
        value = value.get(name, {"min_count": 1, "hash_buckets": 1 << 20}[what])
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"feature {name!r}: {what} must be a positive integer, got {value!r}")
    if kind == "hash" and value + 1 > max_vocabulary_size:
        raise ValueError(f"feature {name!r}: hash_buckets = {value} (+ the missing id) exceeds "
                         f"max_vocabulary_size = {max_vocabulary_size} ids")
    return kind, value


def _given_encoders(vocabulary, names, like, numeric=()):
    """The encoders given by ``vocabulary`` for the sparse features ``names``
    and the numeric ones ``numeric`` ((name, kind, buckets)); a numeric
    feature absent there is added when its kind fits nothing ("none",
    "log1p")."""
    if like is not None:
        theirs = [f.name for f in like.spec.sparse_features]
        mine = names + [name for name, kind, _ in numeric if kind == "bucketize"]
        if theirs != mine:
            raise SchemaError(f"like= has features {theirs}, this data has {mine}")
        theirs = {name: d.get("normalizer") for name, d in like.preprocessing_state().items()}
        for name, kind, _ in numeric:
            if theirs.get(name) != kind:
                raise SchemaError(f"numeric feature {name!r}: like= preprocesses it as "
                                  f"{theirs.get(name)!r}, this data as {kind!r}")
        return None
    if vocabulary is None:
        return None
    where = None
    if not isinstance(vocabulary, dict):
        where = str(vocabulary)
        vocabulary = load_vocabulary(vocabulary)
    missing = [n for n in names if n not in vocabulary]
    if missing:
        raise DataError(f"the vocabulary has no ids for feature(s) {missing}", where)
    out = {name: vocabulary[name] for name in names}
    for name, kind, _ in numeric:
        given = vocabulary.get(name)
        if given is None:
            if needs_statistics(kind):
                raise DataError(f"numeric feature {name!r}: the vocabulary has no training "
                                f"statistics for its normalizer {kind!r}", where)
            given = NumericEncoder(kind)
        elif getattr(given, "kind", None) != kind:
            raise DataError(f"numeric feature {name!r}: the vocabulary preprocesses it as "
                            f"{getattr(given, 'kind', type(given).__name__)!r}, the schema "
                            f"as {kind!r}", where)
        out[name] = given
    return out


def _criteo_schema(path, numeric_transform, delimiter, header, max_line_bytes=MAX_LINE_BYTES):
    line = first_line(path, max_line_bytes)
    if line is None:
        raise DataError("the file is empty", path)
    if delimiter is None:
        delimiter = "\t" if "\t" in line else ","
    if header is None:
        head = line.split(delimiter, 1)[0].strip()
        try:
            float(head)
            header = False
        except ValueError:
            header = True
    if numeric_transform is not None and numeric_transform not in NORMALIZERS:
        raise ValueError(f"numeric_transform must be one of {', '.join(NORMALIZERS)}, "
                         f"got {numeric_transform!r}")
    return criteo_schema(numeric_transform, delimiter, header)
