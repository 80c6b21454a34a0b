"""``Ragged``: dtypes fixed, non-integer ids refused (never truncated)."""
import numpy as np
import pytest

from sparse_train import Ragged


def test_ids_offsets_and_weights_take_their_dtypes():
    r = Ragged(np.array([3, 1, 2], np.int32), [0, 2, 3], weights=[1, 2, 3])
    assert r.values.dtype == np.int64 and r.offsets.dtype == np.int64
    assert r.weights.dtype == np.float32
    assert r.values.tolist() == [3, 1, 2] and r.lengths.tolist() == [2, 1]


@pytest.mark.parametrize("what,values,offsets", [
    ("values", [1.7, 2.0], [0, 2]),
    ("offsets", [1, 2], [0.0, 2.0]),
    ("values", np.array([2 ** 63], np.uint64), [0, 1]),
])
def test_non_integer_or_too_large_ids_are_refused(what, values, offsets):
    with pytest.raises(ValueError, match=f"Ragged: {what}"):
        Ragged(values, offsets)


def test_empty_float_arrays_are_accepted_as_no_ids():
    r = Ragged(np.array([], np.float64), [0])
    assert r.values.dtype == np.int64 and r.num_bags == 0
