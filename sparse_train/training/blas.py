"""The BLAS thread count of the dense layers' matmuls: ``get_blas_threads``,
``set_blas_threads``, ``blas_threads`` and ``AutoBlasThreads``.

NumPy's OpenBLAS runs a product on every core. On a host shared with other
work a second thread often waits for a core (and for Numba's threads), and
the dense layers' small products (the main job: [512, 164] @ [164, 256] and
the like) are then much faster on one: the main job at load 2-4 on 2 cores
took 17.6 ms a step at 2 threads, 4.3 ms at 1 (78.8 s and 20.7 s a run);
on an idle host two can win. ``AutoBlasThreads`` times training steps at
each count and keeps the faster (4.4 ms a step on that host).

The thread count does not change the bits: OpenBLAS splits a product over
the rows and columns of its output, never over the summed dimension, so an
output value is the same dot product at any count. Checked on OpenBLAS
0.3.31 (SkylakeX kernels, NumPy's wheel): ``a @ b``, ``a @ b.T`` and
``a.T @ b`` in float32 for every (M, K, N) in {1, 2, 4, 7, 16, 39, 64, 100,
128, 164, 256, 300, 400, 512, 1024}^3, 10125 products, identical at 1 and 2
threads (tests/training/test_blas.py repeats it on the main job's shapes).

The library is reached through ``threadpoolctl`` when it is installed, else
through ctypes into the OpenBLAS that NumPy loaded
(``openblas_set_num_threads``, under any of the wheels' symbol prefixes).
Without either, the functions do nothing and report None.
"""
import contextlib
import ctypes
import functools
import os
import statistics
import time

__all__ = ["get_blas_threads", "set_blas_threads", "blas_threads", "AutoBlasThreads",
           "check_blas_threads"]


class _OpenBLAS:
    """get/set of one OpenBLAS through its C functions."""

    def __init__(self, get, set_):
        self._get, self._set = get, set_

    def get(self):
        return int(self._get())

    def set(self, count):
        self._set(int(count))


@functools.lru_cache(maxsize=1)
def _library():
    """The ``_OpenBLAS`` NumPy uses, or None (another BLAS, or not found)."""
    import numpy  # noqa: F401  (loads its BLAS)
    try:
        from threadpoolctl import ThreadpoolController
    except ImportError:
        return _from_process_maps()
    for lib in ThreadpoolController().select(user_api="blas").lib_controllers:
        if lib.internal_api == "openblas":
            return _OpenBLAS(lib.get_num_threads, lib.set_num_threads)
    return None


def _from_process_maps():
    """ctypes into the first OpenBLAS mapped into this process (Linux)."""
    try:
        with open("/proc/self/maps") as maps:
            paths = [line.split()[-1] for line in maps if "openblas" in line.lower()]
    except OSError:
        return None
    for path in dict.fromkeys(paths):
        try:
            lib = ctypes.CDLL(path)
        except OSError:
            continue
        for prefix, suffix in (("", ""), ("", "64_"), ("scipy_", "64_"), ("scipy_", "")):
            get = getattr(lib, f"{prefix}openblas_get_num_threads{suffix}", None)
            set_ = getattr(lib, f"{prefix}openblas_set_num_threads{suffix}", None)
            if get is not None and set_ is not None:
                get.restype, set_.argtypes = ctypes.c_int, [ctypes.c_int]
                return _OpenBLAS(get, set_)
    return None


def get_blas_threads():
    """The threads NumPy's OpenBLAS runs a product on, or None if unknown."""
    lib = _library()
    return None if lib is None else lib.get()


def set_blas_threads(count):
    """Run NumPy's OpenBLAS on ``count`` threads (an int >= 1); returns the
    previous count (None, and nothing done, without an OpenBLAS).

    >>> before = set_blas_threads(1)
    >>> get_blas_threads() in (1, None)
    True
    >>> _ = set_blas_threads(before) if before else None
    """
    count = _check_count(count)
    lib = _library()
    if lib is None:
        return None
    previous = lib.get()
    lib.set(count)
    return previous


def _check_count(count):
    if isinstance(count, bool) or not isinstance(count, int) or count < 1:
        raise ValueError(f"blas_threads must be an integer >= 1, 'auto' or None, got {count!r}")
    return count


def check_blas_threads(value):
    """``value`` if it is a ``fit(blas_threads=...)`` setting (None,
    ``"auto"`` or an int >= 1), else ValueError."""
    if value is None or value == "auto":
        return value
    return _check_count(value)


@contextlib.contextmanager
def blas_threads(count):
    """``set_blas_threads(count)`` inside the block (``"auto"``: as it is,
    for an ``AutoBlasThreads`` to set), and the count before it after the
    block. None: nothing changed.

    >>> with blas_threads(1):
    ...     get_blas_threads() in (1, None)
    True
    """
    count = check_blas_threads(count)
    previous = None if count is None else get_blas_threads()
    if isinstance(count, int):
        set_blas_threads(count)
    try:
        yield
    finally:
        if previous is not None:
            set_blas_threads(previous)


class AutoBlasThreads:
    """A training step that picks its BLAS thread count by timing itself.

    The first ``skip`` calls run as they are (a first run compiles the
    kernels there); then calls alternate between the ``candidates`` until
    each has ``trials`` timings, and the count of the smallest median
    wall time is kept. After ``every`` calls at that count the timing
    starts again (the load of a shared host changes). The counts give the same bits (module
    docstring), so the choice changes only the speed.

    Args:
        step: ``step(batch) -> loss``.
        candidates: thread counts to try (default 1 and 2, capped at the
            cores).
        trials, skip, every: as above (``every`` 0: time once).

    >>> calls = []
    >>> auto = AutoBlasThreads(lambda b: calls.append(b) or 0.0, trials=2, skip=1)
    >>> for b in range(8):
    ...     _ = auto(b)
    >>> auto.chosen in auto.candidates, len(calls)
    (True, 8)
    """

    def __init__(self, step, candidates=None, trials=5, skip=1, every=2000):
        if candidates is None:
            candidates = tuple(range(1, min(2, os.cpu_count() or 1) + 1))
        self.candidates = tuple(_check_count(c) for c in candidates)
        if not self.candidates:
            raise ValueError("AutoBlasThreads needs at least one candidate thread count")
        self._step, self._trials, self._skip, self._every = step, int(trials), int(skip), int(every)
        self._calls, self._since = 0, 0
        self._times = {c: [] for c in self.candidates}
        self.chosen = self.candidates[0] if len(self.candidates) == 1 else None

    def __call__(self, batch):
        self._calls += 1
        if self._calls <= self._skip:
            return self._step(batch)
        if self.chosen is not None:
            if self._since == 0 and len(self.candidates) == 1:
                set_blas_threads(self.chosen)  # nothing to time: the one count, set once
            if not (self._every and self._since >= self._every) or len(self.candidates) == 1:
                self._since += 1
                return self._step(batch)
            self.chosen, self._since = None, 0
            self._times = {c: [] for c in self.candidates}
        count = min(self._times, key=lambda c: len(self._times[c]))
        set_blas_threads(count)
        started = time.perf_counter()
        loss = self._step(batch)
        self._times[count].append(time.perf_counter() - started)
        if all(len(t) >= self._trials for t in self._times.values()):
            self.chosen = min(self.candidates, key=lambda c: statistics.median(self._times[c]))
            set_blas_threads(self.chosen)
        return loss
