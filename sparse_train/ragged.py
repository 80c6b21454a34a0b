"""``Ragged``: one feature's ids for a batch of bags (torchrec ``JaggedTensor``)."""
import numpy as np

__all__ = ["Ragged"]


class Ragged:
    """Ragged ids of one feature: bag b is ``values[offsets[b]:offsets[b+1]]``.

    Args:
        values: [n] int64 ids.
        offsets: [B+1] int64, non-decreasing, from 0 to n.
        weights: optional [n] float32 per-id weights.

    The lookups check ids and offsets (and name the feature); this container
    only fixes the dtypes, refusing values that are not integers (a float id
    would otherwise be truncated to another row).

    >>> r = Ragged.from_lengths([4, 7, 7], [2, 0, 1])
    >>> r.offsets.tolist(), r.num_bags
    ([0, 2, 2, 3], 3)
    """

    __slots__ = ("values", "offsets", "weights")

    def __init__(self, values, offsets, weights=None):
        self.values = _as_int64("values", values)
        self.offsets = _as_int64("offsets", offsets)
        self.weights = None if weights is None else np.ascontiguousarray(weights, dtype=np.float32)

    @classmethod
    def from_lengths(cls, values, lengths, weights=None):
        """From per-bag lengths [B] instead of offsets."""
        lengths = np.asarray(lengths, dtype=np.int64)
        offsets = np.zeros(lengths.shape[0] + 1, np.int64)
        np.cumsum(lengths, out=offsets[1:])
        return cls(values, offsets, weights)

    @classmethod
    def from_dense(cls, ids):
        """One id per bag: ``ids`` [B] becomes B bags of length 1."""
        ids = np.asarray(ids, dtype=np.int64).reshape(-1)
        return cls(ids, np.arange(ids.shape[0] + 1, dtype=np.int64))

    @property
    def lengths(self):
        return np.diff(self.offsets)

    @property
    def num_bags(self):
        return int(self.offsets.shape[0] - 1)

    def __len__(self):
        return self.num_bags

    def __repr__(self):
        weighted = ", weighted" if self.weights is not None else ""
        return f"Ragged(num_bags={self.num_bags}, num_values={self.values.shape[0]}{weighted})"


def _as_int64(what, array):
    array = np.asarray(array)
    if array.size and array.dtype.kind not in "iu":
        raise ValueError(f"Ragged: {what} must be integers, got dtype {array.dtype}")
    if array.dtype == np.uint64 and array.size and int(array.max()) > np.iinfo(np.int64).max:
        raise ValueError(f"Ragged: {what} holds {int(array.max())}, beyond int64")
    return np.ascontiguousarray(array, dtype=np.int64)
