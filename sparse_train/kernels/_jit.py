"""Numba flags, chosen in one place, and the guard of the kernel cache.

Every kernel in ``sparse_train.kernels`` is decorated with one of these.
``cache=True`` keeps compilation out of all but the first run; ``nogil=True``
lets Python threads overlap kernels. No ``fastmath``: the update rules must
match the float64 reference of SPEC.md and give the same bits for any thread
count, so the compiler may not reassociate or contract (FMA) float ops.
"""
import ctypes
import hashlib
import os
from pathlib import Path

import numba
import numpy as np
from llvmlite import binding as llvm_binding
from llvmlite import ir
from numba import types
from numba.core import cgutils
from numba.core.cpu_options import ParallelOptions
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
#: Serial twin of a parallel kernel: Numba compiles a parallel region's
#: body with NumPy's error model (a float division by zero gives inf or
#: NaN, no check), so the twin uses it too: the same bits, and loops with
#: a division vectorise (Python's model checks every divisor: a serial
#: update rule ran 3x slower than the same loop in a parallel region).
njit_serial_twin = numba.njit(cache=True, nogil=True, error_model="numpy")
#: Parallel kernel: its ``numba.prange`` loops, and nothing else, run over
#: threads. Used only where each iteration owns its output (one bag, or one
#: unique row), so the result does not depend on the thread count. Numba
#: would also turn array expressions, ``np.zeros`` and the like into
#: parallel regions of their own; each region wakes the thread team (0.3-1
#: ms when the host is loaded, against microseconds of work for a counter
#: array) and costs a compiled gufunc, so only explicit ``prange`` loops are.
#: (An options object, not a dict: Numba empties a dict as it reads it, so
#: a dict shared by all kernels would give every kernel but the first
#: Numba's defaults.)
PARALLEL_OPTIONS = ParallelOptions({
    "prange": True, "comprehension": False, "reduction": False, "inplace_binop": False,
    "setitem": False, "numpy": False, "stencil": False, "fusion": False})
njit_parallel = numba.njit(cache=True, nogil=True, parallel=PARALLEL_OPTIONS)
#: A per-row helper, inlined into its callers at Numba IR level: a call that
#: LLVM does not inline costs 2-3x on the update loops (measured on W1).
njit_inline = numba.njit(cache=True, nogil=True, inline="always")

prange = numba.prange

#: Work (ids x row width) below which a kernel with a serial twin takes the
#: twin (``by_work``): a kernel with a parallel region compiles in about
#: twice the time of its twin (0.6-1.2 s more each, on a first run), and
#: the main job (512 bags, ~6k ids of 16 floats a step: 2**17) then
#: compiles none. ``coalesce.PARALLEL_MIN_IDS`` ids of 16 floats, where
#: the grouping goes parallel: below it a twin takes under 0.2 ms (forward
#: and plan at 2**18, measured: 0.11 ms serial, 0.09 ms parallel), which a
#: second thread cannot save much of; W1's batches (2**20.7 and up) stay
#: parallel.
PARALLEL_MIN_WORK = 1 << 19


def by_work(work, parallel_kernel, serial_kernel):
    """``parallel_kernel`` for ``work`` (ids x row width) from
    ``PARALLEL_MIN_WORK`` up, else its serial twin (the same bits: each
    output is computed by one thread, in the same order, either way)."""
    return parallel_kernel if work >= PARALLEL_MIN_WORK else serial_kernel

# Start Numba's thread pool at import. Some serial kernels only sequence
# parallel ones (``coalesce.group_rows``, ``lookup.embedding_bag_grad_plan``,
# ``lookup.unit_grad_plan``: cheaper to compile than one parallel function),
# and such a kernel can be a process's first Numba call. Numba 0.68 starts the
# pool there by itself (checked with this line removed, compiling and from
# the cache); an earlier Numba was seen to crash when a cached one ran first,
# so the pool is started here whatever the version does. The first-call case
# is tested in tests/kernels/test_coalesce.py.
numba.get_num_threads()



# ------------------------------------------------------------ scheduling
#: Work of a parallel loop is cut into tasks, and threads claim the next
#: task when they finish one (a ``task_queue``), instead of ``prange``'s
#: equal shares fixed in advance (Numba's OpenMP layer hands each thread one
#: contiguous block of the iterations; ``numba.set_parallel_chunksize`` only
#: cuts the blocks finer, still split evenly ahead of time). So when another
#: process holds a core, the thread that runs takes the work of the one
#: that waits for its core. Tasks are independent: each writes its own
#: outputs and sums inside itself in a fixed order, so results do not depend
#: on which thread runs a task, nor on how many threads there are.
#:
#: A parallel region still ends only when every thread of its team has
#: arrived, so a helper thread that is not running when the region starts
#: (its core taken by another process) holds the region until the scheduler
#: gives it its turn: milliseconds on a loaded host, for each region. A
#: region in which the calling thread, out of tasks, waited for the helpers
#: over half as long as it worked (and over ``LATE_MIN_CYCLES``) was late.
#: Each late region adds ``LATE_DEBT`` to a debt that each team region on
#: time pays back by 1; at ``SOLO_DEBT`` (three late regions within a few on
#: time) the next regions run on the
#: calling thread alone (no team, nothing to wait for): ``SOLO_REGIONS``
#: regions the first time, twice as many after each further time (up to
#: ``SOLO_REGIONS_MAX``), and ``1 / SOLO_SHRINK`` fewer after each team
#: region that goes well (a wait under 1/8 of the work); the region that
#: tries the team again after a solo period goes alone again at once if it
#: is late. On a quiet machine the helpers are there in time and every
#: region runs with the full team; under contention most regions run
#: alone, and a step takes about the one-thread time instead of several
#: times it (``scripts/bench_contention.py``).
#:
#: Measured reasons for the details (2026-12-06, ``next_team_state``):
#:
#: - A single late region is not contention. Right after torch's steps in
#:   the same process (``bench.py``'s rounds alternate ours with torch's
#:   and FBGEMM's) the helper is late in about 7% of the regions, a
#:   region or two at a time, against about 26% beside a busy process.
#:   Going alone on any late region made 34-64% of the bench's 2-thread W1
#:   steps on 1M x 64 run alone, 1.2-1.75x slower than with the team. The
#:   debt costs some of what going alone at once saved beside a busy
#:   process: busy 2 / busy 1, median of the 8 configs of 3 alternated
#:   runs each, 1.025-1.035 against 0.98-1.005.
#: - The period grows faster than it shrinks. Under a busy process most
#:   team regions still go well, and when each one halved the period it
#:   stayed at 16-64 regions, so a 2-thread step tried the team every few
#:   steps and waited for the late helper.
LATE_MIN_CYCLES = 100_000  # about 40 us
LATE_DEBT = 8
SOLO_DEBT = 24
SOLO_REGIONS = 16
SOLO_REGIONS_MAX = 4096
SOLO_SHRINK = 8

#: Process-wide state of the team choice, shared by every kernel (cached
#: ones too: compiled code finds it by symbol name, as it finds Numba's
#: ``get_num_threads``): [0] regions left to run alone, [1] the current
#: solo period, [2] the late debt (below ``SOLO_DEBT``).
#: Read and written without locks: a race only changes when a region runs
#: alone, never a result.
_TEAM_STATE = (ctypes.c_int64 * 3)(0, SOLO_REGIONS, 0)
_TEAM_SYMBOL = "sparse_train_team_state"
llvm_binding.add_symbol(_TEAM_SYMBOL, ctypes.addressof(_TEAM_STATE))


def team_state():
    """The team choice of the parallel kernels, process-wide: (regions left
    to run alone, current solo period, late debt); a new process has (0,
    ``SOLO_REGIONS``, 0).

    >>> set_team_state((3, 64, 1)); team_state()
    (3, 64, 1)
    >>> set_team_state(); team_state() == (0, SOLO_REGIONS, 0)
    True
    """
    return int(_TEAM_STATE[0]), int(_TEAM_STATE[1]), int(_TEAM_STATE[2])


def set_team_state(state=(0, SOLO_REGIONS, 0)):
    """Set the team choice to ``state`` (a ``team_state()`` triple;
    default: a new process's, the full team and the shortest solo period).
    For a benchmark that alternates conditions in one process
    (``scripts/bench_contention.py``): each condition resumes the choice it
    had learnt, as a process that ran in it all along would, instead of
    the one the condition before it left (a quiet 2-thread round right
    after a contended one would otherwise run alone, at 1-thread speed).
    Changes who runs a task, never a result."""
    values = tuple(int(x) for x in state)
    if len(values) != 3:
        raise ValueError(f"team state: (regions, period, late debt), got {state!r}")
    regions, period, debt = values
    if (regions < 0 or not SOLO_REGIONS <= period <= SOLO_REGIONS_MAX
            or not 0 <= debt < SOLO_DEBT):
        raise ValueError(f"team state: regions >= 0, {SOLO_REGIONS} <= period <= "
                         f"{SOLO_REGIONS_MAX} and 0 <= late debt < {SOLO_DEBT}, "
                         f"got {state!r}")
    _TEAM_STATE[0], _TEAM_STATE[1], _TEAM_STATE[2] = regions, period, debt


def _team_state_pointer(builder, index):
    """Pointer to ``_TEAM_STATE[index]`` in compiled code."""
    module = builder.module
    state = module.globals.get(_TEAM_SYMBOL)
    if state is None:
        state = ir.GlobalVariable(module, ir.ArrayType(ir.IntType(64), 3), _TEAM_SYMBOL)
    zero = ir.Constant(ir.IntType(32), 0)
    return builder.gep(state, [zero, ir.Constant(ir.IntType(32), index)])


@intrinsic
def _team_state_add(typingctx, index, value):
    """``_TEAM_STATE[index] += value`` (atomic); returns the old value.
    ``index`` a literal."""
    if not isinstance(index, types.IntegerLiteral) or not isinstance(value, types.Integer):
        return None
    position = index.literal_value

    def codegen(context, builder, signature, args):
        step = context.cast(builder, args[1], signature.args[1], types.int64)
        return builder.atomic_rmw("add", _team_state_pointer(builder, position), step,
                                  "monotonic")
    return types.int64(index, value), codegen


@intrinsic
def _team_state_set(typingctx, index, value):
    """``_TEAM_STATE[index] = value``; ``index`` a literal."""
    if not isinstance(index, types.IntegerLiteral) or not isinstance(value, types.Integer):
        return None
    position = index.literal_value

    def codegen(context, builder, signature, args):
        new = context.cast(builder, args[1], signature.args[1], types.int64)
        builder.store(new, _team_state_pointer(builder, position))
        return context.get_dummy_value()
    return types.none(index, value), codegen


@intrinsic
def _fetch_add(typingctx, counter, index, value):
    """Atomically ``old = counter[index]; counter[index] += value; return
    old`` (counter a 1-d int64 array)."""
    if not (isinstance(counter, types.Array) and counter.dtype == types.int64
            and isinstance(index, types.Integer) and isinstance(value, types.Integer)):
        return None

    def codegen(context, builder, signature, args):
        array = context.make_array(signature.args[0])(context, builder, args[0])
        at = context.cast(builder, args[1], signature.args[1], types.intp)
        step = context.cast(builder, args[2], signature.args[2], types.int64)
        pointer = builder.gep(array.data, [at])
        return builder.atomic_rmw("add", pointer, step, "monotonic")
    return types.int64(counter, index, value), codegen


@intrinsic
def _num_threads(typingctx):
    """``numba.get_num_threads()`` in a kernel that can be cached (Numba's
    own goes through a ctypes pointer, which keeps a kernel out of the
    cache): the threading layer's ``get_num_threads``, as parfors call it."""
    def codegen(context, builder, signature, args):
        # declared exactly as Numba's parfor lowering declares it (the
        # same module may hold both declarations)
        fnty = ir.FunctionType(ir.IntType(types.intp.bitwidth), [])
        fn = cgutils.get_or_insert_function(builder.module, fnty, "get_num_threads")
        return builder.call(fn, [])
    return types.intp(), codegen


@intrinsic
def _set_num_threads(typingctx, count):
    """``numba.set_num_threads(count)`` for the calling thread, cacheable
    (see ``_num_threads``); no checks."""
    if not isinstance(count, types.Integer):
        return None

    def codegen(context, builder, signature, args):
        fnty = ir.FunctionType(ir.VoidType(), [ir.IntType(32)])
        fn = cgutils.get_or_insert_function(builder.module, fnty, "set_num_threads")
        builder.call(fn, [builder.trunc(context.cast(builder, args[0], signature.args[0],
                                                     types.int64), ir.IntType(32))])
        return context.get_dummy_value()
    return types.none(count), codegen


@intrinsic
def _cycles(typingctx):
    """The CPU's cycle counter (``rdtsc`` on x86; 0 where there is none)."""
    def codegen(context, builder, signature, args):
        fnty = ir.FunctionType(ir.IntType(64), [])
        fn = cgutils.get_or_insert_function(builder.module, fnty, "llvm.readcyclecounter")
        return builder.call(fn, [])
    return types.int64(), codegen


@intrinsic
def borrowed(typingctx, array):
    """``array`` without its reference count (a null meminfo), as the arrays
    in a parallel region's body are (Numba's gufunc builds them so): views
    of it (``a[r]``) and copies of the variable then skip NRT's atomic
    increments and decrements. A serial twin's loop over rows did several a
    row, and ran 2x slower than the same loop in a parallel region. The
    caller keeps ``array`` itself alive (an argument, or see ``keep_alive``)."""
    if not isinstance(array, types.Array):
        return None

    def codegen(context, builder, signature, args):
        source = context.make_array(signature.args[0])(context, builder, args[0])
        out = context.make_array(signature.return_type)(context, builder)
        context.populate_array(out, data=source.data, shape=source.shape,
                               strides=source.strides, itemsize=source.itemsize, meminfo=None)
        return out._getvalue()
    return array(array), codegen


@intrinsic
def keep_alive(typingctx, array):
    """A use of ``array`` that does nothing: Numba frees an array after its
    last use, so an array that a ``borrowed`` copy still reads needs one
    after that copy's last use."""
    if not isinstance(array, types.Array):
        return None

    def codegen(context, builder, signature, args):
        return context.get_dummy_value()
    return types.none(array), codegen


def task_queue(num_tasks):
    """The task counter of one parallel loop of ``num_tasks`` tasks, with the
    team choice made for it: [0] the next task number, [1] ``num_tasks``,
    [2] the caller's thread count (``tasks_done`` restores it), [3] cycle
    count at the start, [4] when the calling thread found the work all
    claimed, [5] the team size (``workers``). Use as::

        queue = task_queue(num_tasks)
        for worker in prange(workers(queue)):
            task = next_task(queue, worker)
            while task < num_tasks:
                ...  # task's own outputs only
                task = next_task(queue, worker)
        tasks_done(queue)
    """
    raise NotImplementedError("task_queue runs in compiled kernels only")


@overload(task_queue)
def _task_queue(num_tasks):
    def impl(num_tasks):
        queue = np.empty(6, np.int64)  # filled by hand: never a parallel region
        threads = _num_threads()
        queue[0] = 0
        queue[1] = num_tasks
        queue[2] = threads
        queue[4] = 0
        queue[5] = max(1, min(threads, num_tasks))
        if threads > 1:
            if _team_state_add(0, -1) > 0:
                _set_num_threads(1)  # alone: no team to wait for
                queue[5] = 1
            else:
                _team_state_set(0, 0)
        queue[3] = _cycles()
        return queue
    return impl


def next_task(queue, worker):
    """The next unclaimed task number of ``queue`` (thread-safe), claimed by
    ``prange`` iteration ``worker`` (0: the calling thread); numbers past
    the last task mean the loop's work is all claimed."""
    raise NotImplementedError("next_task runs in compiled kernels only")


@overload(next_task)
def _next_task(queue, worker):
    def impl(queue, worker):  # not inlined: the caller's loop index is ``worker``
        task = _fetch_add(queue, 0, 1)
        if worker == 0 and task >= queue[1]:
            queue[4] = _cycles()
        return task
    return impl


def tasks_done(queue):
    """After a ``task_queue`` loop: restore the thread count; when the
    calling thread waited for the helpers over half as long as it worked
    (and over ``LATE_MIN_CYCLES``), run the next regions alone (see above)."""
    raise NotImplementedError("tasks_done runs in compiled kernels only")


@overload(tasks_done)
def _tasks_done(queue):
    def impl(queue):
        threads = queue[2]
        if threads > 1:
            if _num_threads() != threads:
                _set_num_threads(threads)
            else:
                period = _team_state_add(1, 0)
                debt = _team_state_add(2, 0)
                alone, next_period, next_debt = next_team_state(
                    _cycles() - queue[4], queue[4] - queue[3], period, debt)
                if alone > 0:
                    _team_state_set(0, alone)  # the helpers keep coming late: go alone
                if next_period != period:
                    _team_state_set(1, next_period)
                if next_debt != debt:
                    _team_state_set(2, next_debt)
    return impl


@njit
def next_team_state(waited, worked, period, debt):
    """The team choice after a region the team ran, in which the calling
    thread worked ``worked`` cycles and then waited ``waited`` for the
    helpers, with solo period ``period`` and late debt ``debt``: (regions
    to run alone next, the next period, the next debt).

    - late (``waited > LATE_MIN_CYCLES`` and ``2 waited > worked``) and
      ``debt + LATE_DEBT >= SOLO_DEBT``: ``(period, min(2 period,
      SOLO_REGIONS_MAX), SOLO_DEBT - LATE_DEBT)`` (so the region that tries
      the team again goes alone at once if it is late too);
    - late, less debt: ``(0, period, debt + LATE_DEBT)``;
    - on time (``8 waited < worked``): ``(0, max(SOLO_REGIONS, period -
      period // SOLO_SHRINK), max(debt - 1, 0))``;
    - otherwise ``(0, period, debt)``.
    """
    if waited > LATE_MIN_CYCLES and 2 * waited > worked:
        if debt + LATE_DEBT >= SOLO_DEBT:
            return period, min(2 * period, SOLO_REGIONS_MAX), SOLO_DEBT - LATE_DEBT
        return 0, period, debt + LATE_DEBT
    if 8 * waited < worked:
        return 0, max(SOLO_REGIONS, period - period // SOLO_SHRINK), max(debt - 1, 0)
    return 0, period, debt


def workers(queue):
    """Iterations of the ``prange`` loop of a ``task_queue``: one per thread
    of the team chosen for it (each then claims tasks), at most one per
    task. Read from the queue, so that it is computed after the choice."""
    raise NotImplementedError("workers runs in compiled kernels only")


@overload(workers)
def _workers(queue):
    def impl(queue):
        return queue[5]
    return impl


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


#: The Numba type of each ``_StaticDim`` width, made once: building an
#: ``IntegerLiteral`` costs about 10 us, paid by every kernel call otherwise.
_STATIC_DIM_TYPES = {}


@typeof_impl.register(_StaticDim)
def _typeof_static_dim(value, context):
    key = int(value)
    typ = _STATIC_DIM_TYPES.get(key)
    if typ is None:
        typ = _STATIC_DIM_TYPES[key] = types.IntegerLiteral(key)
    return typ


def row_dim(dim):
    """The ``dim`` argument of a row kernel for rows of ``dim`` values."""
    dim = int(dim)
    if specialize_dims and dim in STATIC_DIMS:
        return _StaticDim(dim)
    return dim


#: Tables of fewer rows take the generic variant whatever their width
#: (``table_dim``): a constant-width variant costs about 2 s of compiling
#: per kernel on a first run and saves a few ns per id looked up or
#: updated (the main job, DeepFM on the synthetic log, 5.7k rows:
#: 39 -> 50 us for its pooled lookup of 6k ids, about 0.1 s over its
#: 6 epochs, for 3.6 s less compiling). Large tables, where the constant
#: width was measured to pay (``STATIC_DIMS``), keep it.
STATIC_DIM_MIN_ROWS = 1 << 16


def table_dim(dim, num_rows):
    """The ``dim`` argument of a row kernel over a table of ``num_rows``
    rows of ``dim`` values: ``row_dim(dim)`` from ``STATIC_DIM_MIN_ROWS``
    rows up, else the plain int (one generic variant; the same bits)."""
    if num_rows < STATIC_DIM_MIN_ROWS:
        return int(dim)
    return row_dim(dim)


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
