"""Validation scans, run before anything is mutated.

The ``first_*`` scans return the first offending position, or -1 when the
input is valid. They and ``max_abs_bits`` start with one max reduction,
which the compiler vectorises, and search for a position only when
something is wrong: a W1 step screens its ids and gradient values in about
0.1 ms this way (0.5 ms with a branch per value).
"""
import numpy as np

from llvmlite import ir
from numba import types
from numba.extending import intrinsic

from ._jit import njit

#: ``max_abs_bits`` at or above this: an infinity or a NaN is present.
NON_FINITE_BITS = 0x7F800000


@intrinsic
def float_bits(typingctx, value):
    """The bit pattern of a float32, as a uint32 (what ``.view(np.uint32)``
    reads; a view in a kernel compiled 0.3 s more on a first run)."""
    if value != types.float32:
        return None

    def codegen(context, builder, signature, args):
        return builder.bitcast(args[0], ir.IntType(32))
    return types.uint32(value), codegen


@njit
def max_abs_bits(values):
    """Bit pattern (uint32) of the largest |x| of float32 values [n] (0 when
    empty). Non-negative floats order like their bit patterns, so this is an
    integer max; it is ``NON_FINITE_BITS`` or more exactly when an infinity
    or a NaN is present."""
    magnitude = np.uint32(0x7FFFFFFF)
    high = np.uint32(0)
    for i in range(values.shape[0]):
        high = max(high, float_bits(values[i]) & magnitude)
    return high


@njit
def first_id_out_of_range(ids, num_embeddings):
    """Position of the first id outside [0, num_embeddings), or -1. ids [n]
    int64. Screened by one unsigned max (a negative id reads as a huge
    unsigned one), which vectorises; searched only when an id is bad."""
    high = np.uint64(0)
    for i in range(ids.shape[0]):
        high = max(high, np.uint64(ids[i]))  # (the same bits, read unsigned)
    if ids.shape[0] == 0 or high < np.uint64(num_embeddings):
        return -1
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
    exponent = np.uint32(0x7F800000)
    found = np.uint32(0)
    for i in range(values.shape[0]):
        found |= np.uint32((float_bits(values[i]) & exponent) == exponent)
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
