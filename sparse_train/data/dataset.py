"""The common reader interface: ``Dataset`` and the file-backed ``TextDataset``.

Every reader exposes ``.spec`` (a ``DataSpec``) and iterates over ``Batch``es;
``split`` holds out a validation part by seed; feature ids come from a
vocabulary fitted on the (training) rows, or from hash buckets.
"""
import hashlib

import numpy as np

from .libsvm import parse_pair_lines
from ._batching import prefetch, rebatch, take_rows
from ._lines import MAX_LINE_BYTES, iter_line_chunks
from .batch import DataSpec, FeatureSpec
from .errors import DataError
from .hashing import token_key
from .numeric import NumericEncoder, NumericStatistics, needs_statistics
from .vocabulary import MAX_VOCABULARY_SIZE, HashBuckets, KeyCounter, RawKeys, save_vocabulary
from ..progress import Progress, progress_interval

__all__ = ["Dataset", "TextDataset", "held_out_rows"]

#: Bad lines kept (with their reason) per pass, for the caller to show.
MAX_BAD_LINE_EXAMPLES = 10


def held_out_rows(file_index, line_numbers, valid_fraction, seed):
    """Bool mask [n]: which rows belong to the validation part.

    A row's side depends only on (seed, file index, line number), never on
    how the file is chunked: ``u = fmix64((line + (file << 40)) ^ key("split:
    seed")) / 2**64`` and the row is held out when ``u < valid_fraction``.

    >>> held_out_rows(0, np.arange(1, 9), 0.5, seed=0).tolist()
    [True, False, False, True, False, False, True, True]
    """
    h = np.asarray(line_numbers).astype(np.uint64)
    h = h + np.uint64(int(file_index) << 40)
    h ^= np.uint64(token_key(f"split:{int(seed)}"))
    with np.errstate(over="ignore"):
        h ^= h >> np.uint64(33)
        h *= np.uint64(0xFF51AFD7ED558CCD)
        h ^= h >> np.uint64(33)
        h *= np.uint64(0xC4CEB9FE1A85EC53)
        h ^= h >> np.uint64(33)
    return (h >> np.uint64(11)).astype(np.float64) * 2.0 ** -53 < valid_fraction


def _check_fraction(valid_fraction):
    if not isinstance(valid_fraction, (int, float)) or not 0.0 < valid_fraction < 1.0:
        raise ValueError(f"valid_fraction must be in (0, 1), got {valid_fraction!r}")
    return float(valid_fraction)


class Dataset:
    """A click log read batch by batch.

    Attributes:
        spec: the ``DataSpec`` (sparse features with their ``num_embeddings``,
            dense feature names). For a vocabulary that is still to be built
            this runs the counting pass (so bad lines surface here, before
            any batch).
        batch_size: the default batch size.
        num_examples: rows in one pass, or None until a pass has counted them.
        skipped_lines: malformed lines skipped (``on_bad_line="skip"``) in the
            current or last pass; ``bad_line_examples`` lists the first few as
            (path, line, reason).
        vocabulary: feature name -> ``Vocabulary`` / ``HashBuckets``.

    Iterating yields the batches of one pass in file order (``for batch in
    ds``); ``batches`` takes options.

    >>> from sparse_train.data import open_dataset
    >>> ds = open_dataset(format="synthetic", num_examples=1000, seed=0, batch_size=256)
    >>> [b.size for b in ds], ds.spec.feature("c0").num_embeddings
    ([256, 256, 256, 232], 100)
    >>> train, valid = ds.split(0.2, seed=0)
    >>> train.num_examples + valid.num_examples
    1000
    """

    batch_size = 1024
    num_examples = None
    skipped_lines = 0
    bad_line_examples = ()

    @property
    def spec(self):
        raise NotImplementedError

    @property
    def vocabulary(self):
        raise NotImplementedError

    def batches(self, batch_size=None, shuffle=False, seed=0, drop_last=False):
        """Yield the ``Batch``es of one pass.

        Args:
            batch_size: rows a batch (default ``self.batch_size``); every
                batch but the last has exactly this many.
            shuffle: shuffle rows (for file readers: within each chunk read,
                a window of ``chunk_bytes``; the synthetic log shuffles all).
            seed: the shuffle's seed (use e.g. the epoch number).
            drop_last: leave out a last, smaller batch.
        """
        raise NotImplementedError

    def __iter__(self):
        return self.batches()

    @property
    def dynamic_ids(self):
        """True when the categorical features give raw int64 keys
        (``ids="dynamic"``, for dynamic tables) instead of table rows."""
        return False

    def build_ids(self, progress=None):
        """Fit the feature ids now, if they are still to be fitted (the
        counting pass of a vocabulary), with a progress bar on the stream
        ``progress`` (None: silent); returns ``vocabulary``. ``spec`` and
        the first pass call it silently."""
        return self.vocabulary

    def check(self, progress=None):
        """Read every row of one pass once and check it, keeping no batch:
        parse (cells, labels 0/1 or the schema's threshold, numbers), map
        the tokens to ids with the training vocabulary (fitted first if it
        is still to be fitted: that counting pass is then the check) and
        apply the numeric encoders. Call it on validation data before the
        first training step, so a bad line there fails the run before any
        training, not after an epoch.

        A ``split()`` view checks only its own rows (the train view's passes
        never parse the held-out rows): call ``check`` on the valid view.

        Args:
            progress: a stream for a progress bar (None: silent).

        Returns:
            rows read (int); lines skipped (``on_bad_line="skip"``) are in
            ``skipped_lines`` and ``bad_line_examples``, as after any pass.

        Raises:
            DataError: the first bad line, as ``file:line: what``
            (``on_bad_line="error"``).

        >>> from sparse_train.data import open_dataset
        >>> open_dataset(format="synthetic", num_examples=100, seed=0).check()
        100
        """
        return self.num_examples

    def split(self, valid_fraction, seed=0):
        """(train, valid) views of this data: each row goes to valid with
        probability ``valid_fraction``, decided by ``seed`` and the row's
        position only. A vocabulary is fitted on the train view; valid uses
        its ids."""
        raise NotImplementedError

    def save_vocabulary(self, path):
        """Write the feature ids (``vocabulary``, numeric statistics
        included) as JSON; read them back with ``open_dataset(...,
        vocabulary=path)``."""
        save_vocabulary(path, self.vocabulary)

    def preprocessing_state(self):
        """The fitted numeric preprocessing as a JSON-able dict: feature name
        -> ``NumericEncoder.to_dict()`` (normalizer and training statistics,
        or bucket boundaries); {} for data without numeric columns to fit
        (the synthetic log generates its numerics). Keep it in a checkpoint;
        ``check_preprocessing`` refuses data that would be preprocessed
        otherwise, and ``open_dataset(..., vocabulary=...)`` restores it."""
        return {}

    def fingerprint(self):
        """What decides the rows of each categorical feature, as a JSON-able
        dict: feature name -> ``{"type": "vocabulary", "size": n, "sha256":
        h}`` with ``h`` the SHA-256 of the tokens in id order (token ``r`` is
        row ``2 + r``; each token as its 8-byte little-endian UTF-8 length,
        then those bytes), or ``{"type": "hash", "buckets": b}``. Two
        datasets with equal fingerprints map every token to the same row;
        keep it in a checkpoint (``scripts/train.py`` does) to refuse data
        that would reassign rows. {} for the synthetic log (ids are rows).

        >>> from sparse_train.data import open_dataset
        >>> open_dataset(format="synthetic", num_examples=10).fingerprint()
        {}
        """
        from .vocabulary import RawKeys, Vocabulary
        out = {}
        for name, encoder in self.vocabulary.items():
            if isinstance(encoder, RawKeys):
                out[name] = encoder.to_dict()
                continue
            if isinstance(encoder, Vocabulary):
                digest = hashlib.sha256()
                for token in encoder.tokens:
                    raw = token.encode("utf-8", "surrogateescape")
                    digest.update(len(raw).to_bytes(8, "little"))
                    digest.update(raw)
                out[name] = {"type": "vocabulary", "size": len(encoder.tokens),
                             "sha256": digest.hexdigest()}
            elif isinstance(encoder, HashBuckets):
                out[name] = {"type": "hash", "buckets": encoder.num_buckets}
        return out

    def check_fingerprint(self, saved, where="the checkpoint"):
        """Raise ``DataError`` naming the first categorical feature whose
        ids differ from ``saved`` (a ``fingerprint()``): a feature missing on
        either side, another kind of ids, another number of buckets, or
        another vocabulary (size and hash)."""
        mine = self.fingerprint()
        for name in sorted(set(mine) | set(saved)):
            here, there = mine.get(name), saved.get(name)
            if here == there:
                continue
            if here is None or there is None:
                raise DataError(f"categorical feature {name!r} is "
                                f"{'missing from this data' if here is None else 'new'}: "
                                f"{where} was trained on other features")
            if here.get("type") != there.get("type") or here["type"] in ("hash", "dynamic"):
                raise DataError(f"categorical feature {name!r}: this data's ids "
                                f"{_describe_ids(here)} differ from {where}'s "
                                f"{_describe_ids(there)}")
            raise DataError(f"categorical feature {name!r}: this data's vocabulary "
                            f"({here['size']} tokens, sha256 {here['sha256'][:12]}) differs from "
                            f"{where}'s ({there.get('size')} tokens, sha256 "
                            f"{str(there.get('sha256'))[:12]}); its rows would belong to other "
                            f"tokens. Resume with the same data and id options (or save the "
                            f"vocabulary and pass it back)")

    def check_preprocessing(self, state, where="the checkpoint"):
        """Raise ``DataError`` naming the first numeric feature whose
        preprocessing differs from ``state`` (a ``preprocessing_state()``)."""
        mine = self.preprocessing_state()
        for name in sorted(set(mine) | set(state)):
            if mine.get(name) != state.get(name):
                raise DataError(f"numeric feature {name!r}: this data's preprocessing "
                                f"{mine.get(name)} differs from {where}'s {state.get(name)}")

    def _check_batch_args(self, batch_size):
        batch_size = self.batch_size if batch_size is None else batch_size
        if isinstance(batch_size, bool) or int(batch_size) != batch_size or batch_size < 1:
            raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
        return int(batch_size)


def _describe_ids(entry):
    if entry.get("type") == "dynamic":
        return "(raw int64 keys for dynamic tables)"
    if entry.get("type") == "hash":
        return f"(hash, {entry.get('buckets')} buckets)"
    return f"(vocabulary of {entry.get('size')} tokens)"


class TextDataset(Dataset):
    """Rows of text files, parsed chunk by chunk (never the whole file).

    Made by ``open_dataset``; the constructor's arguments are internal.
    """

    def __init__(self, paths, parser, id_config, *, batch_size, on_bad_line, chunk_bytes,
                 prefetch_depth, max_examples, skip_header, encoders=None, encoder_source=None,
                 row_split=None, extra_skipped=(), max_line_bytes=MAX_LINE_BYTES,
                 max_vocabulary_size=MAX_VOCABULARY_SIZE):
        self.paths = [str(p) for p in paths]
        self.parser = parser
        self._id_config = dict(id_config)
        self.batch_size = batch_size
        self.on_bad_line = on_bad_line
        self.chunk_bytes = chunk_bytes
        self.prefetch = prefetch_depth
        self.max_examples = max_examples
        self._skip_header = skip_header
        self.max_line_bytes = int(max_line_bytes)
        self.max_vocabulary_size = int(max_vocabulary_size)
        self._chunk = None  # the chunk of the current pass being read (for errors)
        self._given_encoders = encoders
        self._encoders = encoders
        self._encoder_source = encoder_source
        self._row_split = row_split
        self._extra_skipped = list(extra_skipped)
        self.skipped_lines = len(self._extra_skipped)
        self.bad_line_examples = list(self._extra_skipped[:MAX_BAD_LINE_EXAMPLES])
        self.num_examples = None
        self._fit_pass = False

    # -- ids and spec --------------------------------------------------------
    @property
    def vocabulary(self):
        return self.build_ids()

    @property
    def dynamic_ids(self):
        return any(kind == "dynamic" for kind, _ in self._id_config.values())

    def build_ids(self, progress=None):
        if self._encoders is None:
            if self._encoder_source is not None:
                self._encoders = self._encoder_source.build_ids(progress)
            else:
                self._encoders = self._fit(progress)
        return self._encoders

    def check(self, progress=None):
        self._fit_pass = False
        encoders = self.build_ids(progress)
        if self._fit_pass:  # the counting pass just read and checked every row
            return self.num_examples
        bar = Progress(None, "checking rows", unit="rows", file=progress,
                       interval=progress_interval(progress))
        for parsed in self._parsed_chunks():
            parsed.encode(encoders)
            bar.update(parsed.labels.shape[0])
        bar.close()
        return self.num_examples

    def preprocessing_state(self):
        encoders = self.vocabulary
        return {name: encoders[name].to_dict()
                for name, _, _ in getattr(self.parser, "numeric_columns", ())}

    @property
    def spec(self):
        encoders = self.vocabulary
        sparse = tuple(FeatureSpec(name, encoders[name].num_embeddings, multi_hot, weighted)
                       for name, multi_hot, weighted in self.parser.sparse_columns)
        return DataSpec(sparse, tuple(self.parser.dense_names))

    def _fit(self, progress=None):
        """Hash buckets and raw keys as configured; vocabularies and numeric
        statistics by one counting pass (its progress shown on the stream
        ``progress``). Without a vocabulary to count (hash or raw keys) the
        pass reads only the rows the statistics are fitted on (the first
        ``MAX_STATISTIC_ROWS``), so ids="dynamic" stays one streaming pass."""
        encoders, counters, statistics = {}, {}, {}
        numeric = list(getattr(self.parser, "numeric_columns", ()))
        for name, kind, buckets in numeric:
            if needs_statistics(kind):
                statistics[name] = NumericStatistics(kind, buckets)
            else:
                encoders[name] = NumericEncoder(kind)
        for name, _, _ in self.parser.sparse_columns:
            if name in statistics:
                continue
            kind, value = self._id_config[name]
            if kind == "hash":
                encoders[name] = HashBuckets(value)
            elif kind == "dynamic":
                encoders[name] = RawKeys()
            else:
                counters[name] = KeyCounter(value)
        if counters or statistics:
            positions = {name: j for j, (name, _, _) in enumerate(numeric)}
            bar = Progress(None, "counting feature ids", unit="rows", file=progress,
                           interval=progress_interval(progress))
            complete = True
            for parsed in self._parsed_chunks(keep_tokens=bool(counters)):
                for name, counter in counters.items():
                    raw = parsed.sparse[name]
                    counter.add(raw.keys, raw.tokens_at)
                    if counter.num_ids > self.max_vocabulary_size:
                        self._vocabulary_too_large(name, counter)
                for name, stat in statistics.items():
                    stat.add(parsed.dense[:, positions[name]])
                bar.update(parsed.labels.shape[0])
                if not counters and all(stat.full for stat in statistics.values()):
                    complete = False  # the statistics have their rows: stop reading
                    break
            bar.close()
            self._fit_pass = complete
            for name, counter in counters.items():
                encoders[name] = counter.vocabulary()
            for name, stat in statistics.items():
                encoders[name] = stat.encoder()
        names = [name for name, _, _ in self.parser.sparse_columns]
        names += [name for name, _, _ in numeric if name not in names]
        return {name: encoders[name] for name in names}

    def _vocabulary_too_large(self, name, counter):
        chunk = self._chunk
        where = "" if chunk is None else f" by line {int(chunk.line_numbers[-1])}"
        raise DataError(f"feature {name!r}: its vocabulary passes max_vocabulary_size = "
                        f"{self.max_vocabulary_size} ids{where} (tokens seen at least "
                        f"min_count = {counter.min_count} times; each id is a table row): "
                        f"raise min_count, use hash ids (ids='hash', hash_buckets), or raise "
                        f"max_vocabulary_size if the table really fits",
                        None if chunk is None else chunk.path)

    # -- passes ----------------------------------------------------------------
    def _parsed_chunks(self, keep_tokens=False):
        """``Parsed`` chunks of one pass: this view's rows, bad lines raised
        or skipped, at most ``max_examples`` rows."""
        self.skipped_lines = len(self._extra_skipped)
        self.bad_line_examples = list(self._extra_skipped[:MAX_BAD_LINE_EXAMPLES])
        rows = 0
        for chunk in self._chunks():
            if self._row_split is not None:
                fraction, seed, want_valid = self._row_split
                valid = held_out_rows(chunk.file_index, chunk.line_numbers, fraction, seed)
                chunk = chunk.select(valid if want_valid else ~valid)
            if self.max_examples is not None:
                remaining = self.max_examples - rows
                if remaining <= 0:  # rows == max_examples: the pass is complete
                    break
                if len(chunk) > remaining:
                    chunk = chunk.select(slice(0, remaining))
            if not len(chunk):
                continue
            parsed = self.parser.parse(chunk, keep_tokens)
            if parsed.bad is not None:
                chunk = self._drop_bad_lines(chunk, parsed)
                if not len(chunk):
                    continue
                parsed = self.parser.parse(chunk, keep_tokens)
            rows += len(chunk)
            self._chunk = chunk
            yield parsed
        self.num_examples = rows

    def _chunks(self):
        """The chunks of whole rows of one pass (``LineChunk``s here)."""
        return iter_line_chunks(self.paths, self.chunk_bytes, self._skip_header,
                                self.max_line_bytes)

    def _drop_bad_lines(self, chunk, parsed):
        bad = np.flatnonzero(parsed.bad)
        if self.on_bad_line == "error":
            i = int(bad[0])
            raise DataError(parsed.reason(i) + " (on_bad_line='skip' skips such lines)",
                            chunk.path, int(chunk.line_numbers[i]))
        room = MAX_BAD_LINE_EXAMPLES - len(self.bad_line_examples)
        for i in bad[:max(room, 0)]:
            self.bad_line_examples.append(
                (chunk.path, int(chunk.line_numbers[i]), parsed.reason(int(i))))
        self.skipped_lines += int(bad.shape[0])
        return chunk.select(~parsed.bad)

    def _blocks(self, encoders, shuffle, seed):
        rng = np.random.default_rng(seed) if shuffle else None
        for parsed in self._parsed_chunks():
            block = parsed.encode(encoders)
            if rng is not None:
                block = take_rows(block, rng.permutation(block.size))
            yield block

    def batches(self, batch_size=None, shuffle=False, seed=0, drop_last=False):
        """Yield the ``Batch``es of one pass over the files (see ``Dataset``).

        >>> import tempfile, os
        >>> from sparse_train.data import open_dataset
        >>> p = os.path.join(tempfile.mkdtemp(), "log.svm")
        >>> _ = open(p, "w").write("1 3:1 7:0.5\\n0 3:1\\n")
        >>> ds = open_dataset(p, "libsvm", batch_size=2)
        >>> b = next(iter(ds))
        >>> b.labels.tolist(), b.sparse["features"].weights.tolist()
        ([1.0, 0.0], [1.0, 0.5, 1.0])
        """
        batch_size = self._check_batch_args(batch_size)
        encoders = self.vocabulary  # fit first: errors before any batch
        blocks = prefetch(self._blocks(encoders, shuffle, seed), self.prefetch)
        return rebatch(blocks, batch_size, drop_last)

    def split(self, valid_fraction, seed=0):
        valid_fraction = _check_fraction(valid_fraction)
        if self._row_split is not None:
            raise ValueError("this dataset is already a split view")
        common = dict(batch_size=self.batch_size, on_bad_line=self.on_bad_line,
                      chunk_bytes=self.chunk_bytes, prefetch_depth=self.prefetch,
                      max_examples=self.max_examples, skip_header=self._skip_header,
                      max_line_bytes=self.max_line_bytes,
                      max_vocabulary_size=self.max_vocabulary_size)
        # ids given (a vocabulary file, another dataset) carry over; ids to be
        # fitted are fitted on the train view only, so valid rows stay unseen
        # lines skipped outside the data (a featindex file's) are counted
        # once, by the train view
        train = type(self)(self.paths, self.parser, self._id_config, **common,
                            encoders=self._given_encoders, encoder_source=self._encoder_source,
                            row_split=(valid_fraction, seed, False),
                            extra_skipped=self._extra_skipped)
        valid = type(self)(self.paths, self.parser, self._id_config, **common,
                            encoder_source=train, row_split=(valid_fraction, seed, True))
        return train, valid

    def __repr__(self):
        files = self.paths[0] if len(self.paths) == 1 else f"{len(self.paths)} files"
        return f"{type(self).__name__}({files!r}, batch_size={self.batch_size})"


def scan_num_fields(paths, chunk_bytes, skip_header=False):
    """1 + the largest field of the well-formed lines of libffm files (a
    pass over the files; give ``num_fields`` to avoid it)."""
    largest = -1
    for chunk in iter_line_chunks(paths, chunk_bytes, skip_header):
        counts, _, (_, fields, _, _, status, _) = parse_pair_lines(chunk, True)
        good = np.repeat(status == 0, counts)
        if good.any():
            largest = max(largest, int(fields[good].max()))
    return largest + 1
