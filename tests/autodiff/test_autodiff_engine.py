"""The tape: graph walking, per-Variable gradients, compute_gradients."""
import numpy as np
import pytest

from sparse_train import GlobalStep, Variable, optim
from sparse_train import autodiff as ad
from sparse_train.autodiff import Tensor


def test_leaf_used_many_times_sums_contributions():
    x = Tensor(np.array([3.0], np.float32), requires_grad=True)
    y = x * x * x + x * 2.0  # d/dx = 3x^2 + 2 = 29
    assert ad.gradients(y, [x])[0].tolist() == [29.0]


def test_deep_chain_does_not_recurse():
    x = Tensor(np.array([1.0], np.float32), requires_grad=True)
    y = x
    for _ in range(5000):
        y = y + 0.0
    assert ad.gradients(y, [x])[0].tolist() == [1.0]


def test_non_scalar_loss_is_summed():
    x = Tensor(np.arange(3, dtype=np.float32), requires_grad=True)
    assert ad.gradients(x * 2.0, [x])[0].tolist() == [2.0, 2.0, 2.0]


def test_gradient_of_an_intermediate_tensor():
    x = Tensor(np.array([1.0, 2.0], np.float32), requires_grad=True)
    h = x * 3.0
    y = (h * h).sum()
    gh, gx = ad.gradients(y, [h, x])
    assert gh.tolist() == [6.0, 12.0] and gx.tolist() == [18.0, 36.0]


def test_unreached_and_constant_inputs_get_none():
    x = Tensor(np.ones(2, np.float32), requires_grad=True)
    c = Tensor(np.ones(2, np.float32))
    z = Tensor(np.ones(2, np.float32), requires_grad=True)
    assert ad.gradients((x * c).sum(), [x, c, z])[1:] == [None, None]


def test_compute_gradients_default_var_list_and_order():
    a = Variable(np.ones((2, 2), np.float32), "a")
    b = Variable(np.ones(2, np.float32), "b")
    frozen = Variable(np.ones(2, np.float32), "frozen", trainable=False)
    unused = Variable(np.ones(2, np.float32), "unused")
    x = Tensor(np.array([[1.0, 2.0]], np.float32))
    loss = ad.bias_add(ad.matmul(x, Tensor(a)), Tensor(b)) * Tensor(frozen)
    pairs = ad.compute_gradients(loss.sum())
    assert [v.name for _, v in pairs] == ["a", "b"]  # first use order, trainable only
    np.testing.assert_array_equal(pairs[0][0], [[1.0, 1.0], [2.0, 2.0]])
    np.testing.assert_array_equal(pairs[1][0], [1.0, 1.0])
    pairs = ad.compute_gradients(loss.sum(), [unused, frozen, b])
    assert pairs[0] == (None, unused)
    np.testing.assert_array_equal(pairs[1][0], [4.0, 4.0])  # (x @ a + b) = [4, 4]
    assert all(g.dtype == np.float32 for g, _ in pairs[1:])


def test_scalar_variable_gradient_keeps_its_shape():
    s = Variable(np.float32(2.0), "scale")
    x = Tensor(np.array([1.0, 2.0, 3.0], np.float32))
    (grad,) = ad.gradients((x * Tensor(s)).sum(), [s])
    assert grad.shape == () and float(grad) == 6.0


def test_gradients_are_writeable_arrays():
    x = Tensor(np.ones((2, 3), np.float32), requires_grad=True)
    (grad,) = ad.gradients(x.sum(), [x])  # the sum backward broadcasts
    grad *= 2.0
    assert grad.flags.c_contiguous and grad.tolist() == [[2.0] * 3] * 2


def test_no_grad_records_nothing():
    v = Variable(np.ones(2, np.float32), "v")
    with ad.no_grad():
        y = Tensor(v) * 2.0
        assert not ad.is_grad_enabled()
    assert ad.is_grad_enabled()
    assert not y.requires_grad and y.is_leaf
    assert ad.compute_gradients(y.sum()) == []


def test_bad_arguments():
    with pytest.raises(TypeError, match="loss must be a Tensor"):
        ad.compute_gradients(np.ones(2))
    x = Tensor(np.ones(2, np.float32), requires_grad=True)
    with pytest.raises(TypeError, match="Variables"):
        ad.compute_gradients(x.sum(), [x])
    with pytest.raises(TypeError, match="Variables or Tensors"):
        ad.gradients(x.sum(), ["x"])


def test_optimizer_minimize_uses_the_tape():
    w = Variable(np.array([1.0, -2.0], np.float32), "w")
    gs = GlobalStep()
    loss = ad.mean_squared_error(Tensor(w), np.zeros(2, np.float32))  # grad = w
    optim.GradientDescent(0.5).minimize(loss, global_step=gs)
    np.testing.assert_allclose(w.value, [0.5, -1.0])
    assert int(gs) == 1


def test_tensor_reached_by_paths_of_different_lengths():
    """Regression: e feeds the stack directly and through e * 2, so e must be
    finished after both paths (a DFS marking nodes when pushed got this wrong)."""
    e = Tensor(np.array([[1.0, 2.0]], np.float32), requires_grad=True)
    z = Tensor(np.array([[3.0, -1.0]], np.float32), requires_grad=True)
    pairs = ad.dot_interaction(ad.stack([z, e, e * 2.0], axis=1))
    # pairs = (z.e, 2 z.e, 2 e.e): d/de = 3 z + 4 e, d/dz = 3 e
    ge, gz = ad.gradients(pairs.sum(), [e, z])
    np.testing.assert_allclose(ge, [[3 * 3.0 + 4 * 1.0, 3 * -1.0 + 4 * 2.0]])
    np.testing.assert_allclose(gz, [[3 * 1.0, 3 * 2.0]])
