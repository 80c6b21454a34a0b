"""Process-wide settings made when ``sparse_train`` is imported.

Each is a default that the environment can override, and each is here for
a measured reason on the 2-core machines of ``../shared/BENCH.md``.
``SPARSE_TRAIN_TUNE=0`` in the environment skips them all.

They stay at import, not in a function the scripts call: the thread-pool
settings are read when numpy and Numba start their pools, so only a setting
made before that (in practice: on import) reaches a library user's process
as well as the scripts', and the malloc one pays off for any training loop.
"""
import ctypes
import os
import sys

#: glibc malloc: blocks below this come from the heap, not a fresh mmap.
MMAP_THRESHOLD = 64 << 20
#: glibc malloc: freed heap memory kept for reuse, up to this much.
TRIM_THRESHOLD = 256 << 20


def tune_process():
    """``limit_thread_spinning`` and ``keep_freed_memory``, unless the
    environment sets ``SPARSE_TRAIN_TUNE=0`` (then the process is left as
    it was)."""
    if os.environ.get("SPARSE_TRAIN_TUNE", "1") == "0":
        return
    limit_thread_spinning()
    keep_freed_memory()


def limit_thread_spinning():
    """Shorter spin-waits for the two thread pools.

    OpenBLAS's workers (dense layers) and Numba's OpenMP workers (sparse
    kernels) both spin after their work, stealing the cores the other needs
    next; on 2 cores a Numba kernel right after a matmul waited up to 1.6 ms,
    and DeepFM training (BENCH W2) ran 88 ms a step instead of 70. Shorter
    spins, measured best of 1k-300k: OpenBLAS 2**4 cycles (read when numpy
    loads, so only if sparse_train is imported first; else set it in the
    environment), libgomp 10000 rounds (read when Numba starts its threads).
    Values already in the environment win.
    """
    os.environ.setdefault("OPENBLAS_THREAD_TIMEOUT", "4")
    os.environ.setdefault("GOMP_SPINCOUNT", "10000")


def keep_freed_memory():
    """Let glibc reuse freed batch-sized buffers instead of unmapping them.

    A training step allocates a dozen arrays of about a megabyte (ids,
    grouping, plans, activations) and frees them. glibc serves each from a
    fresh mmap and unmaps it on free, so every step pays a page fault per
    4 KiB touched: about 1 ms per three such arrays in these VMs, 2-4 ms of
    a 10 ms W1 step. Blocks below ``MMAP_THRESHOLD`` now come from the heap,
    and up to ``TRIM_THRESHOLD`` of freed heap stays mapped for the next
    step (resident memory: tables + slots + the largest step's working set).
    Tables (larger) are still mapped and unmapped as before. Skipped when
    the environment sets glibc's own ``MALLOC_MMAP_THRESHOLD_`` or
    ``MALLOC_TRIM_THRESHOLD_``, when ``SPARSE_TRAIN_MALLOC=system``, and off
    glibc.
    """
    if not sys.platform.startswith("linux") or os.environ.get("SPARSE_TRAIN_MALLOC") == "system":
        return
    if "MALLOC_MMAP_THRESHOLD_" in os.environ or "MALLOC_TRIM_THRESHOLD_" in os.environ:
        return
    try:
        libc = ctypes.CDLL("libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return  # not glibc (e.g. musl)
    m_trim_threshold, m_mmap_threshold = -1, -3   # <malloc.h>
    mallopt(m_mmap_threshold, MMAP_THRESHOLD)
    mallopt(m_trim_threshold, TRIM_THRESHOLD)
