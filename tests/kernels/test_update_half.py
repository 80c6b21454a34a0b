"""16-bit update kernels (``kernels/update_half.py``) on many rows (several
tasks of the task queue, partial blocks of row-wise Adagrad's
``ROWWISE_BLOCK``), row widths compiled as constants (64) and not (13):
each step against a float64 NumPy version of the rule on the widened rows,
then explicit rounding to 16 bits (nearest-even by bit arithmetic / numpy,
stochastic by a NumPy splitmix64 of (seed, step, row, column)); and the same
bits for 1 and 2 threads."""
import numba
import numpy as np
import pytest

from sparse_train import GlobalStep, RowSparseGrad, Variable, optim

V, STEPS, IDS = 700, 2, 400
LR, EPSILON = 0.05, 1e-3


def _splitmix(z):
    z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return z ^ (z >> np.uint64(31))


def _noise(seed, step, rows, dim):
    """[R, dim] int64 random16 of (seed, step, row, column)."""
    gamma = np.uint64(0x9E3779B97F4A7C15)
    with np.errstate(over="ignore"):
        key = _splitmix(np.uint64(seed) + gamma)
        key = _splitmix(key ^ (np.uint64(step) * gamma))
        keys = _splitmix(key + rows.astype(np.uint64) * gamma)
        columns = np.arange(dim, dtype=np.uint64) * np.uint64(0xD1B54A32D192ED03)
        return (_splitmix(keys[:, None] + columns[None, :]) >> np.uint64(48)).astype(np.int64)


def _narrow(values64, dtype, noise=None):
    """16-bit patterns of float32(values64): nearest-even, or + noise and
    truncate (finite normal values only: the test's weights)."""
    bits = values64.astype(np.float32).view(np.uint32).astype(np.int64)
    magnitude, sign = bits & 0x7fffffff, (bits >> 16) & 0x8000
    if dtype == "bfloat16":
        if noise is None:
            return ((magnitude + 0x7fff + ((magnitude >> 16) & 1)) >> 16 | sign).astype(np.uint16)
        return (((magnitude + noise) >> 16) | sign).astype(np.uint16)
    if noise is None:
        return values64.astype(np.float32).astype(np.float16).view(np.uint16)
    assert (magnitude >= 113 << 23).all()  # float16 normals: the drawn weights
    return (((magnitude - (112 << 23) + (noise >> 3)) >> 13) | sign).astype(np.uint16)


def _widen(bits, dtype):
    if dtype == "bfloat16":
        return (bits.astype(np.uint32) << 16).view(np.float32).astype(np.float64)
    return bits.view(np.float16).astype(np.float64)


def _reference(kind, w, slot, g):
    """One float64 step of ``kind`` on rows w [R, D] with summed g; returns w, slot."""
    if kind == "GradientDescent":
        return w - LR * g, slot
    if kind == "Adagrad":
        slot = slot + g * g
        return w - LR * g / (np.sqrt(slot) + EPSILON), slot
    slot = slot + (g * g).mean(axis=1)
    return w - LR * g / (np.sqrt(slot)[:, None] + EPSILON), slot


def _make(kind):
    if kind == "GradientDescent":
        return optim.GradientDescent(LR), None
    if kind == "Adagrad":
        return optim.Adagrad(LR, initial_accumulator_value=0.1, epsilon=EPSILON), "accumulator"
    return optim.RowwiseAdagrad(LR, epsilon=EPSILON), "accumulator"


def _run(kind, dtype, rounding, dim, threads):
    rng = np.random.default_rng(dim)
    initial = rng.uniform(0.5, 1.0, (V, dim)) * rng.choice([-1.0, 1.0], (V, dim))
    var = Variable(initial, "t", dtype=dtype, rounding=rounding, rounding_seed=7)
    opt, slot_name = _make(kind)
    step, history = GlobalStep(), []
    previous = numba.get_num_threads()
    numba.set_num_threads(threads)
    try:
        for _ in range(STEPS):
            ids = rng.integers(0, V - 1, IDS)
            values = (0.3 * rng.standard_normal((IDS, dim))).astype(np.float32)
            before = var.value.view(np.uint16).copy()
            slot = None if slot_name is None else opt.get_slot(var, slot_name)
            slot_before = None if slot is None else slot.value.copy()
            at = int(step)
            opt.apply_gradients([(RowSparseGrad(ids, values, (V, dim)), var)], global_step=step)
            history.append((ids, values, before, slot_before, at,
                            var.value.view(np.uint16).copy()))
    finally:
        numba.set_num_threads(previous)
    slot = None if slot_name is None else opt.get_slot(var, slot_name).value
    return var.value.view(np.uint16).copy(), slot, history


@pytest.mark.parametrize("kind", ["GradientDescent", "Adagrad", "RowwiseAdagrad"])
@pytest.mark.parametrize("dtype,rounding,dim", [("bfloat16", "nearest", 64),
                                                ("bfloat16", "stochastic", 13),
                                                ("float16", "nearest", 13),
                                                ("float16", "stochastic", 64)])
def test_update_matches_float64_rule_then_explicit_rounding(kind, dtype, rounding, dim):
    _, _, history = _run(kind, dtype, rounding, dim, 2)
    exact = total = 0
    for ids, values, before, slot_before, at, after in history:
        rows = np.unique(ids)
        g = np.zeros((V, dim))
        np.add.at(g, ids, values.astype(np.float64))
        slot = None if slot_before is None else slot_before.astype(np.float64)[rows]
        if slot is None:  # created by the first apply, at its initial value
            slot = np.full((rows.shape[0], dim) if kind == "Adagrad" else rows.shape[0],
                           0.1 if kind == "Adagrad" else 0.0)
        w, _ = _reference(kind, _widen(before[rows], dtype), slot, g[rows])
        noise = _noise(7, at, rows, dim) if rounding == "stochastic" else None
        expected = _narrow(w, dtype, noise)
        got = after[rows]
        # float32 arithmetic against float64: a value that lands on a rounding
        # boundary may differ by one unit of the 16-bit format, no more
        difference = np.abs(got.astype(np.int64) - expected.astype(np.int64))
        assert difference.max() <= 1
        exact += (difference == 0).sum()
        total += difference.size
        untouched = np.setdiff1d(np.arange(V), rows)
        assert (after[untouched] == before[untouched]).all()
    assert exact >= 0.97 * total


@pytest.mark.parametrize("kind", ["GradientDescent", "Adagrad", "RowwiseAdagrad"])
def test_update_same_bits_for_1_and_2_threads(kind):
    for dtype, rounding in (("bfloat16", "stochastic"), ("float16", "nearest")):
        one, slot_one, _ = _run(kind, dtype, rounding, 64, 1)
        two, slot_two, _ = _run(kind, dtype, rounding, 64, 2)
        assert (one == two).all()
        if slot_one is not None:
            assert (slot_one.view(np.uint32) == slot_two.view(np.uint32)).all()
