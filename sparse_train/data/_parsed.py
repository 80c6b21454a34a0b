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
    when all are good); ``reason(i)`` says what is wrong with line i."""
    labels: np.ndarray
    dense: np.ndarray
    sparse: dict
    bad: np.ndarray = None
    reason: Callable = None

    def encode(self, encoders):
        """The ``Batch``, token keys mapped to ids by ``encoders`` (feature
        name -> ``Vocabulary`` or ``HashBuckets``)."""
        sparse = {name: Ragged(encoders[name].ids_of_keys(raw.keys), raw.offsets, raw.weights)
                  for name, raw in self.sparse.items()}
        return Batch(self.labels, self.dense, sparse)
