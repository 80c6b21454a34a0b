"""Readers and the synthetic click-log generator; all yield ``Batch``.

``open_dataset(path, format, ...)`` opens Criteo, libsvm, libffm, any CSV /
TSV described by a TOML ``Schema``, Parquet, or a ``SyntheticClickLog``; each is a
``Dataset`` with ``.spec`` and iteration over ``Batch``es.
"""
from .batch import Batch, DataSpec, FeatureSpec
from .dataset import Dataset, held_out_rows
from .errors import DataError, SchemaError
from .hashing import MISSING_RAW_KEY, raw_key, token_key, token_keys
from .libsvm import load_featindex
from .readers import FORMATS, open_dataset
from .schema import Schema, criteo_schema
from .synthetic import SyntheticClickLog, write_criteo_like
from .vocabulary import HashBuckets, RawKeys, Vocabulary, load_vocabulary, save_vocabulary

__all__ = ["Batch", "DataSpec", "FeatureSpec", "Dataset", "open_dataset", "FORMATS",
           "SyntheticClickLog", "write_criteo_like", "Schema", "criteo_schema",
           "DataError", "SchemaError", "Vocabulary", "HashBuckets", "save_vocabulary",
           "load_vocabulary", "token_key", "token_keys", "raw_key", "MISSING_RAW_KEY", "RawKeys", "held_out_rows", "load_featindex"]
