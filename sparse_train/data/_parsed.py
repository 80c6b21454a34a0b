"""What a parser makes of a chunk of lines, before token keys become ids."""
from dataclasses import dataclass
from typing import Callable

import numpy as np

from ..ragged import Ragged
from .batch import Batch


@dataclass
class RawFeature:
    """One sparse feature of a chunk: token keys [m] uint64 (0 = missing),
    offsets [n+1] int64, optional weights [m] float32, and ``tokens_at``,
    a function of positions [r] into ``keys`` giving the token texts there
    (used only while building a vocabulary)."""
    keys: np.ndarray
    offsets: np.ndarray
    weights: np.ndarray
    tokens_at: Callable


@dataclass
class Parsed:
    """A parsed chunk of n lines. ``bad`` [n] bool marks malformed lines (None
    when all are good); ``reason(i)`` says what is wrong with line i.

    ``numeric``: None when ``dense`` [n, d] float32 is final; else the names
    of ``dense``'s columns, raw values [n, d] float64 (NaN = missing) that
    ``encode`` normalizes or bucketizes."""
    labels: np.ndarray
    dense: np.ndarray
    sparse: dict
    bad: np.ndarray = None
    reason: Callable = None
    numeric: tuple = None

    def encode(self, encoders):
        """The ``Batch``, token keys mapped to ids by ``encoders`` (feature
        name -> ``Vocabulary``, ``HashBuckets`` or, for numeric features,
        ``NumericEncoder``); bucketized numeric features follow the others
        in ``Batch.sparse``."""
        sparse = {name: Ragged(encoders[name].ids_of_keys(raw.keys), raw.offsets, raw.weights)
                  for name, raw in self.sparse.items()}
        dense = self.dense
        if self.numeric is not None:
            n = self.labels.shape[0]
            columns = []
            for j, name in enumerate(self.numeric):
                encoder = encoders[name]
                if encoder.kind == "bucketize":
                    sparse[name] = Ragged(encoder.ids(dense[:, j]),
                                          np.arange(n + 1, dtype=np.int64))
                else:
                    columns.append(encoder.apply(dense[:, j]))
            dense = (np.stack(columns, axis=1) if columns else np.zeros((n, 0), np.float32))
        return Batch(self.labels, dense, sparse)
