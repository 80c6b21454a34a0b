"""Feature ids: a vocabulary built on training data, or stable hash buckets.

Both map token keys (``hashing.py``) to ids in ``[0, num_embeddings)``, with
id 0 for a missing value:

    Vocabulary    0 = missing, 1 = out of vocabulary (also tokens seen fewer
                  than ``min_count`` times), 2 + r = the token of rank r, by
                  decreasing count (ties: increasing key)
    HashBuckets   0 = missing, 1 + key % num_buckets
    RawKeys       no ids at all: each token's raw int64 key (``hashing.raw_key``)
                  goes to a dynamic table as it is (``ids="dynamic"``)

Both save to and load from JSON (``save_vocabulary`` / ``load_vocabulary``),
so training and validation use the same ids; the same file keeps the fitted
``NumericEncoder`` of each numeric feature (``numeric.py``: training
statistics or bucket boundaries), type "numeric".
"""
import json
from pathlib import Path

import numpy as np

from ..kernels import data_hash as _kernels
from .errors import DataError
from .hashing import token_keys
from .numeric import NumericEncoder

__all__ = ["Vocabulary", "HashBuckets", "RawKeys", "save_vocabulary", "load_vocabulary",
           "MAX_VOCABULARY_SIZE"]

#: Default largest number of ids (table rows) of one feature's vocabulary
#: (``max_vocabulary_size``): 2**27, 134 million rows, 8.6 GB of float32 at
#: embedding_dim 16; far beyond a real vocabulary, but a stream of unique
#: tokens (a request id read as a feature) stops here instead of filling
#: the host's memory.
MAX_VOCABULARY_SIZE = 1 << 27

MISSING_ID = 0
OOV_ID = 1
_FORMAT = "sparse_train.vocabulary"
_HASH_NAME = "fnv1a64-fmix64"


def _table_capacity(n):
    capacity = 16
    while capacity < 2 * n + 2:
        capacity *= 2
    return capacity


def _tokens_to_keys(tokens):
    return token_keys(["" if t is None else t for t in tokens])


def _missing_mask(tokens):
    return np.fromiter((t is None or t == "" for t in tokens), bool, len(tokens))


class _Encoder:
    """Token -> id: ``lookup`` hashes tokens to keys, ``ids_of_keys`` maps them."""

    def lookup(self, tokens):
        """Ids [n] int64 of tokens (str or int; None or "" = missing)."""
        tokens = list(tokens)
        keys = _tokens_to_keys(tokens)
        keys[_missing_mask(tokens)] = 0
        return self.ids_of_keys(keys)


class Vocabulary(_Encoder):
    """Token -> id for one feature (0 missing, 1 out of vocabulary, 2.. tokens).

    Args:
        tokens: the kept tokens (str), in id order: ``tokens[r]`` gets id
            ``2 + r``. Build from counts with ``Vocabulary.from_counts``.
        counts: optional training counts of those tokens (kept in the JSON).
        min_count: the minimum count used to build it (informational).

    >>> v = Vocabulary.from_counts({"a": 5, "b": 9, "c": 1}, min_count=2)
    >>> v.tokens, v.num_embeddings
    (('b', 'a'), 4)
    >>> v.lookup(["a", "b", "c", None]).tolist()
    [3, 2, 1, 0]
    """

    kind = "vocabulary"

    def __init__(self, tokens, counts=None, min_count=1, *, _keys=None):
        self.tokens = tuple(str(t) for t in tokens)
        self.counts = None if counts is None else np.asarray(counts, np.int64)
        if self.counts is not None and self.counts.shape != (len(self.tokens),):
            raise ValueError(f"counts must have one entry per token ({len(self.tokens)}), "
                             f"got shape {self.counts.shape}")
        self.min_count = int(min_count)
        # _keys: the tokens' keys when the caller has them (a KeyCounter)
        keys = _tokens_to_keys(self.tokens) if _keys is None else _keys
        if np.unique(keys).shape[0] != keys.shape[0]:
            raise ValueError("vocabulary tokens must be unique")
        capacity = _table_capacity(keys.shape[0])
        self._table_keys = np.zeros(capacity, np.uint64)
        self._table_ids = np.zeros(capacity, np.int64)
        self._table_filled = np.zeros(capacity, np.uint8)
        _kernels.insert_keys(self._table_keys, self._table_ids, self._table_filled,
                             keys, np.arange(2, keys.shape[0] + 2, dtype=np.int64))

    @classmethod
    def from_counts(cls, counts, min_count=1):
        """Keep tokens counted at least ``min_count`` times, most frequent first.

        Args:
            counts: mapping token (str) -> count.
        """
        if min_count < 1:
            raise ValueError(f"min_count must be >= 1, got {min_count}")
        items = [(str(t), int(c)) for t, c in counts.items() if c >= min_count]
        if not items:
            return cls((), (), min_count)
        tokens = [t for t, _ in items]
        keys = _tokens_to_keys(tokens)
        count_array = np.array([c for _, c in items], np.int64)
        order = np.lexsort((keys, -count_array))
        return cls([tokens[i] for i in order], count_array[order], min_count)

    @property
    def num_embeddings(self):
        return len(self.tokens) + 2

    def ids_of_keys(self, keys):
        """Ids [m] int64 of token keys [m] uint64 (key 0 = missing)."""
        keys = np.ascontiguousarray(keys, dtype=np.uint64)
        out = np.empty(keys.shape[0], np.int64)
        _kernels.lookup_keys(out, self._table_keys, self._table_ids, self._table_filled,
                             keys, np.int64(MISSING_ID), np.int64(OOV_ID))
        return out

    def to_dict(self):
        out = {"type": self.kind, "min_count": self.min_count, "tokens": list(self.tokens)}
        if self.counts is not None:
            out["counts"] = self.counts.tolist()
        return out

    def __eq__(self, other):
        return (isinstance(other, Vocabulary) and self.tokens == other.tokens)

    def __repr__(self):
        return f"Vocabulary({len(self.tokens)} tokens, min_count={self.min_count})"


class HashBuckets(_Encoder):
    """Token -> ``1 + key % num_buckets``, id 0 for missing; no training pass.

    Args:
        num_buckets: number of hash buckets (``num_embeddings`` is one more).

    >>> h = HashBuckets(1000)
    >>> h.num_embeddings, int(h.lookup([None])[0])
    (1001, 0)
    >>> bool(h.lookup(["05db9164"])[0] == 1 + 566101051579089404 % 1000)
    True
    """

    kind = "hash"

    def __init__(self, num_buckets):
        if isinstance(num_buckets, bool) or int(num_buckets) != num_buckets or num_buckets < 1:
            raise ValueError(f"num_buckets must be a positive integer, got {num_buckets!r}")
        self.num_buckets = int(num_buckets)

    @property
    def num_embeddings(self):
        return self.num_buckets + 1

    def ids_of_keys(self, keys):
        """Ids [m] int64 of token keys [m] uint64 (key 0 = missing)."""
        keys = np.ascontiguousarray(keys, dtype=np.uint64)
        out = np.empty(keys.shape[0], np.int64)
        _kernels.bucket_ids(out, keys, np.int64(self.num_buckets))
        return out

    def to_dict(self):
        return {"type": self.kind, "num_buckets": self.num_buckets, "hash": _HASH_NAME}

    def __eq__(self, other):
        return isinstance(other, HashBuckets) and self.num_buckets == other.num_buckets

    def __repr__(self):
        return f"HashBuckets({self.num_buckets})"


class RawKeys:
    """No vocabulary, no buckets: a feature's raw int64 keys as they are
    (``ids="dynamic"``, for ``DynamicEmbeddingTable``s). The readers give
    the keys (``hashing.raw_key``: integer ids unchanged, strings by a fixed
    64-bit hash); ``num_embeddings`` is None (the table is unbounded).

    >>> RawKeys().lookup(["42", "-7", None]).tolist()[:2]
    [42, -7]
    """

    kind = "dynamic"
    num_embeddings = None

    def lookup(self, tokens):
        """Raw keys [n] int64 of tokens (str or int; None = missing)."""
        from .hashing import raw_key
        return np.array([raw_key(None if t == "" else t) for t in tokens], np.int64)

    def ids_of_keys(self, keys):
        """The raw keys [m] int64 the reader gave, unchanged."""
        return np.ascontiguousarray(keys, dtype=np.int64)

    def to_dict(self):
        return {"type": self.kind, "keys": _RAW_KEYS_NAME}

    def __eq__(self, other):
        return isinstance(other, RawKeys)

    def __repr__(self):
        return "RawKeys()"


#: How ``RawKeys`` keys are made (``hashing.raw_key``), recorded with them.
_RAW_KEYS_NAME = "int64-or-fnv1a64-fmix64"


def _from_dict(name, d, path):
    kind = d.get("type") if isinstance(d, dict) else None
    try:
        if kind == "vocabulary":
            return Vocabulary(d["tokens"], d.get("counts"), d.get("min_count", 1))
        if kind == "hash":
            if d.get("hash", _HASH_NAME) != _HASH_NAME:
                raise ValueError(f"unknown hash {d.get('hash')!r} (this version uses {_HASH_NAME!r})")
            return HashBuckets(d["num_buckets"])
        if kind == "numeric":
            return NumericEncoder.from_dict(d)
        if kind == "dynamic":
            if d.get("keys", _RAW_KEYS_NAME) != _RAW_KEYS_NAME:
                raise ValueError(f"unknown raw keys {d.get('keys')!r} (this version makes "
                                 f"{_RAW_KEYS_NAME!r})")
            return RawKeys()
    except (KeyError, ValueError, TypeError) as err:
        raise DataError(f"feature {name!r}: {err}", path) from None
    raise DataError(f"feature {name!r}: type must be 'vocabulary', 'hash', 'dynamic' or "
                    f"'numeric', "
                    f"got {kind!r}", path)


def save_vocabulary(path, encoders):
    """Write feature name -> ``Vocabulary`` / ``HashBuckets`` /
    ``NumericEncoder`` as JSON.

    >>> import tempfile, os
    >>> p = os.path.join(tempfile.mkdtemp(), "vocab.json")
    >>> save_vocabulary(p, {"genre": Vocabulary(["Drama", "Comedy"]), "user": HashBuckets(64)})
    >>> load_vocabulary(p)["genre"].lookup(["Comedy"]).tolist()
    [3]
    """
    doc = {"format": _FORMAT, "version": 1,
           "features": {name: enc.to_dict() for name, enc in encoders.items()}}
    Path(path).write_text(json.dumps(doc, ensure_ascii=False), encoding="utf-8",
                          errors="surrogateescape")


def load_vocabulary(path):
    """Read what ``save_vocabulary`` wrote: dict feature name -> encoder."""
    try:
        text = Path(path).read_text(encoding="utf-8", errors="surrogateescape")
    except FileNotFoundError:
        raise FileNotFoundError(f"vocabulary file not found: {path}") from None
    try:
        doc = json.loads(text)
    except json.JSONDecodeError as err:
        raise DataError(f"not valid JSON: {err}", path, err.lineno) from None
    if not isinstance(doc, dict) or doc.get("format") != _FORMAT:
        raise DataError(f"not a {_FORMAT} file", path)
    features = doc.get("features")
    if not isinstance(features, dict):
        raise DataError("missing 'features' table", path)
    return {name: _from_dict(name, d, path) for name, d in features.items()}


class KeyCounter:
    """Counts token keys of one feature over a training pass, remembering the
    token text of every key that reaches ``min_count`` (so the vocabulary
    holds readable tokens without a second pass).

    >>> c = KeyCounter(min_count=2)
    >>> tokens = ["x", "y", "x", "z", "z", "x"]
    >>> c.add(token_keys(tokens), lambda positions: [tokens[k] for k in positions])
    >>> c.vocabulary().tokens, c.vocabulary().counts.tolist()
    (('x', 'z'), [3, 2])
    """

    def __init__(self, min_count=1):
        if min_count < 1:
            raise ValueError(f"min_count must be >= 1, got {min_count}")
        self.min_count = int(min_count)
        self._keys = np.zeros(1024, np.uint64)
        self._counts = np.zeros(1024, np.int64)
        self._filled = np.zeros(1024, np.uint8)
        self._size = 0
        self._kept_keys = []
        self._kept_tokens = []
        self._num_kept = 0

    def add(self, keys, tokens_at):
        """Count keys [m] uint64 (key 0, missing, is not counted).

        Args:
            tokens_at: function of positions [r] int64 into ``keys`` giving
                the token texts (str) there; called once per batch of keys
                that reached ``min_count``.
        """
        keys = np.ascontiguousarray(keys, dtype=np.uint64)
        present = np.flatnonzero(keys != 0)
        if present.shape[0] != keys.shape[0]:
            keys = keys[present]
        else:
            present = None
        reached = np.empty(keys.shape[0], np.int64)
        start = 0
        while start < keys.shape[0]:
            limit = self._keys.shape[0] // 2 - self._size
            if limit <= 0:
                self._grow()
                continue
            start_before = start
            start, added, num_reached = _kernels.count_keys(
                self._keys, self._counts, self._filled, reached[start_before:],
                keys, np.int64(start), np.int64(limit), np.int64(self.min_count))
            self._size += added
            if num_reached:
                # reached[] was filled from its own start; positions are into keys
                positions = reached[start_before:start_before + num_reached]
                self._kept_keys.append(keys[positions].copy())
                self._num_kept += int(num_reached)
                if present is not None:
                    positions = present[positions]
                tokens = list(tokens_at(positions))
                self._kept_tokens.extend(tokens)

    def _grow(self):
        keys = self._keys[self._filled.astype(bool)]
        counts = self._counts[self._filled.astype(bool)]
        capacity = self._keys.shape[0] * 2
        self._keys = np.zeros(capacity, np.uint64)
        self._counts = np.zeros(capacity, np.int64)
        self._filled = np.zeros(capacity, np.uint8)
        _kernels.insert_keys(self._keys, self._counts, self._filled, keys, counts)

    @property
    def num_distinct(self):
        return self._size

    @property
    def num_ids(self):
        """Ids of the vocabulary so far: 2 (missing, out of vocabulary) +
        the tokens that reached ``min_count``."""
        return 2 + self._num_kept

    def vocabulary(self):
        """The ``Vocabulary`` of tokens counted at least ``min_count`` times."""
        if not self._kept_keys:
            return Vocabulary((), (), self.min_count)
        keys = np.concatenate(self._kept_keys)
        counts = np.empty(keys.shape[0], np.int64)
        _kernels.lookup_keys(counts, self._keys, self._counts, self._filled, keys,
                             np.int64(0), np.int64(0))
        order = np.lexsort((keys, -counts))
        return Vocabulary([self._kept_tokens[i] for i in order], counts[order], self.min_count,
                          _keys=keys[order])
