"""``Optimizer.prepare_gradients`` / ``apply_prepared`` and
``training.apply_groups``: validate every group, then apply; one step."""
import numpy as np
import pytest

from sparse_train import GlobalStep, RowSparseGrad, Variable, optim
from sparse_train.training import apply_groups


def test_two_phases_equal_apply_gradients():
    # Adagrad from a zero accumulator, one step: w - lr * g / sqrt(g^2) = w - lr sign(g)
    a, b = Variable(np.ones((3, 2)), "a"), Variable(np.ones((3, 2)), "b")
    grad = RowSparseGrad([2, 0, 2], np.array([[1, -2], [3, 4], [1, 1]], np.float32), (3, 2))
    one, two = optim.Adagrad(0.5, initial_accumulator_value=0.0, epsilon=1e-30), \
        optim.Adagrad(0.5, initial_accumulator_value=0.0, epsilon=1e-30)
    one.apply_gradients([(grad, a)])
    prepared = two.prepare_gradients([(grad, b)])
    np.testing.assert_array_equal(b.value, 1.0)            # nothing applied yet
    two.apply_prepared(prepared)
    np.testing.assert_array_equal(a.value, b.value)
    np.testing.assert_allclose(b.value, [[0.5, 0.5], [1.0, 1.0], [0.5, 1.5]])


def test_apply_prepared_refuses_another_optimizers_preparation():
    var = Variable(np.ones((2, 1)), "w")
    prepared = optim.GradientDescent(0.1).prepare_gradients([(np.ones((2, 1)), var)])
    with pytest.raises(ValueError, match="apply_prepared takes what this optimizer"):
        optim.GradientDescent(0.1).apply_prepared(prepared)
    np.testing.assert_array_equal(var.value, 1.0)


def test_check_global_step_is_a_no_op_by_default_and_adagrad_decay_refuses_another():
    optim.Adam(0.1).check_global_step(GlobalStep())        # any counter will do
    mine = GlobalStep()
    with pytest.raises(ValueError, match="another counter"):
        optim.AdagradDecay(0.1, mine).check_global_step(GlobalStep())


def test_apply_groups_validates_every_group_first_and_steps_once():
    table, dense = Variable(np.ones((3, 2)), "t"), Variable(np.ones(2), "d")
    sgd, gs = optim.GradientDescent(1.0), GlobalStep()
    bad = np.array([np.nan, 1.0], np.float32)
    with pytest.raises(ValueError, match="non-finite gradient for variable 'd'"):
        apply_groups([(sgd, [(RowSparseGrad([1], [[1.0, 1.0]], (3, 2)), table)]),
                      (optim.GradientDescent(1.0), [(bad, dense)])], gs)
    np.testing.assert_array_equal(table.value, 1.0)       # the tables were not touched
    assert int(gs) == 0
    apply_groups([(sgd, [(RowSparseGrad([1], [[1.0, 1.0]], (3, 2)), table)]),
                  (optim.GradientDescent(0.5), [(np.ones(2, np.float32), dense)])], gs)
    assert int(gs) == 1
    np.testing.assert_array_equal(table.value, [[1, 1], [0, 0], [1, 1]])
    np.testing.assert_array_equal(dense.value, [0.5, 0.5])
