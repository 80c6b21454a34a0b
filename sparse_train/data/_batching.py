"""Row operations on ``Batch`` (slice, take, concatenate), re-batching a
stream of parsed blocks into fixed-size batches, and a prefetch thread."""
import queue
import threading

import numpy as np

from ..ragged import Ragged
from .batch import Batch

__all__ = ["slice_rows", "take_rows", "concat", "rebatch", "prefetch"]


def _slice_ragged(r, start, stop):
    offsets = r.offsets[start:stop + 1]
    lo, hi = offsets[0], offsets[-1]
    weights = None if r.weights is None else r.weights[lo:hi]
    return Ragged(r.values[lo:hi], offsets - lo, weights)


def slice_rows(batch, start, stop):
    """Rows start:stop of a batch (values are views, offsets are new)."""
    return Batch(batch.labels[start:stop], batch.dense[start:stop],
                 {name: _slice_ragged(r, start, stop) for name, r in batch.sparse.items()})


def _take_ragged(r, rows):
    # O(len(rows)), never O(num_bags): the synthetic log takes each shuffled
    # batch out of all its rows (a whole-array diff here made an epoch
    # quadratic in the rows: 80% of LR's epoch time at 400k rows).
    starts = r.offsets[rows]
    lengths = r.offsets[rows + 1] - starts
    offsets = np.zeros(rows.shape[0] + 1, np.int64)
    np.cumsum(lengths, out=offsets[1:])
    source = np.repeat(starts - offsets[:-1], lengths)
    source += np.arange(offsets[-1], dtype=np.int64)
    weights = None if r.weights is None else r.weights[source]
    return Ragged(r.values[source], offsets, weights)


def take_rows(batch, rows):
    """The rows ``rows`` ([k] int64 positions, any order) of a batch.

    >>> b = Batch(np.array([0, 1, 1], np.float32), np.zeros((3, 0), np.float32),
    ...           {"f": Ragged.from_lengths([5, 6, 7, 8], [2, 0, 2])})
    >>> t = take_rows(b, np.array([2, 0]))
    >>> t.sparse["f"].values.tolist(), t.sparse["f"].offsets.tolist()
    ([7, 8, 5, 6], [0, 2, 4])
    """
    rows = np.asarray(rows, np.int64)
    unit = _one_id_features(batch)
    return Batch(batch.labels[rows], batch.dense[rows],
                 {name: _take_one_id(r, rows) if name in unit else _take_ragged(r, rows)
                  for name, r in batch.sparse.items()})


def _one_id_features(batch):
    """Names of the features of ``batch`` holding exactly one id a bag
    (offsets ``0, 1, ..., B``): their rows are taken without the ragged
    index arithmetic. Found once (an O(B) pass) and kept in
    ``batch.derived``, keyed by the offsets arrays (a feature replaced by
    another array is looked at again; arrays changed in place are not)."""
    key = tuple((name, id(r.offsets)) for name, r in batch.sparse.items())
    cached = batch.derived.get("one_id_features")
    if cached is not None and cached[0] == key:
        return cached[1]
    unit = frozenset(
        name for name, r in batch.sparse.items()
        if r.values.shape[0] == r.offsets.shape[0] - 1
        and np.array_equal(r.offsets, np.arange(r.offsets.shape[0], dtype=np.int64)))
    # the offsets arrays are held too, so their ids cannot be reused meanwhile
    batch.derived["one_id_features"] = (key, unit, [r.offsets for r in batch.sparse.values()])
    return unit


def _take_one_id(r, rows):
    """``_take_ragged`` of a ragged with one id a bag."""
    weights = None if r.weights is None else r.weights[rows]
    return Ragged(r.values[rows], np.arange(rows.shape[0] + 1, dtype=np.int64), weights)


def _concat_ragged(parts):
    values = np.concatenate([p.values for p in parts])
    weights = None
    if parts[0].weights is not None:
        weights = np.concatenate([p.weights for p in parts])
    offsets = np.zeros(sum(p.num_bags for p in parts) + 1, np.int64)
    row, base = 0, 0
    for p in parts:
        offsets[row + 1:row + p.num_bags + 1] = p.offsets[1:] + base
        row += p.num_bags
        base += p.values.shape[0]
    return Ragged(values, offsets, weights)


def concat(batches):
    """One batch of the rows of several, in order."""
    if len(batches) == 1:
        return batches[0]
    return Batch(np.concatenate([b.labels for b in batches]),
                 np.concatenate([b.dense for b in batches]),
                 {name: _concat_ragged([b.sparse[name] for b in batches])
                  for name in batches[0].sparse})


def rebatch(blocks, batch_size, drop_last=False):
    """Batches of exactly ``batch_size`` rows (the last may be smaller unless
    ``drop_last``) from blocks of any sizes, rows in order; so the batches do
    not depend on how the input was chunked."""
    pieces, have = [], 0
    for block in blocks:
        start, n = 0, block.size
        while start < n:
            take = min(batch_size - have, n - start)
            pieces.append(block if (start == 0 and take == n) else
                          slice_rows(block, start, start + take))
            have += take
            start += take
            if have == batch_size:
                yield concat(pieces)
                pieces, have = [], 0
    if pieces and not drop_last:
        yield concat(pieces)


_DONE = object()


def prefetch(iterator, depth):
    """Run ``iterator`` in a background thread, ``depth`` items ahead.

    The parsing kernels release the GIL (``nogil``), so reading the next
    chunk overlaps the training step. An exception in the thread is raised
    here, at the position it happened; closing this generator early stops
    the thread.
    """
    if depth <= 0:
        yield from iterator
        return
    items = queue.Queue(maxsize=depth)
    stop = threading.Event()

    def produce():
        try:
            for item in iterator:
                while not stop.is_set():
                    try:
                        items.put((item, None), timeout=0.1)
                        break
                    except queue.Full:
                        continue
                if stop.is_set():
                    return
            result = (_DONE, None)
        except BaseException as err:  # handed to the consumer
            result = (_DONE, err)
        while not stop.is_set():
            try:
                items.put(result, timeout=0.1)
                return
            except queue.Full:
                continue

    thread = threading.Thread(target=produce, name="sparse_train-prefetch", daemon=True)
    thread.start()
    try:
        while True:
            item, err = items.get()
            if item is _DONE:
                if err is not None:
                    raise err
                return
            yield item
    finally:
        stop.set()
        thread.join()
