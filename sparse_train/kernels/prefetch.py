"""Software prefetch of table rows (LLVM ``llvm.prefetch``).

Random row updates are bound by memory latency; asking for the rows a few
iterations ahead keeps several misses in flight: the Adagrad update of W1
(1M x 64, uniform ids) goes from about 8.5 ms to 3.7 ms on 2 threads.
"""
from llvmlite import ir
from numba import types
from numba.core import cgutils
from numba.extending import intrinsic

from ._jit import njit_inline

#: Rows prefetched (for writing) ahead of the one being updated (measured:
#: 4-16 are within noise of each other; 8 was best on 1 thread).
AHEAD = 8
#: Ids prefetched (for reading, into L2) ahead of the one being pooled by a
#: lookup. Measured on W1 1M x 64, 2 threads, uniform / Zipf ids: into all
#: levels 16 ahead 1.60 / 0.78 ms, into L2 16 ahead 1.26 / 0.78, into L2 32
#: ahead 1.21 / 0.71 (torch's embedding_bag: 1.62 / 0.95).
LOOKUP_AHEAD = 32

_CACHE_LINE = 64


def _prefetch_codegen(write, locality=3):
    def codegen(context, builder, signature, args):
        data = context.make_array(signature.args[0])(context, builder, args[0]).data
        byte_ptr = builder.bitcast(builder.gep(data, [args[1]]), ir.IntType(8).as_pointer())
        int32 = ir.IntType(32)
        function = cgutils.get_or_insert_function(
            builder.module, ir.FunctionType(ir.VoidType(), [byte_ptr.type, int32, int32, int32]),
            "llvm.prefetch.p0")
        # rw (1 = for writing), locality (3 = keep in all levels, 2 = from L2
        # outwards), cache = 1 (data)
        builder.call(function, [byte_ptr, int32(int(write)), int32(locality), int32(1)])
        return context.get_dummy_value()
    return codegen


@intrinsic
def prefetch(typingctx, array, index):
    """Hint the CPU to fetch the cache line of ``array.flat[index]`` for
    writing, into all cache levels. ``array`` must be C-contiguous."""
    if not isinstance(array, types.Array) or not isinstance(index, types.Integer):
        return None
    return types.void(array, index), _prefetch_codegen(write=True)


@intrinsic
def prefetch_read(typingctx, array, index):
    """As ``prefetch``, for reading only (no request for ownership), into L2
    and outwards: a lookup's rows are read once, and the first-level fill
    buffers stay free for the loads in flight."""
    if not isinstance(array, types.Array) or not isinstance(index, types.Integer):
        return None
    return types.void(array, index), _prefetch_codegen(write=False, locality=2)


@njit_inline
def _misaligned(array, first, dim):
    """True when element ``first`` of ``array`` is not on a cache line. For
    an aligned array whose rows are whole lines, a test that LLVM hoists out
    of the row loop."""
    if array.ctypes.data % _CACHE_LINE == 0 and (dim * array.itemsize) % _CACHE_LINE == 0:
        return False
    return (array.ctypes.data + first * array.itemsize) % _CACHE_LINE != 0


@njit_inline
def prefetch_row(array, r, dim):
    """Prefetch for writing the cache lines of row r of a C-contiguous
    [V, dim] array (``dim`` as given to the kernel: see ``_jit.row_dim``):
    one prefetch per 64 bytes from the row's start, and one for its last
    line when the row does not start on a line. Tables and slots start on
    a line (``_aligned``), so for dims that are multiples of 16 the extra
    prefetch never runs (it cost 10-20% of a W1 lookup when it always ran).
    """
    base = r * dim
    step = max(_CACHE_LINE // array.itemsize, 1)
    for j in range(0, dim, step):
        prefetch(array, base + j)
    if _misaligned(array, base, dim):
        prefetch(array, base + dim - 1)


@njit_inline
def prefetch_row_read(array, r, dim):
    """As ``prefetch_row``, for reading only."""
    base = r * dim
    step = max(_CACHE_LINE // array.itemsize, 1)
    for j in range(0, dim, step):
        prefetch_read(array, base + j)
    if _misaligned(array, base, dim):
        prefetch_read(array, base + dim - 1)
