"""Table and slot memory aligned to cache lines.

A table row of D float32 values spans ``4 * D / 64`` cache lines only when
the table starts on a 64-byte boundary; numpy's large arrays start 16 bytes
past one (glibc's chunk header), so a 64-byte row (D = 16) straddles two
lines and every random row read or update moves twice the memory. Tables
and optimizer slots are therefore allocated here, like torch's tensors, on
64-byte boundaries.
"""
import numpy as np

#: Bytes of a cache line on x86-64 and most ARM servers.
CACHE_LINE = 64


def aligned_empty(shape, dtype=np.float32):
    """An uninitialised C-contiguous array whose data starts on a cache line."""
    dtype = np.dtype(dtype)
    shape = tuple(int(n) for n in np.atleast_1d(shape)) if np.ndim(shape) else (int(shape),)
    count = int(np.prod(shape, dtype=np.int64))
    raw = np.empty(count * dtype.itemsize + CACHE_LINE, np.uint8)
    start = (-raw.ctypes.data) % CACHE_LINE
    return raw[start:start + count * dtype.itemsize].view(dtype).reshape(shape)


def aligned_full(shape, fill_value, dtype=np.float32):
    """``np.full`` on a cache-line boundary."""
    out = aligned_empty(shape, dtype)
    out.fill(fill_value)
    return out
