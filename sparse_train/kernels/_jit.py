"""Numba flags, chosen in one place, and the guard of the kernel cache.

Every kernel in ``sparse_train.kernels`` is decorated with one of these.
``cache=True`` keeps compilation out of all but the first run; ``nogil=True``
lets Python threads overlap kernels. No ``fastmath``: the update rules must
match the float64 reference of SPEC.md and give the same bits for any thread
count, so the compiler may not reassociate or contract (FMA) float ops.
"""
import hashlib
import os
from pathlib import Path

import numba

_KERNELS = Path(__file__).resolve().parent


def _drop_stale_cache():
    """Clear the kernels' Numba cache when any kernel source changed.

    Numba keys a cached function on its own file's timestamp only, so after
    an edit of ``coalesce.py`` a cached ``lookup.py`` kernel that inlined the
    old code would still load. A hash of all kernel sources, kept beside the
    cache, catches that. Best effort: a read-only install is left alone.
    """
    digest = hashlib.sha256()
    for source in sorted(_KERNELS.glob("*.py")):
        digest.update(source.name.encode() + b"\0" + source.read_bytes())
    cache = _KERNELS / "__pycache__"
    stamp = cache / "kernel_sources.sha256"
    try:
        if stamp.exists() and stamp.read_text() == digest.hexdigest():
            return
        for entry in cache.glob("*.nb[ic]"):
            entry.unlink(missing_ok=True)
        cache.mkdir(exist_ok=True)
        partial = stamp.with_suffix(f".{os.getpid()}")
        partial.write_text(digest.hexdigest())
        os.replace(partial, stamp)
    except OSError:
        pass


if not os.environ.get("NUMBA_CACHE_DIR"):
    _drop_stale_cache()

#: Serial kernel.
njit = numba.njit(cache=True, nogil=True)
#: Parallel kernel: ``numba.prange`` loops run over threads. Used only where
#: each iteration owns its output (one bag, or one unique row), so the result
#: does not depend on the thread count.
njit_parallel = numba.njit(cache=True, nogil=True, parallel=True)
#: A per-row helper, inlined into its callers at Numba IR level: a call that
#: LLVM does not inline costs 2-3x on the update loops (measured on W1).
njit_inline = numba.njit(cache=True, nogil=True, inline="always")

prange = numba.prange
