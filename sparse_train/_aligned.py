"""Table and slot memory aligned to cache lines.

A table row of D float32 values spans ``4 * D / 64`` cache lines only when
the table starts on a 64-byte boundary; numpy's large arrays start 16 bytes
past one (glibc's chunk header), so a 64-byte row (D = 16) straddles two
lines and every random row read or update moves twice the memory. Tables
and optimizer slots are therefore allocated here, like torch's tensors, on
64-byte boundaries.

Before allocating, the size is checked against the memory the kernel says
is available (``MemAvailable`` of /proc/meminfo, plus free swap): a table
too large fails at once with ``MemoryLimitError`` naming it and the bytes it
needs, rather than being allocated lazily and ended by the OOM killer while
it is filled, or failing inside numpy with a bare ``MemoryError``.
"""
import os

import numpy as np

__all__ = ["aligned_empty", "aligned_full", "available_memory", "MemoryLimitError"]

#: Bytes of a cache line on x86-64 and most ARM servers.
CACHE_LINE = 64
#: Arrays smaller than this are allocated without asking the kernel first.
CHECK_ABOVE_BYTES = 64 << 20


class MemoryLimitError(MemoryError, ValueError):
    """An array (a table, a slot) needs more memory than is available."""


def available_memory():
    """Bytes that can be allocated without the OOM killer: ``MemAvailable``
    plus ``SwapFree`` (Linux /proc/meminfo), else the available physical
    pages (``os.sysconf``); None if unknown."""
    try:
        with open("/proc/meminfo", "rb") as f:
            info = {line.split(b":")[0]: int(line.split()[1]) * 1024 for line in f
                    if line.startswith((b"MemAvailable:", b"SwapFree:"))}
        if b"MemAvailable" in info:
            return info[b"MemAvailable"] + info.get(b"SwapFree", 0)
    except (OSError, ValueError, IndexError):
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


def _human(nbytes):
    for unit in ("bytes", "KiB", "MiB", "GiB", "TiB"):
        if nbytes < 1024 or unit == "TiB":
            return f"{nbytes:.0f} {unit}" if unit == "bytes" else f"{nbytes:.1f} {unit}"
        nbytes /= 1024


def aligned_empty(shape, dtype=np.float32, what=None):
    """An uninitialised C-contiguous array whose data starts on a cache line.

    ``what`` names the array in the ``MemoryLimitError`` raised when it
    needs more than the available memory (e.g. ``"embedding table
    'user_id'"``)."""
    dtype = np.dtype(dtype)
    shape = tuple(int(n) for n in np.atleast_1d(shape)) if np.ndim(shape) else (int(shape),)
    count = int(np.prod(shape, dtype=np.int64))
    nbytes = count * dtype.itemsize + CACHE_LINE
    what = what or f"an array of shape {shape} {dtype}"
    if nbytes > CHECK_ABOVE_BYTES:
        available = available_memory()
        if available is not None and nbytes > available:
            raise MemoryLimitError(
                f"{what} needs {nbytes - CACHE_LINE} bytes ({_human(nbytes - CACHE_LINE)}) "
                f"for shape {shape} {dtype}; only {available} bytes ({_human(available)}) "
                f"of memory are available: use fewer rows (hash buckets, min_count, "
                f"vocabulary size) or a smaller dimension")
    try:
        raw = np.empty(nbytes, np.uint8)
    except MemoryError:
        raise MemoryLimitError(f"{what} needs {nbytes - CACHE_LINE} bytes "
                               f"({_human(nbytes - CACHE_LINE)}) for shape {shape} {dtype}, "
                               f"more than this process may allocate") from None
    start = (-raw.ctypes.data) % CACHE_LINE
    return raw[start:start + count * dtype.itemsize].view(dtype).reshape(shape)


def aligned_full(shape, fill_value, dtype=np.float32, what=None):
    """``np.full`` on a cache-line boundary."""
    out = aligned_empty(shape, dtype, what)
    out.fill(fill_value)
    return out
