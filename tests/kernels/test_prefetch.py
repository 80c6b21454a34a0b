"""``kernels.prefetch``: the alignment test that decides a row's extra
prefetch, and the element size it uses, against NumPy's own addresses.

A prefetch is only a hint (results never depend on it), so what can go
wrong is which lines are asked for: every line of a row, and its last line
when the row does not start on one.
"""
import numpy as np
import pytest
from numba import njit

from sparse_train.kernels.prefetch import _CACHE_LINE, _data_address, _item_bytes, _misaligned


@njit
def _facts(array, first, dim):
    return _data_address(array), _item_bytes(array), _misaligned(array, first, dim)


def _misaligned_reference(array, first):
    """Whether element ``first`` starts off a cache line, from NumPy's address."""
    return (array.__array_interface__["data"][0] + first * array.itemsize) % _CACHE_LINE != 0


@pytest.mark.parametrize("dtype", [np.float32, np.uint16, np.float64, np.int64])
@pytest.mark.parametrize("dim", [16, 24, 64])
def test_alignment_test_against_numpy_addresses(dtype, dim):
    # a buffer cut at every 2-byte offset inside one cache line: aligned rows,
    # rows off the line, row widths that are and are not whole lines
    raw = np.zeros(4096 + _CACHE_LINE, np.uint8)
    for offset in range(0, _CACHE_LINE, 2):
        itemsize = np.dtype(dtype).itemsize
        if offset % itemsize:
            continue
        array = raw[offset:offset + 4096].view(dtype)
        address, size, _ = _facts(array, 0, dim)
        assert address == array.__array_interface__["data"][0]
        assert size == itemsize
        for row in range(0, 4096 // itemsize // dim):
            first = row * dim
            assert _facts(array, first, dim)[2] == _misaligned_reference(array, first), (
                offset, row)
