"""Widening and narrowing of whole 16-bit rows as explicit vector code.

The per-value functions of ``half`` (``widen``, ``narrow``, ``random16``)
branch on special values, and Numba leaves LLVM's SLP vectoriser off
(numba#8705), so a row loop over them runs one value at a time: on W1
(1M x 64, uniform ids) the float16 and the stochastic updates were slower
than the float32 step. These intrinsics compute every branch of those
functions on 16 lanes at once and pick each lane's result with a select,
with the same integer and float32 operations, so the bits are exactly
those of ``half.widen`` / ``half.narrow`` (tests/kernels/test_half_rows.py
compares every 16-bit pattern and every float32 class). Blocks of 16, 8
and 4 lanes, then single values, as ``rows``: straight-line when ``dim`` is
a compile-time constant (``_jit.row_dim``), loops otherwise.

Stochastic rounding draws ``random16(key, j)`` for column ``j`` in the
vector too (splitmix64's finalizer on 64-bit lanes): the same bits.

float16 on a CPU with F16C (``F16C``; Intel since 2012, AMD since 2011):
widening and nearest-even narrowing are LLVM's ``fpext`` / ``fptrunc``
between float and half, one ``vcvtph2ps`` / ``vcvtps2ph`` per 8 or 16
lanes (AVX512-FP16's forms where the CPU has them), plus two fix-ups to
the bits of ``half.widen`` / ``half.narrow``: a signalling NaN widens
without its quiet bit set (the instruction sets it), and a finite value
that rounds past 65504 saturates (the instruction gives inf). Both
instructions round to nearest-even in the default floating-point
environment, which Python keeps. W1 float16 SGD step, 1 thread, CPU
time (medians of 3 interleaved A/B runs, load average 4.3 on 2 cores):
7.2 -> 6.0 ms (bfloat16's: 6.2).
"""
from llvmlite import binding as llvm
from llvmlite import ir
from numba import types
from numba.core.registry import cpu_target
from numba.extending import intrinsic

from .rows import _emit

_I16, _I32, _I64 = ir.IntType(16), ir.IntType(32), ir.IntType(64)
_F16, _F32 = ir.HalfType(), ir.FloatType()


def _target_features():
    """The CPU features Numba compiles for (``+f16c,-xop,...``): its target
    machine's, or the host's when that is not exposed."""
    features = getattr(cpu_target.target_context.codegen(), "_tm_features", None)
    if features is None:
        host = llvm.get_host_cpu_features()
        features = ",".join(("+" if on else "-") + name for name, on in host.items())
    return set(features.split(","))


#: True when kernels are compiled for a CPU with F16C: float16 rows then
#: widen and narrow (nearest) with its conversion instructions.
F16C = "+f16c" in _target_features()
_ALIGN = {"i16": 2, "float": 4}
_COLUMN = 0xD1B54A32D192ED03
_MIX1, _MIX2 = 0xBF58476D1CE4E5B9, 0x94D049BB133111EB


def _type(element, lanes):
    return element if lanes == 1 else ir.VectorType(element, lanes)


def _const(element, value, lanes):
    if lanes == 1:
        return ir.Constant(element, value)
    return ir.Constant(ir.VectorType(element, lanes), [ir.Constant(element, value)] * lanes)


def _pointer(context, builder, array_type, value):
    return context.make_array(array_type)(context, builder, value).data


def _load(builder, pointer, offset, element, lanes):
    address = builder.gep(pointer, [offset])
    if lanes == 1:
        return builder.load(address)
    vector = builder.bitcast(address, ir.VectorType(element, lanes).as_pointer())
    return builder.load(vector, align=_ALIGN[str(element)])


def _store(builder, value, pointer, offset, element, lanes):
    address = builder.gep(pointer, [offset])
    if lanes == 1:
        builder.store(value, address)
    else:
        vector = builder.bitcast(address, ir.VectorType(element, lanes).as_pointer())
        builder.store(value, vector, align=_ALIGN[str(element)])


class _Ops:
    """Integer and float32 operations on ``lanes`` lanes (1: scalars)."""

    def __init__(self, builder, lanes):
        self.b, self.lanes = builder, lanes

    def i32(self, value):
        return _const(_I32, value, self.lanes)

    def f32(self, value):
        return _const(_F32, value, self.lanes)

    def select(self, condition, a, b):
        return self.b.select(condition, a, b)

    def ucmp(self, op, a, value):
        return self.b.icmp_unsigned(op, a, self.i32(value) if isinstance(value, int) else value)

    def to_float(self, bits):
        return self.b.bitcast(bits, _type(_F32, self.lanes))

    def to_bits(self, value):
        return self.b.bitcast(value, _type(_I32, self.lanes))


def _widen(ops, half, bfloat16):
    """float32 of 16-bit patterns ``half`` (i16 lanes): ``half.widen``."""
    b = ops.b
    h = b.zext(half, _type(_I32, ops.lanes))
    if bfloat16:
        return ops.to_float(b.shl(h, ops.i32(16)))
    if F16C:  # vcvtph2ps, and a NaN keeps its bits (the instruction quiets it)
        wide = ops.to_bits(b.fpext(b.bitcast(half, _type(_F16, ops.lanes)),
                                   _type(_F32, ops.lanes)))
        magnitude = b.and_(h, ops.i32(0x7fff))
        nan = b.or_(b.add(b.shl(magnitude, ops.i32(13)), ops.i32(224 << 23)),
                    b.shl(b.and_(h, ops.i32(0x8000)), ops.i32(16)))
        return ops.to_float(ops.select(ops.ucmp(">", magnitude, 0x7c00), nan, wide))
    o = b.shl(b.and_(h, ops.i32(0x7fff)), ops.i32(13))
    exponent = b.and_(o, ops.i32(0x0f800000))
    o = b.add(o, ops.i32(112 << 23))
    special = b.add(o, ops.i32(112 << 23))                       # inf or NaN
    small = ops.to_bits(b.fsub(ops.to_float(b.add(o, ops.i32(1 << 23))),
                               ops.to_float(ops.i32(113 << 23))))  # renormalised
    o = ops.select(ops.ucmp("==", exponent, 0x0f800000), special, o)
    o = ops.select(ops.ucmp("==", exponent, 0), small, o)
    return ops.to_float(b.or_(o, b.shl(b.and_(h, ops.i32(0x8000)), ops.i32(16))))


def _narrow_bfloat16(ops, bits, magnitude, noise):
    """``half._bfloat16_bits`` on i32 lanes (noise None: nearest-even)."""
    b = ops.b
    if noise is None:
        odd = b.and_(b.lshr(magnitude, ops.i32(16)), ops.i32(1))
        rounded = b.lshr(b.add(b.add(magnitude, ops.i32(0x7fff)), odd), ops.i32(16))
    else:
        rounded = b.lshr(b.add(magnitude, noise), ops.i32(16))
    rounded = ops.select(ops.ucmp(">=", rounded, 0x7f80), ops.i32(0x7f7f), rounded)
    rounded = b.or_(rounded, b.lshr(b.and_(bits, ops.i32(0x80000000)), ops.i32(16)))
    high = b.lshr(bits, ops.i32(16))
    rounded = ops.select(ops.ucmp("==", magnitude, 0x7f800000), high, rounded)
    return ops.select(ops.ucmp(">", magnitude, 0x7f800000), b.or_(high, ops.i32(0x40)), rounded)


def _narrow_float16(ops, bits, magnitude, noise):
    """``half._float16_bits`` on i32 lanes (noise None: nearest-even)."""
    b = ops.b
    if noise is None and F16C:  # vcvtps2ph, then finite values saturate
        narrowed = b.zext(b.bitcast(b.fptrunc(ops.to_float(bits), _type(_F16, ops.lanes)),
                                    _type(_I16, ops.lanes)), _type(_I32, ops.lanes))
        overflow = b.and_(ops.ucmp("<", magnitude, 0x7f800000),
                          ops.ucmp("==", b.and_(narrowed, ops.i32(0x7fff)), 0x7c00))
        return b.sub(narrowed, b.zext(overflow, _type(_I32, ops.lanes)))
    sign = b.lshr(b.and_(bits, ops.i32(0x80000000)), ops.i32(16))
    if noise is None or ops.lanes == 1:
        return b.or_(_float16_magnitude(ops, magnitude, noise), sign)
    # Stochastic, a block of lanes: when every lane is a float16 normal
    # (magnitude in [2**-14, 65536): nearly every weight), only the normal
    # lanes' rounding; the subnormal and special lanes' work (four float
    # conversions) only for a block that holds one.
    rebiased = b.sub(magnitude, ops.i32(112 << 23))
    normal = b.lshr(b.add(rebiased, b.lshr(noise, ops.i32(3))), ops.i32(13))
    fast = ops.select(ops.ucmp(">=", normal, 0x7c00), ops.i32(0x7bff), normal)
    outside = ops.ucmp(">=", b.sub(magnitude, ops.i32(113 << 23)), (143 - 113) << 23)
    any_outside = b.icmp_unsigned("!=", b.bitcast(outside, ir.IntType(ops.lanes)),
                                  ir.Constant(ir.IntType(ops.lanes), 0))
    entry = b.block
    with b.if_then(any_outside, likely=False):
        slow = _float16_magnitude(ops, magnitude, noise)
        slow_block = b.block
    rounded = b.phi(fast.type)
    rounded.add_incoming(fast, entry)
    rounded.add_incoming(slow, slow_block)
    return b.or_(rounded, sign)


def _float16_magnitude(ops, magnitude, noise):
    """``_narrow_float16`` of ``magnitude`` (the sign bit clear), every case."""
    b = ops.b
    nan = b.or_(ops.i32(0x7e00), b.and_(b.lshr(magnitude, ops.i32(13)), ops.i32(0x3ff)))
    big = ops.select(ops.ucmp(">", magnitude, 0x7f800000), nan,
                     ops.select(ops.ucmp("==", magnitude, 0x7f800000), ops.i32(0x7c00),
                                ops.i32(0x7bff)))
    is_small = ops.ucmp("<", magnitude, 113 << 23)
    rebiased = b.sub(magnitude, ops.i32(112 << 23))
    if noise is None:
        small = b.sub(ops.to_bits(b.fadd(ops.to_float(magnitude), ops.f32(0.5))),
                      ops.i32(126 << 23))
        odd = b.and_(b.lshr(magnitude, ops.i32(13)), ops.i32(1))
        normal = b.lshr(b.add(b.add(rebiased, ops.i32(0xfff)), odd), ops.i32(13))
    else:
        # lanes outside the subnormal range compute on 0 (no poison from fptosi)
        q = b.fmul(ops.to_float(ops.select(is_small, magnitude, ops.i32(0))),
                   ops.f32(16777216.0))
        whole = b.fptosi(q, _type(_I32, ops.lanes))
        fraction = b.fptosi(b.fmul(b.fsub(q, b.sitofp(whole, _type(_F32, ops.lanes))),
                                   ops.f32(65536.0)), _type(_I32, ops.lanes))
        small = b.add(whole, b.lshr(b.add(fraction, noise), ops.i32(16)))
        normal = b.lshr(b.add(rebiased, b.lshr(noise, ops.i32(3))), ops.i32(13))
    normal = ops.select(ops.ucmp(">=", normal, 0x7c00), ops.i32(0x7bff), normal)
    return ops.select(ops.ucmp(">=", magnitude, 143 << 23), big,
                      ops.select(is_small, small, normal))


def _noise(ops, key, offset):
    """``half.random16(key, j)`` for columns offset .. offset + lanes - 1 (i32 lanes)."""
    b, lanes = ops.b, ops.lanes
    if lanes == 1:
        column = offset
    else:
        column = ir.Constant(ir.VectorType(_I64, lanes), [ir.Constant(_I64, k)
                                                          for k in range(lanes)])
        base = _const(_I64, 0, lanes)
        for k in range(lanes):
            base = b.insert_element(base, offset, ir.Constant(_I32, k))
        column = b.add(base, column)
    splat = _const(_I64, 0, lanes)
    if lanes == 1:
        splat = key
    else:
        for k in range(lanes):
            splat = b.insert_element(splat, key, ir.Constant(_I32, k))
    z = b.add(splat, b.mul(column, _const(_I64, _COLUMN, lanes)))
    z = b.mul(b.xor(z, b.lshr(z, _const(_I64, 30, lanes))), _const(_I64, _MIX1, lanes))
    z = b.mul(b.xor(z, b.lshr(z, _const(_I64, 27, lanes))), _const(_I64, _MIX2, lanes))
    z = b.xor(z, b.lshr(z, _const(_I64, 31, lanes)))
    return b.trunc(b.lshr(z, _const(_I64, 48, lanes)), _type(_I32, lanes))


def _is_array(array, dtype):
    return isinstance(array, types.Array) and array.dtype == dtype


def _widen_intrinsic(bfloat16, name):
    @intrinsic
    def widen_row_op(typingctx, out, bits, dim):
        if not (_is_array(out, types.float32) and _is_array(bits, types.uint16)):
            return None

        def codegen(context, builder, signature, args):
            out_ptr = _pointer(context, builder, signature.args[0], args[0])
            bits_ptr = _pointer(context, builder, signature.args[1], args[1])

            def step(offset, lanes):
                ops = _Ops(builder, lanes)
                value = _widen(ops, _load(builder, bits_ptr, offset, _I16, lanes), bfloat16)
                _store(builder, value, out_ptr, offset, _F32, lanes)
            _emit(builder, signature.args[2], args[2], step)
            return context.get_dummy_value()
        return types.void(out, bits, dim), codegen
    widen_row_op.__name__ = name
    return widen_row_op


#: In place: out[0:dim] float32 = bfloat16 patterns bits[0:dim] widened.
widen_row_bfloat16 = _widen_intrinsic(True, "widen_row_bfloat16")
#: In place: out[0:dim] float32 = float16 patterns bits[0:dim] widened.
widen_row_float16 = _widen_intrinsic(False, "widen_row_float16")


def _narrow_intrinsic(narrow, stochastic, name):
    @intrinsic
    def narrow_row_op(typingctx, bits, values, key, dim):
        if not (_is_array(bits, types.uint16) and _is_array(values, types.float32)
                and isinstance(key, types.Integer)):
            return None

        def codegen(context, builder, signature, args):
            bits_ptr = _pointer(context, builder, signature.args[0], args[0])
            values_ptr = _pointer(context, builder, signature.args[1], args[1])
            key = context.cast(builder, args[2], signature.args[2], types.uint64)

            def step(offset, lanes):
                ops = _Ops(builder, lanes)
                value = ops.to_bits(_load(builder, values_ptr, offset, _F32, lanes))
                magnitude = builder.and_(value, ops.i32(0x7fffffff))
                noise = _noise(ops, key, offset) if stochastic else None
                rounded = narrow(ops, value, magnitude, noise)
                _store(builder, builder.trunc(rounded, _type(_I16, lanes)), bits_ptr, offset,
                       _I16, lanes)
            _emit(builder, signature.args[3], args[3], step)
            return context.get_dummy_value()
        return types.void(bits, values, key, dim), codegen
    narrow_row_op.__name__ = name
    return narrow_row_op


#: In place: bits[0:dim] uint16 = values[0:dim] float32 narrowed to
#: bfloat16, nearest-even (``key`` unused).
narrow_row_bfloat16 = _narrow_intrinsic(_narrow_bfloat16, False, "narrow_row_bfloat16")
#: As ``narrow_row_bfloat16``, to float16.
narrow_row_float16 = _narrow_intrinsic(_narrow_float16, False, "narrow_row_float16")
#: As ``narrow_row_bfloat16``, stochastic: column j draws ``random16(key, j)``.
narrow_row_bfloat16_stochastic = _narrow_intrinsic(_narrow_bfloat16, True,
                                                   "narrow_row_bfloat16_stochastic")
#: As ``narrow_row_float16``, stochastic.
narrow_row_float16_stochastic = _narrow_intrinsic(_narrow_float16, True,
                                                  "narrow_row_float16_stochastic")


def _accumulate_intrinsic(bfloat16, scaled, name):
    @intrinsic
    def accumulate_op(typingctx, acc, bits, coef, dim):
        if not (_is_array(acc, types.float32) and _is_array(bits, types.uint16)):
            return None

        def codegen(context, builder, signature, args):
            acc_ptr = _pointer(context, builder, signature.args[0], args[0])
            bits_ptr = _pointer(context, builder, signature.args[1], args[1])
            coef = context.cast(builder, args[2], signature.args[2], types.float32)

            def step(offset, lanes):
                ops = _Ops(builder, lanes)
                value = _widen(ops, _load(builder, bits_ptr, offset, _I16, lanes), bfloat16)
                if scaled:  # a multiply, then an add: the float32 lookup's operations
                    splat = coef
                    if lanes > 1:
                        splat = _const(_F32, 0.0, lanes)
                        for k in range(lanes):
                            splat = builder.insert_element(splat, coef, ir.Constant(_I32, k))
                    value = builder.fmul(splat, value)
                total = builder.fadd(_load(builder, acc_ptr, offset, _F32, lanes), value)
                _store(builder, total, acc_ptr, offset, _F32, lanes)
            _emit(builder, signature.args[3], args[3], step)
            return context.get_dummy_value()
        return types.void(acc, bits, types.float32, dim), codegen
    accumulate_op.__name__ = name
    return accumulate_op


#: In place: acc[0:dim] float32 += widened bfloat16 bits[0:dim] (``coef`` unused).
add_widened_bfloat16 = _accumulate_intrinsic(True, False, "add_widened_bfloat16")
#: In place: acc[0:dim] float32 += widened float16 bits[0:dim] (``coef`` unused).
add_widened_float16 = _accumulate_intrinsic(False, False, "add_widened_float16")
#: In place: acc[0:dim] float32 += coef * widened bfloat16 bits[0:dim].
axpy_widened_bfloat16 = _accumulate_intrinsic(True, True, "axpy_widened_bfloat16")
#: In place: acc[0:dim] float32 += coef * widened float16 bits[0:dim].
axpy_widened_float16 = _accumulate_intrinsic(False, True, "axpy_widened_float16")


#: Rows whose sums ``squared_sums`` computes at once (one lane each).
SUM_LANES = 16


def _transpose(builder, vectors):
    """The SUM_LANES x SUM_LANES transpose of ``vectors`` (one row each):
    four rounds of two-vector shuffles, each swapping one bit of the row
    index with that bit of the column index."""
    n = len(vectors)
    bit = n // 2
    while bit:
        masks = ([j + n - bit if j & bit else j for j in range(n)],
                 [j + n if j & bit else j + bit for j in range(n)])
        swapped = list(vectors)
        for i in range(n):
            if not i & bit:
                for row, mask in zip((i, i | bit), masks):
                    swapped[row] = builder.shuffle_vector(
                        vectors[i], vectors[i | bit],
                        ir.Constant(ir.VectorType(_I32, n), [ir.Constant(_I32, k) for k in mask]))
        vectors, bit = swapped, bit // 2
    return vectors


@intrinsic
def squared_sums(typingctx, totals, block, dim):
    """In place: totals[k] = sum_j block.flat[k * dim + j]^2 for k <
    ``SUM_LANES`` (float32; each row's sum in column order j = 0, 1, ...:
    a multiply, then an add, as the plain loop). ``block`` holds
    ``SUM_LANES`` rows of ``dim`` float32; one vector lane a row, so the
    rows' dependent chains of adds run side by side.

    Tiled: each ``SUM_LANES``-column tile of the block is loaded as one
    vector a row and transposed in registers (``_transpose``), so column j
    of every row is one vector; the columns past the last whole tile are
    gathered one value at a time. Lane k still adds row k's squares in
    column order: the same bits. A 16 x 64 block, dim a constant: 277 ->
    92 ns (best of 5 x 10^5 calls, 1 thread), near the 64 dependent adds'
    latency; the value-at-a-time gather of every column was most of it."""
    if not (_is_array(totals, types.float32) and _is_array(block, types.float32)):
        return None

    def codegen(context, builder, signature, args):
        from numba.core import cgutils
        totals_ptr = _pointer(context, builder, signature.args[0], args[0])
        block_ptr = _pointer(context, builder, signature.args[1], args[1])
        dim_type = signature.args[2]
        if isinstance(dim_type, types.IntegerLiteral):
            width = ir.Constant(_I64, dim_type.literal_value)
        else:
            width = context.cast(builder, args[2], dim_type, types.int64)
        vector_type = ir.VectorType(_F32, SUM_LANES)
        total = cgutils.alloca_once(builder, vector_type)
        builder.store(_const(_F32, 0.0, SUM_LANES), total)
        lanes = ir.Constant(_I64, SUM_LANES)
        tiled = builder.mul(builder.udiv(width, lanes), lanes)
        with cgutils.for_range_slice(builder, ir.Constant(_I64, 0), tiled, lanes) as (first, _):
            tile = [_load(builder, block_ptr,
                          builder.add(builder.mul(ir.Constant(_I64, k), width), first),
                          _F32, SUM_LANES)
                    for k in range(SUM_LANES)]
            running = builder.load(total)
            for column in _transpose(builder, tile):
                running = builder.fadd(running, builder.fmul(column, column))
            builder.store(running, total)
        with cgutils.for_range_slice(builder, tiled, width, ir.Constant(_I64, 1)) as (j, _):
            column = ir.Constant(vector_type, ir.Undefined)
            for k in range(SUM_LANES):
                at = builder.add(builder.mul(ir.Constant(_I64, k), width), j)
                column = builder.insert_element(column, builder.load(builder.gep(block_ptr, [at])),
                                                ir.Constant(_I32, k))
            builder.store(builder.fadd(builder.load(total), builder.fmul(column, column)), total)
        _store(builder, builder.load(total), totals_ptr, ir.Constant(_I64, 0), _F32, SUM_LANES)
        return context.get_dummy_value()
    return types.void(totals, block, dim), codegen
