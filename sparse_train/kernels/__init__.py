"""Numba kernels: plain functions of arrays, one concern a module.

In-place arrays come first, read-only arrays next, scalars last. Dtypes are
fixed by the callers (float32 values, int64 ids); kernels never fall back to
float64. Flags live in ``_jit.py``.
"""
