"""libsvm and libffm click logs: fields become features, values become weights.

    libsvm   label index:value index:value ...
    libffm   label field:index:value field:index:value ...

Each field is one sparse feature whose ids come from its indices; the values
are per-id weights, so a field repeated in a row is a weighted multi-hot bag
and a field absent from a row is an empty bag (its value is 0, as in the
sparse format). A libsvm file has no fields; three ways to get them:

- a featindex file (``field:value<TAB>index`` a line, as made by the
  make-ipinyou-data pipeline) maps each index to its field;
- ``num_fields=F`` reads the k-th pair of a row as field k (rows of one-hot
  fields written in a fixed order, e.g. the iPinYou ``*.fm.txt`` files);
- otherwise all indices form one feature, ``features``.

Labels: 1 and +1 mean a click, 0 and -1 none; any other value is a bad line.

Limits. Fields and featindex indices size arrays (a field per feature, a
featindex entry per index), so one hostile line could make them absurdly
large: a field number >= ``max_fields`` (default ``MAX_FIELDS``) or an
index > ``max_index`` (default ``MAX_INDEX``) is a ``DataError`` naming
file:line and the limit, which the keyword raises. A row of more than
``max_bag_length`` pairs (``MAX_BAG_LENGTH``) is a bad line.
"""
import numpy as np

from ..kernels import data_hash as _hash
from ..kernels import data_libsvm as _kernels
from ._lines import MAX_LINE_BYTES, iter_line_chunks
from ._parsed import Parsed, RawFeature
from .errors import DataError

__all__ = ["PairsParser", "FeatIndex", "load_featindex", "scan_num_fields", "MAX_FIELDS",
           "MAX_INDEX", "MAX_BAG_LENGTH"]

#: Default largest number of libffm fields (features); each costs a
#: [rows of a chunk] int64 column while a chunk is grouped.
MAX_FIELDS = 1000
#: Default largest featindex index (its map holds one int64 per index).
MAX_INDEX = (1 << 26) - 1
#: Default largest number of pairs in one row (all its bags together).
MAX_BAG_LENGTH = 1 << 20
_TOO_MANY_PAIRS = 6  # a status beside the kernel's (4: label range, 5: unknown feature)


class FeatIndex:
    """The field of each libsvm index, read from a featindex file.

    Attributes:
        fields: field labels in feature order (numeric labels ascending,
            then the others sorted); feature f is named ``field_<label>``.
        feature_of_index: [max index + 1] int64, the feature of each index
            (-1 for an index the file does not list).
        skipped: (line, reason) of the lines skipped as malformed.
    """

    def __init__(self, fields, feature_of_index, path=None, skipped=()):
        self.fields = tuple(fields)
        self.feature_of_index = np.ascontiguousarray(feature_of_index, np.int64)
        self.path = path
        self.skipped = list(skipped)

    @property
    def feature_names(self):
        return tuple(f"field_{label}" for label in self.fields)


def _field_order(label):
    return (0, int(label), "") if label.isdigit() else (1, 0, label)


def load_featindex(path, on_bad_line="error", max_index=MAX_INDEX):
    """Read a featindex file (``field:value<TAB>index`` a line; a key
    without ``:`` is its own field, e.g. ``truncate``).

    Args:
        on_bad_line: "error" raises ``DataError`` at a malformed line (no tab,
            an index that is not a non-negative integer, an index listed
            twice); "skip" leaves it out and records it in ``.skipped``.
        max_index: an index above it is a ``DataError`` (it sizes the map).

    >>> import tempfile, os
    >>> p = os.path.join(tempfile.mkdtemp(), "featindex.txt")
    >>> _ = open(p, "w").write("1:a\\t0\\n2:b\\t1\\n1:c\\t2\\n")
    >>> fi = load_featindex(p)
    >>> fi.feature_names, fi.feature_of_index.tolist()
    (('field_1', 'field_2'), [0, 1, 0])
    """
    fields_of = {}
    skipped = []
    with open(path, "rb") as f:
        for number, raw in enumerate(f, start=1):
            line = raw.decode("utf-8", "replace").rstrip("\r\n")
            if not line:
                continue
            key, tab, index = line.rpartition("\t")
            reason = None
            if not tab:
                reason = f"expected field:value<TAB>index, got {line!r}"
            elif not index.isascii() or not index.isdigit():
                reason = f"index {index!r} is not a non-negative integer"
            elif int(index) > max_index:
                raise DataError(f"index {index} exceeds max_index = {max_index} (the map holds "
                                f"one entry per index; raise max_index if it is real)",
                                path, number)
            elif int(index) in fields_of:
                reason = f"index {index} is listed twice"
            if reason is not None:
                if on_bad_line == "error":
                    raise DataError(reason + " (on_bad_line='skip' leaves such lines out)",
                                    path, number)
                skipped.append((number, reason))
                continue
            fields_of[int(index)] = key.split(":", 1)[0]
    if not fields_of:
        raise DataError("the featindex file lists no index", path)
    labels = sorted(set(fields_of.values()), key=_field_order)
    feature = {label: f for f, label in enumerate(labels)}
    feature_of_index = np.full(max(fields_of) + 1, -1, np.int64)
    indices = np.fromiter(fields_of.keys(), np.int64, len(fields_of))
    feature_of_index[indices] = [feature[label] for label in fields_of.values()]
    return FeatIndex(labels, feature_of_index, str(path), skipped)


def scan_num_fields(paths, chunk_bytes, skip_header=False, max_fields=MAX_FIELDS,
                    max_line_bytes=MAX_LINE_BYTES):
    """1 + the largest field of the well-formed lines of libffm files (a
    pass over the files; give ``num_fields`` to avoid it). A field >=
    ``max_fields`` is a ``DataError`` naming its file:line.

    >>> import tempfile, os
    >>> p = os.path.join(tempfile.mkdtemp(), "x.ffm")
    >>> _ = open(p, "w").write("1 0:5:1 2:7:1\\n0 100000000:1:1\\n")
    >>> scan_num_fields([p], 1 << 20)  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    sparse_train.data.errors.DataError: ...x.ffm:2: field 100000000 is not below max_fields = 1000 ...
    """
    largest = -1
    for chunk in iter_line_chunks(paths, chunk_bytes, skip_header, max_line_bytes):
        counts, _, (_, fields, _, _, status, _) = parse_pair_lines(chunk, True)
        good = np.repeat(status == 0, counts)
        if good.any():
            top = int(fields[good].max())
            if top >= max_fields:
                row = np.repeat(np.arange(len(chunk)), counts)[good & (fields >= max_fields)][0]
                raise DataError(f"field {fields[good & (fields >= max_fields)][0]} is not below "
                                f"max_fields = {max_fields} (each field is a feature; give "
                                f"num_fields, or raise max_fields if the data really has that "
                                f"many)", chunk.path, int(chunk.line_numbers[row]))
            largest = max(largest, top)
    return largest + 1


def parse_pair_lines(chunk, with_field, max_pairs=None):
    """(pairs per line [n], line offsets into the pairs [n+1], the kernel's
    ``parse_pairs`` output) of a ``LineChunk`` of libsvm / libffm lines.
    A line of more than ``max_pairs`` pairs gets no pairs (count 0) and
    status ``6``."""
    n = len(chunk)
    counts = np.empty(n, np.int64)
    _kernels.count_pairs(counts, chunk.buf, chunk.line_starts, chunk.line_ends)
    too_many = None
    if max_pairs is not None and (counts > max_pairs).any():
        too_many = counts > max_pairs
        counts[too_many] = 0
    offsets = np.zeros(n + 1, np.int64)
    np.cumsum(counts, out=offsets[1:])
    parsed = _kernels.parse_pairs(chunk.buf, chunk.line_starts, chunk.line_ends, offsets,
                                  with_field)
    if too_many is not None:
        parsed[4][too_many] = _TOO_MANY_PAIRS
    return counts, offsets, parsed


class PairsParser:
    """Parses chunks of libsvm (``with_field=False``) or libffm lines.

    Args:
        with_field: True for libffm.
        num_fields: libffm: the number of fields (features ``field_0`` ..);
            a field outside ``[0, num_fields)`` makes a line bad. libsvm:
            pair k of a row is field k; more pairs than fields make a line
            bad.
        featindex: libsvm: a ``FeatIndex`` mapping indices to fields; an
            index it does not list makes a line bad.
        weighted: keep the values as per-id weights (else they are dropped).
        max_fields: the largest ``num_fields`` accepted (``MAX_FIELDS``).
        max_bag_length: a row of more pairs is a bad line (``MAX_BAG_LENGTH``).
    """

    #: True: the indices themselves are the features' keys (ids="dynamic",
    #: raw int64 keys for dynamic tables) instead of the keys of their text.
    raw_keys = False

    def __init__(self, with_field, num_fields=None, featindex=None, weighted=True,
                 max_fields=MAX_FIELDS, max_bag_length=MAX_BAG_LENGTH):
        self.max_bag_length = int(max_bag_length)
        self.with_field = bool(with_field)
        self.featindex = featindex
        self.weighted = bool(weighted)
        if featindex is not None and num_fields is not None:
            raise ValueError("give a featindex or num_fields, not both")
        self.positional = not self.with_field and num_fields is not None
        if self.with_field and num_fields is None:
            raise ValueError("libffm needs num_fields")
        if num_fields is not None:
            if isinstance(num_fields, bool) or int(num_fields) != num_fields or num_fields < 1:
                raise ValueError(f"num_fields must be a positive integer, got {num_fields!r}")
            if num_fields > max_fields:
                raise ValueError(f"num_fields = {num_fields} exceeds max_fields = {max_fields} "
                                 f"(each field is a feature; raise max_fields if it is real)")
            self.feature_names = tuple(f"field_{f}" for f in range(int(num_fields)))
        elif featindex is not None:
            self.feature_names = featindex.feature_names
        else:
            self.feature_names = ("features",)

    @property
    def dense_names(self):
        return ()

    @property
    def sparse_columns(self):
        """(name, multi_hot, weighted) of each sparse feature, in order."""
        return tuple((name, True, self.weighted) for name in self.feature_names)

    @property
    def num_features(self):
        return len(self.feature_names)

    def parse(self, chunk, keep_tokens=False):
        """``Parsed`` of a ``LineChunk`` (token texts are always available)."""
        counts, offsets, (labels, fields, indices, values, status, bad_token) = \
            parse_pair_lines(chunk, self.with_field, self.max_bag_length)
        n = len(chunk)
        # 1 / +1 are clicks, 0 / -1 are not; anything else (0.5, 2) is a bad
        # line: AUC and the log loss of a click need labels 0 or 1
        labels[labels == -1.0] = 0.0
        status[(status == _kernels.PAIRS_OK) & ~((labels == 0.0) | (labels == 1.0))] = 4
        if self.positional:
            fields = np.arange(indices.shape[0], dtype=np.int64) - np.repeat(offsets[:-1], counts)
        features = self._features(fields, indices)
        unknown = features < 0
        if unknown.any():
            rows = np.repeat(np.arange(n), counts)[unknown]
            hit = status[rows] == _kernels.PAIRS_OK
            status[rows[hit]] = 5
        if (status != _kernels.PAIRS_OK).any():
            bad = status != _kernels.PAIRS_OK

            def reason(i):
                return self._reason(chunk, i, status, bad_token, offsets, fields, indices,
                                    features, labels)
            empty = np.zeros((n, 0), np.float32)
            return Parsed(labels.astype(np.float32), empty, {}, bad, reason)
        order, feature_offsets = _kernels.group_by_feature(features, offsets,
                                                          np.int64(self.num_features))
        if self.raw_keys:  # an index is its own raw key (hashing.raw_key)
            keys = np.ascontiguousarray(indices, np.int64)
        else:
            keys = np.empty(indices.shape[0], np.uint64)
            _hash.index_keys(keys, indices)
        weights = values.astype(np.float32)
        sparse, base = {}, 0
        for f, name in enumerate(self.feature_names):
            count = int(feature_offsets[f, n])
            positions = order[base:base + count]
            base += count
            feature_indices = indices[positions]

            def tokens_at(at, feature_indices=feature_indices):
                return [str(i) for i in feature_indices[at].tolist()]
            sparse[name] = RawFeature(keys[positions], np.ascontiguousarray(feature_offsets[f]),
                                      weights[positions] if self.weighted else None, tokens_at)
        return Parsed(labels.astype(np.float32), np.zeros((n, 0), np.float32), sparse)

    def _features(self, fields, indices):
        if self.with_field or self.positional:
            return np.where(fields < self.num_features, fields, -1)
        if self.featindex is None:
            return np.zeros(indices.shape[0], np.int64)
        table = self.featindex.feature_of_index
        known = indices < table.shape[0]
        out = np.full(indices.shape[0], -1, np.int64)
        out[known] = table[indices[known]]
        return out

    def _reason(self, chunk, i, status, bad_token, offsets, fields, indices, features, labels):
        code = status[i]
        tokens = chunk.line_text(i, limit=10 ** 6).split()
        if code == _kernels.PAIRS_BAD_LABEL:
            return f"label {tokens[0]!r} is not a number"
        if code == 4:
            return (f"label {tokens[0]} is not 0/1 or -1/+1 (a click label, as AUC needs; "
                    f"binarise the labels first)")
        if code == _TOO_MANY_PAIRS:
            return (f"more than max_bag_length = {self.max_bag_length} pairs in the row "
                    f"(raise max_bag_length if the data really has such rows)")
        if code in (_kernels.PAIRS_BAD_TOKEN, _kernels.PAIRS_BAD_VALUE):
            token = tokens[bad_token[i]]
            form = "field:index:value" if self.with_field else "index:value"
            return f"token {bad_token[i]} {token!r} is not {form} (non-negative integers, a number)"
        k = offsets[i] + int(np.flatnonzero(features[offsets[i]:offsets[i + 1]] < 0)[0])
        if self.with_field:
            return f"field {fields[k]} is not in [0, num_fields = {self.num_features})"
        if self.positional:
            return f"{offsets[i + 1] - offsets[i]} pairs, more than num_fields = {self.num_features}"
        return f"index {indices[k]} is not in the featindex file ({self.featindex.path})"
