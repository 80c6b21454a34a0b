"""Vector row widening / narrowing (``kernels/half_rows.py``) against the
per-value functions of ``kernels/half.py`` (``widen``, ``narrow``,
``random16``: the documented rule, one value at a time), bit for bit, for
row widths compiled as constants and as runtime widths; and the stochastic
bits against an independent NumPy splitmix64."""
import numba
import numpy as np
import pytest

from sparse_train.kernels._jit import row_dim
from sparse_train.kernels.half_rows import SUM_LANES, squared_sums
from sparse_train.kernels.half import (BFLOAT16, FLOAT16, Narrowing, narrow, narrow_row,
                                       random16, row_key, widen, widen_row)


@numba.njit
def _scalar_narrow(values, fmt, stochastic, seed, step, rows):
    out = np.empty(values.shape, np.uint16)
    for i in range(values.shape[0]):
        key = row_key(seed, step, rows[i])
        for j in range(values.shape[1]):
            out[i, j] = narrow(values[i, j], fmt, random16(key, j), stochastic)
    return out


@numba.njit
def _vector_narrow(values, narrowing, rows, dim):
    out = np.empty(values.shape, np.uint16)
    for i in range(values.shape[0]):
        narrow_row(out[i], values[i], narrowing, rows[i], dim)
    return out


@numba.njit
def _scalar_widen(bits, fmt):
    out = np.empty(bits.shape, np.float32)
    for i in range(bits.shape[0]):
        for j in range(bits.shape[1]):
            out[i, j] = widen(bits[i, j], fmt)
    return out


@numba.njit
def _vector_widen(bits, fmt, dim):
    out = np.empty(bits.shape, np.float32)
    for i in range(bits.shape[0]):
        widen_row(out[i], bits[i], fmt, dim)
    return out


def _values(dim):
    """Rows of float32 of every class: specials, float16 subnormals and
    overflow, ordinary weights, random bit patterns (NaNs included)."""
    rng = np.random.default_rng(dim)
    special = np.array([0.0, -0.0, np.inf, -np.inf, np.nan, 65504.0, 65520.0, 65519.99,
                        3.4e38, -3.4e38, 2.0**-24, 2.0**-25, 1.5 * 2.0**-25, 6.1e-5, 1.00390625,
                        1.01171875], np.float32)
    parts = [special, (rng.standard_normal(256) * 1e-6).astype(np.float32),
             (rng.standard_normal(256) * 0.05).astype(np.float32),
             (rng.standard_normal(256) * 3e4).astype(np.float32),
             rng.integers(0, 2**32, 256, dtype=np.uint64).astype(np.uint32).view(np.float32)]
    flat = np.concatenate(parts)
    count = -(-flat.shape[0] // dim)
    return np.resize(flat, count * dim).reshape(count, dim)


@pytest.mark.parametrize("dim", [1, 7, 16, 21, 64, 128])
@pytest.mark.parametrize("fmt", [BFLOAT16, FLOAT16])
@pytest.mark.parametrize("stochastic", [0, 1])
def test_narrow_row_equals_per_value_narrow(dim, fmt, stochastic):
    values = _values(dim)
    rows = np.arange(values.shape[0], dtype=np.int64) * 7 + 3
    expected = _scalar_narrow(values, fmt, bool(stochastic), 11, 5, rows * 2 + 1)
    narrowing = Narrowing(fmt, stochastic, 11, 5, 2, 1)
    for given in (dim, row_dim(dim)):  # runtime width, and constant where compiled so
        np.testing.assert_array_equal(_vector_narrow(values, narrowing, rows, given), expected)


@pytest.mark.parametrize("fmt", [BFLOAT16, FLOAT16])
def test_widen_row_equals_per_value_widen_on_every_pattern(fmt):
    bits = np.arange(2**16, dtype=np.uint16).reshape(-1, 64)
    expected = _scalar_widen(bits, fmt).view(np.uint32)
    for given in (64, row_dim(64)):
        np.testing.assert_array_equal(_vector_widen(bits, fmt, given).view(np.uint32), expected)
    odd = np.ascontiguousarray(bits.reshape(-1, 16)[:, :13])
    np.testing.assert_array_equal(_vector_widen(odd, fmt, 13).view(np.uint32),
                                  _scalar_widen(odd, fmt).view(np.uint32))


def _splitmix_numpy(z):
    z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return z ^ (z >> np.uint64(31))


def test_stochastic_noise_is_splitmix_of_seed_step_row_column():
    """bfloat16 stochastic bits from an independent NumPy hash of (seed,
    step, global row, column): bits + noise, truncated (finite, in range)."""
    seed, step, stride, offset = 9, 12, 3, 2
    rng = np.random.default_rng(0)
    values = rng.standard_normal((5, 64)).astype(np.float32)
    rows = np.array([0, 4, 9, 100, 12345], np.int64)
    gamma = np.uint64(0x9E3779B97F4A7C15)
    with np.errstate(over="ignore"):
        key = _splitmix_numpy(np.uint64(seed) + gamma)
        key = _splitmix_numpy(key ^ (np.uint64(step) * gamma))
        global_rows = (rows * stride + offset).astype(np.uint64)
        keys = _splitmix_numpy(key + global_rows * gamma)
        columns = np.arange(64, dtype=np.uint64) * np.uint64(0xD1B54A32D192ED03)
        noise = _splitmix_numpy(keys[:, None] + columns[None, :]) >> np.uint64(48)
    bits = values.view(np.uint32).astype(np.uint64)
    expected = (((bits & 0x7fffffff) + noise) >> 16) | ((bits >> 16) & 0x8000)
    got = _vector_narrow(values, Narrowing(BFLOAT16, 1, seed, step, stride, offset), rows,
                         row_dim(64))
    np.testing.assert_array_equal(got, expected.astype(np.uint16))


@pytest.mark.parametrize("dim", [13, 64])
@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
def test_lookup_of_16_bit_table_equals_float32_lookup_of_widened_table(dim, dtype):
    """Vector widen-and-accumulate (weighted and not): the bits of the
    float32 lookup of the widened table (same float32 operations, same order)."""
    from sparse_train import EmbeddingTable
    from sparse_train import functional as F
    rng = np.random.default_rng(dim)
    table = EmbeddingTable(50, dim, f"rows_{dtype}_{dim}", initializer="normal", dtype=dtype)
    offsets = np.concatenate([[0], np.cumsum(rng.integers(0, 7, 11))])
    values = rng.integers(0, 50, offsets[-1])
    widened = np.asarray(table.weight)
    for weights in (None, rng.random(offsets[-1]).astype(np.float32)):
        got = table.lookup(values, offsets, weights, "sum")
        want = F.embedding_bag(widened, values, offsets, weights, "sum")
        np.testing.assert_array_equal(got.view(np.uint32), want.view(np.uint32))


@numba.njit
def _squared_sums_kernel(block, dim):
    totals = np.empty(SUM_LANES, np.float32)
    squared_sums(totals, block, dim)
    return totals


@pytest.mark.parametrize("dim", [13, 40, 64])
def test_squared_sums_in_column_order(dim):
    """One lane a row: each sum is float32, accumulated in column order
    (whole 16-column tiles, then the columns past them)."""
    block = np.random.default_rng(dim).standard_normal((SUM_LANES, dim)).astype(np.float32)
    expected = np.zeros(SUM_LANES, np.float32)
    for j in range(dim):  # float32 throughout, in order
        expected = expected + block[:, j] * block[:, j]
    for given in (dim, row_dim(dim)):
        got = _squared_sums_kernel(block, given)
        np.testing.assert_array_equal(got.view(np.uint32), expected.view(np.uint32))
    np.testing.assert_allclose(expected, (block.astype(np.float64) ** 2).sum(axis=1), rtol=1e-5)


# ------------------------------------------------ float16 against NumPy
def _numpy_widen_float16(bits):
    """NumPy's float16 -> float32, except that a NaN keeps its payload and
    quiet bit as they are (NumPy may quiet a signalling NaN)."""
    wide = bits.view(np.float16).astype(np.float32).view(np.uint32)
    b = bits.astype(np.uint32)
    nan = ((b & 0x8000) << 16) | 0x7f800000 | ((b & 0x3ff) << 13)
    return np.where((b & 0x7fff) > 0x7c00, nan, wide).astype(np.uint32)


def _numpy_narrow_float16(values):
    """NumPy's float32 -> float16 (nearest-even), except: a finite value that
    NumPy rounds to inf saturates to +-65504, a NaN is quiet with the top
    10 bits of its payload."""
    with np.errstate(over="ignore", invalid="ignore"):
        half = values.astype(np.float16).view(np.uint16).astype(np.uint32)
    bits = values.view(np.uint32)
    sign = (bits >> 16) & 0x8000
    magnitude = bits & 0x7fffffff
    half = np.where((magnitude < 0x7f800000) & ((half & 0x7fff) == 0x7c00), sign | 0x7bff, half)
    nan = sign | 0x7e00 | ((magnitude >> 13) & 0x3ff)
    return np.where(magnitude > 0x7f800000, nan, half).astype(np.uint16)


def _float16_edges():
    """float32 values at every float16 boundary: each finite float16, the
    midpoints between neighbours (the ties) and the float32 values next to
    them, both signs; and 10^6 random float32 bit patterns."""
    half = np.arange(0x7c00, dtype=np.uint16).view(np.float16).astype(np.float64)
    middle = (half[:-1] + half[1:]) / 2  # exact in float32 (12 significant bits)
    points = np.concatenate([half, middle, [65504.0 + 16.0, 65536.0]]).astype(np.float32)
    near = np.concatenate([points, np.nextafter(points, np.float32(np.inf)),
                           np.nextafter(points, np.float32(0))])
    random = np.random.default_rng(16).integers(0, 2**32, 10**6, dtype=np.uint64)
    return np.concatenate([near, -near, random.astype(np.uint32).view(np.float32),
                           np.array([np.inf, -np.inf, np.nan, 3.4e38], np.float32)])


def _float16_rows(f16c, monkeypatch):
    """The vector row functions compiled with ``half_rows.F16C = f16c``."""
    from sparse_train.kernels import half_rows
    monkeypatch.setattr(half_rows, "F16C", f16c)

    @numba.njit
    def widen_rows(bits, dim):
        out = np.empty(bits.shape, np.float32)
        for i in range(bits.shape[0]):
            half_rows.widen_row_float16(out[i], bits[i], dim)
        return out

    @numba.njit
    def narrow_rows(values, dim):
        out = np.empty(values.shape, np.uint16)
        for i in range(values.shape[0]):
            half_rows.narrow_row_float16(out[i], values[i], np.uint64(0), dim)
        return out
    return widen_rows, narrow_rows


@pytest.mark.parametrize("f16c", [True, False])
def test_float16_rows_match_numpy_exhaustive_widen_and_edges_narrow(f16c, monkeypatch):
    """Every float16 pattern widened, and float32 at every float16 rounding
    boundary plus random patterns narrowed (nearest), against NumPy's
    astype: with the conversion instructions (F16C / AVX512-FP16, where
    the CPU has them) and with the integer recipe."""
    from sparse_train.kernels import half_rows
    if f16c and not half_rows.F16C:
        pytest.skip("this CPU has no F16C")
    widen_rows, narrow_rows = _float16_rows(f16c, monkeypatch)
    bits = np.arange(2**16, dtype=np.uint16)
    expected = _numpy_widen_float16(bits)
    for dim in (64, row_dim(64), 13):
        count = bits.shape[0] // 64 * 64 if dim != 13 else bits.shape[0] // 13 * 13
        rows = bits[:count].reshape(-1, 64 if dim != 13 else 13)
        got = widen_rows(rows, dim).view(np.uint32).ravel()
        np.testing.assert_array_equal(got, expected[:count])
    values = _float16_edges()
    expected = _numpy_narrow_float16(values)
    for dim in (64, row_dim(64), 13):
        width = 13 if dim == 13 else 64
        count = values.shape[0] // width * width
        got = narrow_rows(values[:count].reshape(-1, width), dim).ravel()
        np.testing.assert_array_equal(got, expected[:count])
