"""16-bit narrowing and widening (``kernels/half.py``, SPEC §7) against
independent NumPy references: bfloat16 by integer bit arithmetic, float16
by numpy's own ``astype(np.float16)`` (IEEE nearest-even)."""
import numba
import numpy as np
import pytest

from sparse_train import half
from sparse_train.kernels.half import BFLOAT16, FLOAT16, Narrowing, narrow_rows, widen_rows

_SPECIAL = np.array([
    0x00000000, 0x80000000, 0x7f800000, 0xff800000, 0x7fc00000, 0xffc00001, 0x7f800001,
    0x7f7fffff, 0xff7fffff, 0x7f7f8000, 0x7f7f7fff, 0x3f808000, 0x3f818000, 0x3f808001,
    0x00000001, 0x00400000,                          # float32 subnormals
    0x477fe000, 0x477fefff, 0x477ff000, 0x47800000,  # around float16's 65504 / 65520
    0x38800000, 0x387fffff, 0x33800000, 0x33000000, 0x33000001, 0x33c00000,
], np.uint32)


def _sample():
    rng = np.random.default_rng(0)
    parts = [_SPECIAL, rng.integers(0, 2**32, 20000, dtype=np.uint64).astype(np.uint32)]
    for scale in (1e-6, 1.0, 3e4):  # float16 subnormals, ordinary weights, near its top
        parts.append((rng.standard_normal(5000) * scale).astype(np.float32).view(np.uint32))
    return np.concatenate(parts).view(np.float32)


def _kernel_narrow(values, fmt, stochastic=0, seed=0, step=0, rows=None):
    values = values.reshape(-1, 1) if values.ndim == 1 else values
    out = np.empty(values.shape, np.uint16)
    rows = np.zeros(values.shape[0], np.int64) if rows is None else rows
    narrow_rows(out, np.ascontiguousarray(values, np.float32), rows,
                Narrowing(fmt, stochastic, seed, step, 1, 0))
    return out


def bfloat16_nearest_reference(values):
    """bfloat16 bits of float32 ``values``, nearest-even by integer
    arithmetic; NaN -> a NaN; finite overflow saturates (the documented rule)."""
    bits = values.view(np.uint32).astype(np.uint64)
    magnitude, sign = bits & 0x7fffffff, (bits >> 16) & 0x8000
    rounded = (magnitude + 0x7fff + ((magnitude >> 16) & 1)) >> 16
    rounded = np.where(rounded >= 0x7f80, 0x7f7f, rounded)            # finite: saturate
    rounded = np.where(magnitude == 0x7f800000, 0x7f80, rounded)       # inf
    rounded = np.where(magnitude > 0x7f800000, 0x7fc0, rounded)        # NaN
    return (rounded | sign).astype(np.uint16)


def float16_nearest_reference(values):
    with np.errstate(over="ignore", invalid="ignore"):
        out = values.astype(np.float16)
    overflow = np.isfinite(values) & np.isinf(out)
    out[overflow] = np.copysign(np.float16(65504.0), values[overflow])
    return out


def _same_or_both_nan(got, expected, widen):
    a, b = widen(got), widen(expected)
    return (got == expected) | (np.isnan(a) & np.isnan(b))


def test_bfloat16_nearest_even_matches_bit_reference():
    x = _sample()
    got = _kernel_narrow(x, BFLOAT16)[:, 0]
    want = bfloat16_nearest_reference(x)
    widen = lambda b: (b.astype(np.uint32) << 16).view(np.float32)
    assert _same_or_both_nan(got, want, widen).all()
    # ties go to even: 1 + 2**-8 -> 1, 1 + 3 * 2**-8 -> 1 + 2**-6
    assert got[11:13].tolist() == [0x3f80, 0x3f82]
    assert np.isnan(widen(got[4:7])).all() and np.signbit(widen(got[5:6])).all()


def test_float16_nearest_even_matches_numpy():
    x = _sample()
    got = _kernel_narrow(x, FLOAT16)[:, 0].view(np.float16)
    want = float16_nearest_reference(x)
    assert _same_or_both_nan(got.view(np.uint16), want.view(np.uint16),
                             lambda b: b.view(np.float16)).all()


def test_overflow_saturates_and_specials_stay():
    x = np.array([1e6, -70000.0, 65519.0, 65520.0, np.inf, -np.inf, np.nan], np.float32)
    f16 = _kernel_narrow(x, FLOAT16)[:, 0].view(np.float16).astype(np.float32)
    assert f16[:6].tolist() == [65504.0, -65504.0, 65504.0, 65504.0, np.inf, -np.inf]
    assert np.isnan(f16[6])
    big = np.array([3.4e38, -np.inf], np.float32)
    bf16 = (_kernel_narrow(big, BFLOAT16)[:, 0].astype(np.uint32) << 16).view(np.float32)
    assert bf16.tolist() == [float(np.float32(3.3895314e38)), -np.inf]


@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
def test_widen_every_pattern_exactly(dtype):
    bits = np.arange(1 << 16, dtype=np.uint64).astype(np.uint16).reshape(-1, 8)
    got = np.empty(bits.shape, np.float32)
    widen_rows(got, bits, BFLOAT16 if dtype == "bfloat16" else FLOAT16)
    if dtype == "bfloat16":
        want = (bits.astype(np.uint32) << 16).view(np.float32)
    else:
        want = bits.view(np.float16).astype(np.float32)
    assert ((got.view(np.uint32) == want.view(np.uint32)) | (np.isnan(got) & np.isnan(want))).all()
    # narrowing a widened value gives the pattern back (NaNs aside)
    finite = np.isfinite(want)
    assert (half.narrow(want, dtype).view(np.uint16)[finite] == bits[finite]).all()


@pytest.mark.parametrize("fmt", [BFLOAT16, FLOAT16])
def test_stochastic_rounding_is_unbiased_and_brackets(fmt):
    """Each value rounds to one of its two 16-bit neighbours; over many
    (step, column) draws the mean equals the value. With n draws of a
    two-point variable the mean's standard deviation is <= ulp / (2 sqrt n):
    the bound below is 6 of them."""
    values = np.array([1.0 + 0.3 * 2**-7, -2.0 - 0.77 * 2**-6, 0.1, 3.0e-6, 1000.3],
                      np.float32)
    n_steps, n_cols = 64, 64
    draws = np.empty((values.size, n_steps * n_cols))
    rows = np.arange(n_cols, dtype=np.int64)
    for step in range(n_steps):
        x = np.repeat(values[:, None], n_cols, axis=1).astype(np.float32)
        bits = _kernel_narrow(x, fmt, stochastic=1, seed=7, step=step, rows=rows[:values.size])
        widened = ((bits.astype(np.uint32) << 16).view(np.float32) if fmt == BFLOAT16
                   else bits.view(np.float16).astype(np.float32))
        draws[:, step * n_cols:(step + 1) * n_cols] = widened
    nearest = _kernel_narrow(values, fmt)[:, 0]
    for i, v in enumerate(values.astype(np.float64)):
        seen = np.unique(draws[i])
        assert len(seen) == 2 and seen[0] < v < seen[1], (v, seen)
        ulp = seen[1] - seen[0]
        assert abs(draws[i].mean() - v) <= 6 * ulp / (2 * np.sqrt(draws.shape[1])), v
    assert nearest.dtype == np.uint16


def test_stochastic_rounding_is_content_seeded():
    """Bits depend on (seed, step, row, column) only: the same for 1 and 2
    threads and for any split of the rows; another step draws others."""
    rng = np.random.default_rng(1)
    x = rng.standard_normal((300, 16)).astype(np.float32)
    rows = rng.permutation(1000)[:300].astype(np.int64)
    before = numba.get_num_threads()
    try:
        numba.set_num_threads(1)
        one = _kernel_narrow(x, BFLOAT16, 1, 3, 5, rows)
        numba.set_num_threads(min(2, numba.config.NUMBA_NUM_THREADS))
        two = _kernel_narrow(x, BFLOAT16, 1, 3, 5, rows)
    finally:
        numba.set_num_threads(before)
    split = np.concatenate([_kernel_narrow(x[:100], BFLOAT16, 1, 3, 5, rows[:100]),
                            _kernel_narrow(x[100:], BFLOAT16, 1, 3, 5, rows[100:])])
    assert (one == two).all() and (one == split).all()
    other_step = _kernel_narrow(x, BFLOAT16, 1, 3, 6, rows)
    assert (other_step != one).mean() > 0.2
    nearest = bfloat16_nearest_reference(x)
    assert (np.abs(one.astype(np.int64) - nearest.astype(np.int64)) <= 1).all()
