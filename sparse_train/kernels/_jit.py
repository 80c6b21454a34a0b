"""Numba flags, chosen in one place.

Every kernel in ``sparse_train.kernels`` is decorated with one of these.
``cache=True`` keeps compilation out of all but the first run; ``nogil=True``
lets Python threads overlap kernels. No ``fastmath``: the update rules must
match the float64 reference of SPEC.md and give the same bits for any thread
count, so the compiler may not reassociate or contract (FMA) float ops.
"""
import numba

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
