"""Dense Adam updates several variables per kernel call
(``kernels.multi.adam_apply_dense_multi``): against the float64 NumPy rule,
and bit for bit against one ``lazy_adam_apply_serial`` call a variable."""
import numpy as np
import pytest

from sparse_train import RowSparseGrad, Variable, optim
from sparse_train.kernels.adam import lazy_adam_apply_serial
from sparse_train.kernels.multi import MAX_VARIABLES, adam_apply_dense_multi
from sparse_train.sparse import GradPlan, identity_plan_parts

SHAPES = [(7, 5), (5,), (3, 1), (1,), (0, 4), (16, 3), (2, 2, 3), (40,), (6, 64), (9,), ()]


def _start(rng, shape):
    weight = rng.standard_normal(shape).astype(np.float32)
    grad = rng.standard_normal(shape).astype(np.float32)
    if grad.size:  # the signed zeros that `0 + g` tells apart
        grad.reshape(-1)[0] = -0.0
        grad.reshape(-1)[-1] = 0.0
    return weight, grad


def _numpy_adam(w, m, v, g, lr_t, beta1, beta2, epsilon):
    """The rule in float64 (SPEC: Adam)."""
    m = beta1 * m + (1 - beta1) * g
    v = beta2 * v + (1 - beta2) * g * g
    return w - lr_t * m / (np.sqrt(v) + epsilon), m, v


def test_kernel_matches_float64_numpy():
    rng = np.random.default_rng(0)
    shapes = [(7, 5), (5,), (0,), (33,), (4, 4)]
    start = [_start(rng, s) for s in shapes]
    state = [[w.reshape(-1).copy(), np.zeros(w.size, np.float32), np.zeros(w.size, np.float32)]
             for w, _ in start]
    expected = [[w.reshape(-1).astype(np.float64), np.zeros(w.size), np.zeros(w.size)]
                for w, _ in start]
    lr, beta1, beta2, epsilon = 0.01, 0.9, 0.999, 1e-8
    empty = np.empty(0, np.float32)
    for step in range(1, 4):
        lr_t = lr * np.sqrt(1 - beta2 ** step) / (1 - beta1 ** step)
        grads = [(g * step).reshape(-1) for _, g in start]
        pad = (empty,) * (MAX_VARIABLES - len(shapes))
        flags = np.full(MAX_VARIABLES, 7, np.uint32)
        adam_apply_dense_multi(flags, *(tuple(s[k] for s in state) + pad for k in range(3)),
                               tuple(grads) + pad, np.float32(lr_t), np.float32(beta1),
                               np.float32(beta2), np.float32(epsilon))
        assert flags.tolist() == [0] * MAX_VARIABLES  # all finite
        expected = [_numpy_adam(*e, g.astype(np.float64), lr_t, beta1, beta2, epsilon)
                    for e, g in zip(expected, grads)]
    for got, want in zip(state, expected):
        for a, b in zip(got, want):
            np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)  # float32 steps of |w| ~ 2
    assert state[0][0][1] != start[0][0].reshape(-1)[1]  # it moved


def _per_variable(weights, grads, steps, lr, beta1, beta2, epsilon):
    """One ``lazy_adam_apply_serial`` call a variable (the path before the
    multi kernel), on the identity plan of each dense gradient."""
    state = [[w.copy(), np.zeros(w.shape, np.float32), np.zeros(w.shape, np.float32)]
             for w in weights]
    opt = optim.Adam(lr, beta1, beta2, epsilon)
    for step in range(steps):
        scalars = opt._scalars()
        for (w, m, v), g in zip(state, grads):
            rows = w.shape[0] if w.ndim else 1
            width = w.size // rows if rows else 1
            view = lambda a: a.reshape(rows, width)  # noqa: E731
            src = view(np.ascontiguousarray(g * np.float32(step + 1)))
            plan = GradPlan(*identity_plan_parts(rows), src, np.float32(1.0))
            lazy_adam_apply_serial(view(w), view(m), view(v), plan, *scalars, width)
        opt._finish()
    return state


@pytest.mark.parametrize("rule", [optim.Adam, optim.LazyAdam])
def test_optimizer_is_the_per_variable_path_bit_for_bit(rule):
    """11 variables (two kernel calls: 8 + 3), with signed zeros in the
    gradients, over 3 steps; and a sparse gradient in the same call still
    takes its own kernel."""
    rng = np.random.default_rng(1)
    start = [_start(rng, s) for s in SHAPES]
    assert len(start) > MAX_VARIABLES
    expected = _per_variable([w for w, _ in start], [g for _, g in start], 3,
                             0.01, 0.9, 0.999, 1e-8)
    variables = [Variable(w.copy(), f"w{i}") for i, (w, _) in enumerate(start)]
    table = rng.standard_normal((20, 4)).astype(np.float32)
    tables = [Variable(table.copy(), "table"), Variable(table.copy(), "table")]
    sparse = RowSparseGrad([3, 7, 3], rng.standard_normal((3, 4)).astype(np.float32), (20, 4))
    opt, alone = rule(0.01, 0.9, 0.999, 1e-8), rule(0.01, 0.9, 0.999, 1e-8)
    for step in range(3):
        opt.apply_gradients([(g * np.float32(step + 1), var)
                             for (_, g), var in zip(start, variables)] + [(sparse, tables[0])])
        alone.apply_gradients([(sparse, tables[1])])
    np.testing.assert_array_equal(tables[0].value, tables[1].value)
    assert not np.array_equal(tables[0].value, table)
    for var, (w, m, v) in zip(variables, expected):
        np.testing.assert_array_equal(var.value, w, err_msg=var.name)
        np.testing.assert_array_equal(opt.get_slot(var, "m").value, m, err_msg=var.name)
        np.testing.assert_array_equal(opt.get_slot(var, "v").value, v, err_msg=var.name)
        # signed zeros too
        np.testing.assert_array_equal(np.signbit(opt.get_slot(var, "m").value),
                                      np.signbit(m), err_msg=var.name)
    moved = [not np.array_equal(var.value, w) for var, (w, _) in zip(variables, start)
             if w.size > 1]
    assert all(moved)
