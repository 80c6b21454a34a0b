"""``training.l2_regularize`` (L2 on the unique touched rows and dense
kernels) and ``check_finite_state`` (a step that overflows stops, naming the
variable or slot)."""
import numpy as np
import pytest

from sparse_train import GlobalStep, RowSparseGrad, Variable, optim
from sparse_train.training import NonFiniteError, l2_regularize, train_step


def _penalty64(table, rows, l2):
    """0.5 * l2 * sum over the unique rows of ||w||^2, float64."""
    w = table.astype(np.float64)
    return 0.5 * l2 * sum(float(w[r] @ w[r]) for r in np.unique(rows))


def test_sparse_l2_adds_l2_w_once_per_unique_row_against_float64():
    rng = np.random.default_rng(3)
    table = Variable(rng.normal(size=(7, 3)).astype(np.float32), "emb/weight")
    ids = np.array([5, 1, 5, 5, 0])
    values = rng.normal(size=(5, 3)).astype(np.float32)
    (out, var), = l2_regularize([(RowSparseGrad(ids, values, (7, 3)), table)],
                                l2_embedding=0.25, sparse_variables=[table])
    assert var is table
    expected = {r: values[ids == r].astype(np.float64).sum(0) + 0.25 * table.value[r]
                for r in np.unique(ids)}
    assert out.indices.tolist() == [0, 1, 5]
    np.testing.assert_allclose(out.values, np.stack([expected[r] for r in (0, 1, 5)]),
                               rtol=1e-6, atol=1e-6)


def test_l2_term_is_the_gradient_of_the_penalty_by_finite_differences():
    rng = np.random.default_rng(4)
    w = rng.normal(size=(6, 2)).astype(np.float32)
    table = Variable(w.copy(), "t")
    ids = np.array([4, 2, 4])
    zero = RowSparseGrad(ids, np.zeros((3, 2), np.float32), (6, 2))
    (out, _), = l2_regularize([(zero, table)], l2_embedding=0.3, sparse_variables=[table])
    dense = out.to_dense().astype(np.float64)
    eps = 1e-4
    for r in range(6):
        for c in range(2):
            plus, minus = w.astype(np.float64), w.astype(np.float64)
            plus[r, c] += eps
            minus[r, c] -= eps
            fd = (_penalty64(plus, ids, 0.3) - _penalty64(minus, ids, 0.3)) / (2 * eps)
            assert dense[r, c] == pytest.approx(fd, abs=1e-5), (r, c)
    assert not dense[[0, 1, 3, 5]].any()   # untouched rows: no penalty, never read


def test_dense_l2_on_kernels_not_biases_and_zero_changes_nothing():
    kernel, bias = Variable(np.full((2, 2), 2.0), "mlp/kernel"), Variable(np.ones(2), "mlp/bias")
    grads = [(np.ones((2, 2), np.float32), kernel), (np.ones(2, np.float32), bias)]
    out = l2_regularize(grads, l2_dense=0.5)
    np.testing.assert_array_equal(out[0][0], 1.0 + 0.5 * 2.0)
    np.testing.assert_array_equal(out[1][0], 1.0)
    same = l2_regularize(grads)
    assert all(a[0] is b[0] for a, b in zip(same, grads))
    with pytest.raises(ValueError, match="l2_dense must be a finite number >= 0"):
        l2_regularize(grads, l2_dense=-1)


class _Linear:
    """A stub model: one table, one dense kernel; the loss's gradients are given."""

    def __init__(self, grads):
        self.table = Variable(np.arange(8, dtype=np.float32).reshape(4, 2), "m/emb")
        self.kernel = Variable(np.ones((2, 1), np.float32), "m/kernel")
        self.grads = grads

    def sparse_variables(self):
        return [self.table]

    def loss_and_gradients(self, batch):
        table_grad, kernel_grad = self.grads
        return 1.0, [(table_grad, self.table), (kernel_grad, self.kernel)]


def test_train_step_applies_l2_before_the_update_with_sgd():
    g = RowSparseGrad([1, 3, 1], np.ones((3, 2), np.float32), (4, 2))
    model = _Linear((g, np.zeros((2, 1), np.float32)))
    before = model.table.value.astype(np.float64).copy()
    train_step(model, None, optim.GradientDescent(0.1), optim.GradientDescent(0.1), GlobalStep(),
               l2_embedding=0.5, l2_dense=0.2)
    expected = before.copy()
    expected[1] -= 0.1 * (2.0 + 0.5 * before[1])           # row 1 summed twice, penalised once
    expected[3] -= 0.1 * (1.0 + 0.5 * before[3])
    np.testing.assert_allclose(model.table.value, expected, rtol=1e-6)
    np.testing.assert_allclose(model.kernel.value, 1.0 - 0.1 * 0.2 * 1.0, rtol=1e-6)


def test_a_step_that_overflows_an_adam_slot_stops_naming_it():
    # g = 1e30 is finite, g * g is not: Adam's v of rows 0 and 2 becomes inf
    g = RowSparseGrad([2, 0], np.full((2, 2), 1e30, np.float32), (4, 2))
    model = _Linear((g, np.zeros((2, 1), np.float32)))
    step = GlobalStep()
    with pytest.raises(NonFiniteError, match=r"after step 1: m/emb \(slot 'v'.*"
                       r"holds inf \(row 0\)") as error:
        train_step(model, None, optim.LazyAdam(0.1, name="sparse"),
                   optim.GradientDescent(0.1), step)
    assert error.value.global_step == 1 and "slot 'v'" in error.value.variable


def test_finite_steps_pass_the_check():
    g = RowSparseGrad([2, 0], np.ones((2, 2), np.float32), (4, 2))
    model = _Linear((g, np.ones((2, 1), np.float32)))
    assert train_step(model, None, optim.Adam(0.1), optim.Adam(0.1), GlobalStep()) == 1.0
