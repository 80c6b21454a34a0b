"""16-bit table storage (SPEC section 7): widening to float32, narrowing back
(round-to-nearest-even or stochastic), and the embedding-bag lookup of a
16-bit table.

A 16-bit table reaches a kernel as a [V, D] uint16 array of bit patterns,
``fmt`` telling the format: BFLOAT16 (the top half of a float32: sign, 8
exponent bits, 7 mantissa bits) or FLOAT16 (IEEE binary16). Every value is
widened to float32 exactly, the arithmetic is float32, and a result is
narrowed back:

- nearest: round to nearest, ties to even (IEEE);
- stochastic: add a random integer below one unit in the last place of the
  16-bit result to the float32 bits, then truncate. For bfloat16 that is a
  16-bit random integer added to the float32 bits (the 16 bits dropped);
  for float16 (13 bits dropped from a normal float32) its top 13 bits, and
  for a float16 subnormal the dropped fraction taken to 16 bits. The carry
  happens with probability (dropped part) / ulp, so the rounding is
  unbiased. The random integer is a fixed hash (splitmix64's finalizer) of
  (seed, global step, row, column): content only, so the bits are the same
  for any thread or rank count.

Special values: NaN stays NaN (quiet, sign kept), +-inf stays +-inf, and a
FINITE value beyond the format's largest finite value saturates to it
(+-65504 for float16, +-3.3895e38 for bfloat16) instead of becoming inf: a
weight that one large update pushed past the range keeps a finite value
that lookups can still use (a float16 inf would turn every bag holding it
into inf or NaN). Overflow of the float32 arithmetic itself (inf or NaN
weights) is left to ``training.check_finite_state``, as for float32 tables.

The bit recipes for float16 follow F. Giesen's ``float_to_half_fast3_rtne``
and ``half_to_float`` (public domain, 2012); bfloat16's is the usual
``bits + 0x7fff + lsb`` rounding.
"""
from typing import NamedTuple

import numpy as np
from llvmlite import ir
from numba import types
from numba.extending import intrinsic

from ._jit import (njit_inline, njit_parallel, prange, row_buffer_or)
from .half_rows import (add_widened_bfloat16, add_widened_float16, axpy_widened_bfloat16,
                        axpy_widened_float16, narrow_row_bfloat16, narrow_row_bfloat16_stochastic,
                        narrow_row_float16, narrow_row_float16_stochastic,
                        widen_row_bfloat16, widen_row_float16)
from .lookup import bag_divisor
from .prefetch import LOOKUP_AHEAD, prefetch_row_read
from .rows import row_divide, row_fill, row_store

#: Storage formats (``fmt``).
BFLOAT16, FLOAT16 = 0, 1


class Narrowing(NamedTuple):
    """How an update kernel narrows a row back to 16 bits (all int64).

    The random bits of stochastic rounding hash (seed, step, global row,
    column) with ``global row = row * row_stride + row_offset`` (a shard of
    a row-sharded table passes its stride and offset, so every rank draws
    the bits one process would)."""
    fmt: int          # BFLOAT16 or FLOAT16
    stochastic: int   # 0: nearest-even, 1: stochastic
    seed: int
    step: int         # the global step being applied
    row_stride: int
    row_offset: int


# ------------------------------------------------------------ bit casts
@intrinsic
def float_from_bits(typingctx, bits):
    """The float32 whose bit pattern is the low 32 bits of ``bits`` (int64)."""
    if not isinstance(bits, types.Integer):
        return None

    def codegen(context, builder, signature, args):
        low = builder.trunc(context.cast(builder, args[0], signature.args[0], types.int64),
                            ir.IntType(32))
        return builder.bitcast(low, ir.FloatType())
    return types.float32(bits), codegen


@intrinsic
def float_bits(typingctx, value):
    """The bit pattern of the float32 ``value``, as an int64 in [0, 2**32)."""
    if value != types.float32:
        return None

    def codegen(context, builder, signature, args):
        return builder.zext(builder.bitcast(args[0], ir.IntType(32)), ir.IntType(64))
    return types.int64(value), codegen


# ------------------------------------------------------------ widening
@njit_inline
def widen(h, fmt):
    """float32 value of the 16-bit pattern ``h`` (exact)."""
    h = np.int64(h)
    if fmt == BFLOAT16:
        return float_from_bits(h << 16)
    o = (h & 0x7fff) << 13
    exponent = o & 0x0f800000
    o += 112 << 23                          # rebias: 127 - 15
    if exponent == 0x0f800000:              # inf or NaN
        o += 112 << 23
    elif exponent == 0:                     # zero or subnormal: renormalise
        o += 1 << 23
        o = float_bits(float_from_bits(o) - float_from_bits(113 << 23))
    return float_from_bits(o | ((h & 0x8000) << 16))


# ------------------------------------------------------------ narrowing
@njit_inline
def _bfloat16_bits(bits, noise, stochastic):
    sign = bits & 0x80000000
    magnitude = bits & 0x7fffffff
    if magnitude > 0x7f800000:                      # NaN: quiet, sign kept
        return (bits >> 16) | 0x40
    if magnitude == 0x7f800000:                     # inf
        return bits >> 16
    if stochastic:
        rounded = (magnitude + noise) >> 16
    else:
        rounded = (magnitude + 0x7fff + ((magnitude >> 16) & 1)) >> 16
    if rounded >= 0x7f80:                           # finite: saturate
        rounded = 0x7f7f
    return rounded | (sign >> 16)


@njit_inline
def _float16_bits(bits, noise, stochastic):
    sign = bits & 0x80000000
    magnitude = bits & 0x7fffffff
    if magnitude >= 143 << 23:                      # |x| >= 65536, inf or NaN
        if magnitude > 0x7f800000:
            rounded = 0x7e00 | ((magnitude >> 13) & 0x3ff)
        elif magnitude == 0x7f800000:
            rounded = 0x7c00
        else:
            rounded = 0x7bff
    elif magnitude < 113 << 23:                     # float16 subnormal or zero
        if stochastic:
            # units of 2**-24; the dropped fraction taken to 16 bits
            q = float_from_bits(magnitude) * np.float32(16777216.0)
            whole = np.int64(q)
            fraction = np.int64((q - np.float32(whole)) * np.float32(65536.0))
            rounded = whole + ((fraction + noise) >> 16)
        else:  # adding 0.5 rounds to a multiple of 2**-24, nearest-even
            rounded = float_bits(float_from_bits(magnitude) + np.float32(0.5)) - (126 << 23)
    else:
        if stochastic:
            rounded = (magnitude - (112 << 23) + (noise >> 3)) >> 13
        else:
            rounded = (magnitude - (112 << 23) + 0xfff + ((magnitude >> 13) & 1)) >> 13
        if rounded >= 0x7c00:                       # finite: saturate
            rounded = 0x7bff
    return rounded | (sign >> 16)


@njit_inline
def narrow(value, fmt, noise, stochastic):
    """16-bit pattern (int64) of the float32 ``value``: nearest-even, or
    stochastic with ``noise`` in [0, 2**16) (see the module)."""
    bits = float_bits(value)
    if fmt == BFLOAT16:
        return _bfloat16_bits(bits, noise, stochastic)
    return _float16_bits(bits, noise, stochastic)


_GAMMA = np.uint64(0x9E3779B97F4A7C15)
_COLUMN = np.uint64(0xD1B54A32D192ED03)


@njit_inline
def mix64(z):
    """splitmix64's finalizer (Steele, Lea, Flood 2014): uint64 -> uint64."""
    z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return z ^ (z >> np.uint64(31))


@njit_inline
def row_key(seed, step, row):
    """uint64 key of (seed, step, global row); its column ``j`` draws
    ``random16(key, j)``."""
    key = mix64(np.uint64(seed) + _GAMMA)
    key = mix64(key ^ (np.uint64(step) * _GAMMA))
    return mix64(key + np.uint64(row) * _GAMMA)


@njit_inline
def random16(key, column):
    """16 random bits (int64 in [0, 2**16)) of column ``column`` of a row."""
    return np.int64(mix64(key + np.uint64(column) * _COLUMN) >> np.uint64(48))


@njit_inline
def widen_row(out, bits, fmt, dim):
    """In place: out [dim] float32 = widened bits [dim] uint16 (vector code:
    ``half_rows``, the bits of ``widen``)."""
    if fmt == BFLOAT16:
        widen_row_bfloat16(out, bits, dim)
    else:
        widen_row_float16(out, bits, dim)


@njit_inline
def narrow_row(bits, values, narrowing, row, dim):
    """In place: bits [dim] uint16 = ``values`` [dim] float32 narrowed as
    ``narrowing`` says; ``row`` is the table row (for stochastic rounding).
    Vector code (``half_rows``), the bits of ``narrow`` with
    ``random16(row_key(seed, step, global row), j)`` for column j."""
    if narrowing.stochastic:
        key = row_key(narrowing.seed, narrowing.step,
                      row * narrowing.row_stride + narrowing.row_offset)
        if narrowing.fmt == BFLOAT16:
            narrow_row_bfloat16_stochastic(bits, values, key, dim)
        else:
            narrow_row_float16_stochastic(bits, values, key, dim)
    elif narrowing.fmt == BFLOAT16:
        narrow_row_bfloat16(bits, values, np.uint64(0), dim)
    else:
        narrow_row_float16(bits, values, np.uint64(0), dim)


@njit_parallel
def widen_rows(out, bits, fmt):
    """In place: out [R, D] float32 = widened bits [R, D] uint16."""
    dim = out.shape[1]
    for r in prange(out.shape[0]):
        widen_row(out[r], bits[r], fmt, dim)


@njit_parallel
def narrow_rows(bits, values, rows, narrowing):
    """In place: bits [R, D] uint16 = values [R, D] float32 narrowed; row i
    draws its random bits as table row ``rows[i]`` (int64 [R])."""
    dim = bits.shape[1]
    for i in prange(bits.shape[0]):
        narrow_row(bits[i], values[i], narrowing, rows[i], dim)


# ------------------------------------------------------------ lookup
@njit_inline
def _add_widened(acc, bits, coef, scaled, fmt, dim):
    """In place: acc [dim] float32 += coef * widen(bits) (``scaled``) or
    += widen(bits): the float32 lookup's operations, in its order (vector
    code: ``half_rows``)."""
    if fmt == BFLOAT16:
        if scaled:
            axpy_widened_bfloat16(acc, bits, coef, dim)
        else:
            add_widened_bfloat16(acc, bits, coef, dim)
    elif scaled:
        axpy_widened_float16(acc, bits, coef, dim)
    else:
        add_widened_float16(acc, bits, coef, dim)


@njit_parallel
def embedding_bag_forward_half(out, weight, values, offsets, weights, has_weights,
                               combiner, padding_idx, fmt, dim):
    """In place: out [B, D] float32, row b = combined rows of bag b of the
    16-bit table weight [V, D] uint16 (``fmt``), accumulated in float32.

    As ``lookup.embedding_bag_forward`` (same arguments, same order of
    float32 operations on the widened rows): parallel over bags, each bag
    sums ``w_i * e_i`` in position order, then divides by its divisor.
    """
    last = values.shape[0] - 1
    for b in prange(out.shape[0]):
        row = out[b]
        acc = row_buffer_or(row, dim)
        row_fill(acc, np.float32(0.0), dim)
        start, end = offsets[b], offsets[b + 1]
        divisor = bag_divisor(values, weights, has_weights, start, end,
                              combiner, padding_idx)
        if divisor != 0.0:
            for i in range(start, end):
                prefetch_row_read(weight, values[min(i + LOOKUP_AHEAD, last)], dim)
                index = values[i]
                if index == padding_idx:
                    continue
                coef = weights[i] if has_weights else np.float32(1.0)
                _add_widened(acc, weight[index], coef, has_weights, fmt, dim)
            if combiner != 0:
                row_divide(acc, divisor, dim)
        row_store(out, b * dim, acc, dim)
