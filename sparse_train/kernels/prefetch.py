"""Software prefetch of table rows (LLVM ``llvm.prefetch``).

Random row updates are bound by memory latency; asking for the rows a few
iterations ahead keeps several misses in flight: the Adagrad update of W1
(1M x 64, uniform ids) goes from about 8.5 ms to 3.7 ms on 2 threads.
"""
from llvmlite import ir
from numba import types
from numba.core import cgutils
from numba.extending import intrinsic, overload

from ._jit import njit_inline

#: Rows prefetched (for writing) ahead of the one being updated (measured:
#: 4-16 are within noise of each other; 8 was best on 1 thread).
AHEAD = 8
#: Ids prefetched (for reading, into every cache level: ``prefetch_row_read``)
#: ahead of the one being pooled by a lookup. Measured when chosen on W1
#: 1M x 64, 2 threads, uniform / Zipf ids: into all levels 16 ahead 1.60 /
#: 0.78 ms, into L2 16 ahead 1.26 / 0.78, into L2 32 ahead 1.21 / 0.71
#: (torch's embedding_bag: 1.62 / 0.95). In those figures the row's
#: prefetch loop stepped by ``array.itemsize``, read at run time, so it did
#: not unroll (``_item_bytes``), and the alignment test read the address
#: through ``array.ctypes`` at every id (``_data_address``). Without both
#: (2026-12-06, W1's four configs, 1 and 2 threads, interleaved in one
#: process), 32 ahead into all levels was 1-19% faster than into L2 (most
#: on 1M x 64), and the lookup 12-29% faster than before the three changes.
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
def _prefetch_read_all_levels(typingctx, array, index):
    """As ``prefetch_read``, into every cache level (a lookup's rows)."""
    if not isinstance(array, types.Array) or not isinstance(index, types.Integer):
        return None
    return types.void(array, index), _prefetch_codegen(write=False, locality=3)


@intrinsic
def _data_address(typingctx, array):
    """The address of ``array``'s first element, read from the array's own
    fields, which LLVM hoists out of a loop (``array.ctypes.data`` builds a
    ctypes view at each use)."""
    if not isinstance(array, types.Array):
        return None

    def codegen(context, builder, signature, args):
        data = context.make_array(signature.args[0])(context, builder, args[0]).data
        return builder.ptrtoint(data, ir.IntType(64))
    return types.int64(array), codegen


@intrinsic
def prefetch_read(typingctx, array, index):
    """As ``prefetch``, for reading only (no request for ownership), into L2
    and outwards (the dynamic tables' key map probe: ``key_map``)."""
    if not isinstance(array, types.Array) or not isinstance(index, types.Integer):
        return None
    return types.void(array, index), _prefetch_codegen(write=False, locality=2)


def _item_bytes(array):
    """Bytes of one element of ``array``, a compile-time constant in a
    kernel (``array.itemsize`` is read from the array at run time, so a
    loop stepping by it over a row is not unrolled: W1 lookups ran 13-21%
    slower with it, except 1M x 64 uniform, bound by memory)."""
    return array.itemsize


@overload(_item_bytes, inline="always")
def _item_bytes_constant(array):
    size = array.dtype.bitwidth // 8
    return lambda array: size


@njit_inline
def _misaligned(array, first, dim):
    """True when element ``first`` of ``array`` is not on a cache line. For
    an aligned array whose rows are whole lines, a test that LLVM hoists out
    of the row loop."""
    address = _data_address(array)
    if address % _CACHE_LINE == 0 and (dim * _item_bytes(array)) % _CACHE_LINE == 0:
        return False
    return (address + first * _item_bytes(array)) % _CACHE_LINE != 0


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
    step = max(_CACHE_LINE // _item_bytes(array), 1)
    for j in range(0, dim, step):
        prefetch(array, base + j)
    if _misaligned(array, base, dim):
        prefetch(array, base + dim - 1)


@njit_inline
def prefetch_row_read(array, r, dim):
    """As ``prefetch_row``, for reading only (a lookup's row: into every
    cache level, see ``LOOKUP_AHEAD``)."""
    base = r * dim
    step = max(_CACHE_LINE // _item_bytes(array), 1)
    for j in range(0, dim, step):
        _prefetch_read_all_levels(array, base + j)
    if _misaligned(array, base, dim):
        _prefetch_read_all_levels(array, base + dim - 1)
