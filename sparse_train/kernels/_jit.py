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
import numpy as np
from llvmlite import ir
from numba import types
from numba.core import cgutils
from numba.extending import intrinsic, overload, typeof_impl

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


# ------------------------------------------------------------ scheduling
#: Work of a parallel loop is cut into tasks, and threads claim the next
#: task when they finish one (``TaskQueue``), instead of ``prange``'s equal
#: shares fixed in advance (Numba's OpenMP layer hands each thread one
#: contiguous block of the iterations; ``numba.set_parallel_chunksize`` only
#: cuts the blocks finer, still split evenly ahead of time). So when another
#: process holds a core, the thread that still runs takes the work of the
#: one that waits for its core, and the step takes about the 1-thread time
#: instead of waiting for the stalled thread's whole share (measured, W1 on
#: 2 cores with a busy process: ``scripts/bench_contention.py``). Tasks are
#: independent: each writes its own outputs, and sums run inside a task in
#: a fixed order, so results do not depend on which thread runs a task.


@intrinsic
def _fetch_add(typingctx, counter, value):
    """Atomically ``old = counter[0]; counter[0] += value; return old``
    (counter a 1-d int64 array)."""
    if not (isinstance(counter, types.Array) and counter.dtype == types.int64
            and isinstance(value, types.Integer)):
        return None

    def codegen(context, builder, signature, args):
        array = context.make_array(signature.args[0])(context, builder, args[0])
        step = context.cast(builder, args[1], signature.args[1], types.int64)
        return builder.atomic_rmw("add", array.data, step, "monotonic")
    return types.int64(counter, value), codegen


def task_queue():
    """A fresh queue of task numbers 0, 1, 2, ... for one parallel loop."""
    return np.zeros(1, np.int64)


@overload(task_queue, inline="always")
def _task_queue():
    def impl():
        return np.zeros(1, np.int64)
    return impl


def next_task(queue):
    """The next unclaimed task number of ``queue`` (thread-safe); numbers
    past the last task mean the loop's work is all claimed."""
    raise NotImplementedError("next_task runs in compiled kernels only")


@overload(next_task, inline="always")
def _next_task(queue):
    def impl(queue):
        return _fetch_add(queue, 1)
    return impl


@intrinsic
def _num_threads(typingctx):
    """``numba.get_num_threads()`` in a kernel that can be cached (Numba's
    own goes through a ctypes pointer, which keeps a kernel out of the
    cache): the threading layer's ``get_num_threads``, as parfors call it."""
    def codegen(context, builder, signature, args):
        fnty = ir.FunctionType(ir.IntType(32), [])
        fn = cgutils.get_or_insert_function(builder.module, fnty, "get_num_threads")
        return builder.sext(builder.call(fn, []), ir.IntType(64))
    return types.int64(), codegen


def workers(num_tasks):
    """Iterations of the ``prange`` loop that runs ``num_tasks`` tasks: one
    per thread (each then claims tasks from a ``task_queue``), at most one
    per task."""
    return max(1, min(numba.get_num_threads(), num_tasks))


@overload(workers, inline="always")
def _workers(num_tasks):
    def impl(num_tasks):
        return max(1, min(_num_threads(), num_tasks))
    return impl

# Start Numba's thread pool at import. Some serial kernels only sequence
# parallel ones (``coalesce.group_rows``, ``lookup.embedding_bag_grad_plan``,
# ``lookup.unit_grad_plan``: cheaper to compile than one parallel function),
# and such a kernel can be a process's first Numba call. Numba 0.68 starts the
# pool there by itself (checked with this line removed, compiling and from
# the cache); an earlier Numba was seen to crash when a cached one ran first,
# so the pool is started here whatever the version does. The first-call case
# is tested in tests/kernels/test_coalesce.py.
numba.get_num_threads()


# ------------------------------------------------------------ row widths
#: Row widths (embedding_dim) compiled as constants. A row kernel takes the
#: width as its last argument, ``dim``; given as ``row_dim(D)`` it is a
#: compile-time constant for these widths: the row arithmetic of ``rows``
#: becomes straight-line vector code, the row's scratch lives on the stack
#: (where LLVM knows it aliases nothing), and prefetches unroll. Other
#: widths share one generic variant (a runtime int) with the same bits.
#: Measured on W1 (2 threads, pooled lookup alone): 1M x 64 uniform
#: 2.3 -> 1.7 ms, 10M x 16 Zipf 1.2 -> 0.8 ms, together with ``rows``.
STATIC_DIMS = frozenset((8, 16, 32, 64, 128))

#: Tests switch this off to compare the generic variant with the constant
#: one bit for bit.
specialize_dims = os.environ.get("SPARSE_TRAIN_GENERIC_DIMS", "") != "1"


class _StaticDim(int):
    """An int that Numba types as a compile-time constant."""


@typeof_impl.register(_StaticDim)
def _typeof_static_dim(value, context):
    return types.IntegerLiteral(int(value))


def row_dim(dim):
    """The ``dim`` argument of a row kernel for rows of ``dim`` values."""
    dim = int(dim)
    if specialize_dims and dim in STATIC_DIMS:
        return _StaticDim(dim)
    return dim


@intrinsic
def _stack_floats(typingctx, count):
    """Pointer to ``count`` float32 on the calling function's stack frame
    (``count`` a compile-time constant). Lowered in place, so the buffer
    lives as long as the kernel (or parallel region) that asks for it."""
    if not isinstance(count, types.IntegerLiteral):
        return None
    size = count.literal_value

    def codegen(context, builder, signature, args):
        return cgutils.alloca_once(builder, ir.FloatType(), size=size)
    return types.CPointer(types.float32)(count), codegen


def row_buffer(dim):
    """A scratch row of ``dim`` float32 for a kernel: on the stack when
    ``dim`` is a compile-time constant (``row_dim``), else on the heap.
    Call it at most once per parallel task, not once per row."""
    return np.empty(dim, np.float32)


@overload(row_buffer, inline="always", prefer_literal=True)
def _row_buffer(dim):
    if isinstance(dim, types.IntegerLiteral):
        def stack_row(dim):
            return numba.carray(_stack_floats(dim), dim)
        return stack_row

    def heap_row(dim):
        return np.empty(dim, np.float32)
    return heap_row


def row_buffer_or(row, dim):
    """A scratch row for accumulating into ``row`` ([dim] float32): a stack
    buffer when ``dim`` is a compile-time constant, else ``row`` itself (so
    a loop over many rows needs no allocation either way). Copy the buffer
    into ``row`` when done; with ``row`` itself that copy changes nothing."""
    return row


@overload(row_buffer_or, inline="always", prefer_literal=True)
def _row_buffer_or(row, dim):
    if isinstance(dim, types.IntegerLiteral):
        def stack_row(row, dim):
            return numba.carray(_stack_floats(dim), dim)
        return stack_row

    def same_row(row, dim):
        return row
    return same_row


@numba.njit(cache=True, nogil=True, inline="always")
def loop_width(row, dim):
    """Trip count for an update rule's loop over a [dim] row: the constant
    ``dim`` from 64 floats up, else the row's runtime length. LLVM unrolls a
    constant loop of 16 or 32 floats into scalar code (Numba leaves the SLP
    vectoriser off), while with a runtime count its loop vectoriser runs;
    from 64 up the constant count vectorises without runtime checks
    (W1 Adagrad, rows in cache: D = 32 2.8x faster than constant, D = 128
    1.1x slower than constant; the same bits either way)."""
    if dim >= 64:
        return dim
    return row.shape[0]
