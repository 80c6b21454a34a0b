"""Validation scans, run before anything is mutated. Each returns the first
offending position, or -1 when the input is valid."""
import numpy as np

from ._jit import njit


@njit
def first_id_out_of_range(ids, num_embeddings):
    """Position of the first id outside [0, num_embeddings), or -1. ids [n] int64."""
    for i in range(ids.shape[0]):
        if ids[i] < 0 or ids[i] >= num_embeddings:
            return i
    return -1


@njit
def first_non_finite(values):
    """Flat position of the first NaN or infinity in values [n] float32, or -1.

    A first pass ORs an exponent-all-ones test over the float32 bits, an
    integer reduction the compiler vectorises (5-10x faster than testing each
    value with a branch); only a bad array is scanned again for the position.
    """
    bits = values.view(np.uint32)
    exponent = np.uint32(0x7F800000)
    found = np.uint32(0)
    for i in range(bits.shape[0]):
        found |= np.uint32((bits[i] & exponent) == exponent)
    if found == 0:
        return -1
    for i in range(values.shape[0]):
        if not np.isfinite(values[i]):
            return i
    return -1


@njit
def first_decrease(offsets):
    """Position i of the first offsets[i] < offsets[i - 1], or -1. offsets int64."""
    for i in range(1, offsets.shape[0]):
        if offsets[i] < offsets[i - 1]:
            return i
    return -1
