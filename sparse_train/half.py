"""16-bit storage of tables (SPEC section 7): the formats, and whole arrays
narrowed to or widened from them.

``"bfloat16"`` is stored as ``np.uint16`` bit patterns (numpy has no
bfloat16: the top 16 bits of a float32), ``"float16"`` as ``np.float16``.
Kernels read both as uint16 bit patterns (``storage_bits``). Narrowing
rounds to nearest-even; a finite value beyond the format's range
saturates to its largest finite value, NaN and inf stay what they are
(``kernels/half.py`` says why). Arithmetic is never done in 16 bits.

>>> bits = narrow(np.array([1.0, 1.00390625, -3.0e38], np.float32), "bfloat16")
>>> [hex(b) for b in bits.tolist()]      # 1 + 2**-8 is a tie: to even (1.0)
['0x3f80', '0x3f80', '0xff62']
>>> widen(bits, "bfloat16").tolist()[:2]
[1.0, 1.0]
"""
import numpy as np

from ._aligned import aligned_empty

__all__ = ["HALF_DTYPES", "ROUNDINGS", "TABLE_DTYPES", "narrow", "widen", "storage_bits",
           "check_table_dtype", "check_rounding"]

#: The 16-bit formats and the numpy dtype each is stored in.
HALF_DTYPES = {"bfloat16": np.dtype(np.uint16), "float16": np.dtype(np.float16)}
#: Every table dtype a table or model accepts.
TABLE_DTYPES = ("float32", "bfloat16", "float16")
#: Narrowing modes of a 16-bit table.
ROUNDINGS = ("nearest", "stochastic")


def check_table_dtype(dtype, where):
    """``dtype`` (one of ``TABLE_DTYPES``) or ValueError naming ``where``."""
    if dtype not in TABLE_DTYPES:
        raise ValueError(f"{where}: dtype must be one of {list(TABLE_DTYPES)}, got {dtype!r}")
    return dtype


def check_rounding(rounding, where):
    """``rounding`` (one of ``ROUNDINGS``) or ValueError naming ``where``."""
    if rounding not in ROUNDINGS:
        raise ValueError(f"{where}: rounding must be one of {list(ROUNDINGS)}, got {rounding!r}")
    return rounding


def _fmt(dtype):
    from .kernels.half import BFLOAT16, FLOAT16
    return {"bfloat16": BFLOAT16, "float16": FLOAT16}[dtype]


def storage_bits(array):
    """The uint16 bit patterns of a 16-bit storage array (a view, no copy)."""
    return array.view(np.uint16)


def narrow(values, dtype, out=None):
    """``values`` (real array, rounded to float32 first) narrowed to the
    16-bit ``dtype``, round-to-nearest-even, as its storage array (uint16
    bits for bfloat16, float16 for float16); written into ``out`` (a
    C-contiguous storage array of the same shape) if given."""
    from .kernels.half import Narrowing, narrow_rows
    values = np.ascontiguousarray(values, dtype=np.float32)
    if out is None:  # on a cache line, as tables are (``_aligned``)
        out = aligned_empty(values.shape, HALF_DTYPES[dtype])
    flat = values.reshape(-1, values.shape[-1] if values.ndim > 1 and values.shape[-1] else 1)
    if flat.size:
        narrow_rows(storage_bits(out).reshape(flat.shape), flat,
                    np.zeros(flat.shape[0], np.int64), Narrowing(_fmt(dtype), 0, 0, 0, 1, 0))
    return out


def widen(array, dtype):
    """float32 values (a new array) of the 16-bit storage ``array`` of ``dtype``."""
    from .kernels.half import widen_rows
    bits = np.ascontiguousarray(storage_bits(np.asarray(array)))
    out = np.empty(bits.shape, np.float32)
    flat = bits.reshape(-1, bits.shape[-1] if bits.ndim > 1 and bits.shape[-1] else 1)
    if flat.size:
        widen_rows(out.reshape(flat.shape), flat, _fmt(dtype))
    return out
