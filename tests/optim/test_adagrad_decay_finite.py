"""``kernels.adagrad_decay_finite``: the update of
``adagrad_decay.adagrad_decay_apply`` bit for bit (at 1 and 2 threads),
the float64 reference rule, and a flag on each chunk of rows it leaves
non-finite; a train step then names the bad table or slot as the full
check does."""
import numba
import numpy as np
import pytest

from reference import adagrad_decay as reference_adagrad_decay
from sparse_train import GlobalStep, RowSparseGrad, Variable, optim
from sparse_train.kernels._jit import row_dim
from sparse_train.kernels.adagrad_decay import adagrad_decay_apply
from sparse_train.kernels.adagrad_decay_finite import FLAG_ROWS, adagrad_decay_apply_finite
from sparse_train.training import NonFiniteError, train_step

TWO_THREADS = numba.config.NUMBA_NUM_THREADS >= 2
SCALARS = (np.float32(0.3), np.float32(0.1), np.float32(0.9), np.int64(7), np.int64(3))


def _problem(num_rows, dim, seed):
    rng = np.random.default_rng(seed)
    ids = rng.integers(0, num_rows, 3 * num_rows).astype(np.int64)
    values = rng.standard_normal((ids.shape[0], dim)).astype(np.float32)
    weight = rng.standard_normal((num_rows, dim)).astype(np.float32)
    accumulator = np.full((num_rows, dim), 0.1, np.float32)
    power = rng.integers(0, 3, num_rows).astype(np.int64)
    return ids, values, weight, accumulator, power


def _run(kernel, problem, threads, flags=None):
    ids, values, weight, accumulator, power = (a.copy() for a in problem)
    plan = RowSparseGrad(ids, values, weight.shape).plan()
    numba.set_num_threads(threads)
    try:
        extra = () if flags is None else (flags,)
        kernel(*extra, weight, accumulator, power, plan, *SCALARS, row_dim(weight.shape[1]))
    finally:
        numba.set_num_threads(numba.config.NUMBA_NUM_THREADS)
    return weight, accumulator, power


@pytest.mark.parametrize("num_rows, dim", [(300, 16), (1000, 1), (150, 64), (70, 5)])
def test_same_bits_as_the_plain_kernel_and_the_float64_rule(num_rows, dim):
    problem = _problem(num_rows, dim, seed=dim)
    plain = _run(adagrad_decay_apply, problem, 1)
    for threads in (1, 2) if TWO_THREADS else (1,):
        flags = np.full(-(-len(np.unique(problem[0])) // FLAG_ROWS), 9, np.uint32)
        got = _run(adagrad_decay_apply_finite, problem, threads, flags)
        assert not flags.any()
        for a, b in zip(got, plain):
            assert np.array_equal(a.view(np.uint8), b.view(np.uint8))
    ids, values, weight, accumulator, power = problem
    want = reference_adagrad_decay(weight, accumulator, power, ids, values, 0.3, 6, 0.1, 3, 0.9)
    for a, b in zip(plain, want):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


def test_flags_the_chunk_of_a_row_left_non_finite():
    problem = _problem(500, 16, seed=4)
    ids, values = problem[0], problem[1]
    rows = np.unique(ids)
    bad_row = rows[150]                                     # unique row 150: chunk 150 // 64
    values[np.flatnonzero(ids == bad_row)[0], 3] = 1e30   # g * g overflows the accumulator
    flags = np.zeros(-(-rows.shape[0] // FLAG_ROWS), np.uint32)
    weight, accumulator, _ = _run(adagrad_decay_apply_finite, problem, 1, flags)
    assert [bool(f) for f in flags] == [c == 150 // FLAG_ROWS for c in range(flags.shape[0])]
    assert np.isinf(accumulator[bad_row, 3])
    assert np.isfinite(np.delete(accumulator, bad_row, axis=0)).all()


class _Table:
    """A stub model: one table on AdagradDecay; its gradient is given."""

    def __init__(self, grad):
        self.table = Variable(np.ones((4, 2), np.float32), "t/emb")
        self.grad = grad

    def sparse_variables(self):
        return [self.table]

    def loss_and_gradients(self, batch):
        return 1.0, [(self.grad, self.table)]


@pytest.mark.parametrize("verify", [True, False])
def test_an_overflowing_table_step_names_the_accumulator(verify, monkeypatch):
    if not verify:  # the check gathering every touched row, as before the flags
        monkeypatch.setattr(optim.AdagradDecay, "verified_finite",
                            lambda self, updates: frozenset())
    grad = RowSparseGrad([2, 0], np.array([[1.0, 1.0], [1e30, 1.0]], np.float32), (4, 2))
    step = GlobalStep()
    with pytest.raises(NonFiniteError, match=r"after step 1: t/emb \(slot 'accumulator' of "
                       r"optimizer 'AdagradDecay'\) holds inf \(row 0\)") as error:
        train_step(_Table(grad), None, optim.AdagradDecay(0.1, step), None, step)
    assert error.value.variable == "t/emb (slot 'accumulator' of optimizer 'AdagradDecay')"


def test_a_finite_table_step_is_verified_by_its_kernel():
    grad = RowSparseGrad([2, 0, 2], np.ones((3, 2), np.float32), (4, 2))
    model, step = _Table(grad), GlobalStep()
    opt = optim.AdagradDecay(0.1, step)
    before = model.table.value.copy()
    train_step(model, None, opt, None, step)
    assert opt.verified_finite(opt._verified_finite[0]) == {id(model.table)}
    np.testing.assert_allclose(model.table.value[[1, 3]], before[[1, 3]])
    assert not np.array_equal(model.table.value[[0, 2]], before[[0, 2]])
