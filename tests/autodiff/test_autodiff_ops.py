"""Every math op against central finite differences, in float64."""
import numpy as np
import pytest

from sparse_train import autodiff as ad
from sparse_train.autodiff import Tensor

from _gradcheck import check_op

rng = np.random.default_rng(1234)


def randn(*shape):
    return rng.standard_normal(shape)


def away_from_zero(*shape):
    """Values with |x| >= 0.1, so a relu kink is never within eps."""
    x = randn(*shape)
    return np.sign(x) * (np.abs(x) + 0.1)


@pytest.mark.parametrize("shapes", [((3, 4), (3, 4)), ((3, 4), (4,)), ((3, 1), (1, 4)),
                                    ((2, 3, 4), (3, 1)), ((3,), ())])
def test_add_sub_mul_broadcast(shapes):
    a, b = randn(*shapes[0]), randn(*shapes[1])
    out = check_op(ad.add, a, b)
    np.testing.assert_allclose(out.data, a + b)
    out = check_op(ad.sub, a, b)
    np.testing.assert_allclose(out.data, a - b)
    out = check_op(ad.mul, a, b)
    np.testing.assert_allclose(out.data, a * b)


def test_operators_and_constants():
    a = randn(3, 2)
    out = check_op(lambda x: (2.0 - x) * x + 1.0 - (-x) * 3.0, a)
    np.testing.assert_allclose(out.data, (2.0 - a) * a + 1.0 + a * 3.0)


@pytest.mark.parametrize("shapes", [((3, 4), (4, 2)), ((2, 3, 4), (2, 4, 5)), ((2, 3, 4), (4, 5)),
                                    ((3, 4), (2, 4, 5))])
def test_matmul(shapes):
    a, b = randn(*shapes[0]), randn(*shapes[1])
    out = check_op(ad.matmul, a, b)
    np.testing.assert_allclose(out.data, a @ b)


def test_matmul_rejects_vectors():
    with pytest.raises(ValueError, match="2 or more dims"):
        ad.matmul(Tensor(np.ones(3)), Tensor(np.ones((3, 2))))


def test_bias_add():
    x, b = randn(2, 3, 4), randn(4)
    out = check_op(ad.bias_add, x, b)
    np.testing.assert_allclose(out.data, x + b)
    with pytest.raises(ValueError, match="bias"):
        ad.bias_add(Tensor(x), Tensor(randn(3)))


def test_linear_with_and_without_bias():
    x, w, b = randn(5, 3), randn(3, 2), randn(2)
    out = check_op(ad.linear, x, w, b)
    np.testing.assert_allclose(out.data, x @ w + b)
    out = check_op(ad.linear, x, w)
    np.testing.assert_allclose(out.data, x @ w)


def test_relu():
    x = away_from_zero(4, 5)
    out = check_op(ad.relu, x)
    np.testing.assert_allclose(out.data, np.maximum(x, 0))


def test_relu_gradient_at_zero_is_zero():
    x = Tensor(np.zeros(3, np.float32), requires_grad=True)
    assert ad.gradients(ad.relu(x).sum(), [x])[0].tolist() == [0.0, 0.0, 0.0]


def test_sigmoid_tanh_square():
    x = randn(3, 4) * 2
    np.testing.assert_allclose(check_op(ad.sigmoid, x).data, 1 / (1 + np.exp(-x)))
    np.testing.assert_allclose(check_op(ad.tanh, x).data, np.tanh(x))
    np.testing.assert_allclose(check_op(ad.square, x).data, x * x)


def test_sigmoid_is_stable_for_large_inputs():
    x = Tensor(np.array([-1000.0, -50.0, 0.0, 50.0, 1000.0], np.float32), requires_grad=True)
    with np.errstate(over="raise", invalid="raise", divide="raise"):
        y = ad.sigmoid(x)
        (g,) = ad.gradients(y.sum(), [x])
    assert y.dtype == np.float32
    np.testing.assert_allclose(y.data, [0.0, 1.9287498e-22, 0.5, 1.0, 1.0], rtol=1e-6)
    np.testing.assert_allclose(g, [0.0, 1.9287498e-22, 0.25, 0.0, 0.0], rtol=1e-6)


@pytest.mark.parametrize("axis", [0, 1, -1])
def test_concat(axis):
    a, b, c = randn(2, 3), randn(2, 3), randn(2, 3)
    out = check_op(lambda *t: ad.concat(t, axis=axis), a, b, c)
    np.testing.assert_allclose(out.data, np.concatenate([a, b, c], axis=axis))


@pytest.mark.parametrize("axis", [0, 1, 2])
def test_stack(axis):
    a, b = randn(2, 3), randn(2, 3)
    out = check_op(lambda *t: ad.stack(t, axis=axis), a, b)
    np.testing.assert_allclose(out.data, np.stack([a, b], axis=axis))


def test_reshape():
    x = randn(2, 6)
    out = check_op(lambda t: ad.reshape(t, (3, -1)), x)
    np.testing.assert_allclose(out.data, x.reshape(3, 4))
    out = check_op(lambda t: t.reshape(12), x)
    assert out.shape == (12,)


@pytest.mark.parametrize("axis,keepdims", [(None, False), (0, False), (1, True), ((0, 2), False),
                                           (-1, False)])
def test_sum_and_mean(axis, keepdims):
    x = randn(2, 3, 4)
    out = check_op(lambda t: ad.reduce_sum(t, axis, keepdims), x)
    np.testing.assert_allclose(out.data, x.sum(axis=axis, keepdims=keepdims))
    out = check_op(lambda t: ad.reduce_mean(t, axis, keepdims), x)
    np.testing.assert_allclose(out.data, x.mean(axis=axis, keepdims=keepdims))


@pytest.mark.parametrize("reduce_sum", [True, False])
def test_fm_interaction(reduce_sum):
    x = randn(3, 4, 5)
    out = check_op(lambda t: ad.fm_interaction(t, reduce_sum), x)
    # reference: the sum over pairs f < f' of elementwise products
    pairs = sum(x[:, i] * x[:, j] for i in range(4) for j in range(i + 1, 4))
    np.testing.assert_allclose(out.data, pairs.sum(axis=1) if reduce_sum else pairs, rtol=1e-12)


@pytest.mark.parametrize("self_interaction", [False, True])
def test_dot_interaction(self_interaction):
    x = randn(3, 4, 5)
    out = check_op(lambda t: ad.dot_interaction(t, self_interaction), x)
    start = 0 if self_interaction else 1
    expected = [[x[b, i] @ x[b, j] for i in range(4) for j in range(i + start, 4)]
                for b in range(3)]
    np.testing.assert_allclose(out.data, expected, rtol=1e-12)


def test_interactions_reject_bad_rank():
    for op in (ad.fm_interaction, ad.dot_interaction):
        with pytest.raises(ValueError, match=r"\[B, F, D\]"):
            op(Tensor(np.ones((2, 3))))


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_sigmoid_cross_entropy_with_logits(reduction):
    x = randn(6) * 3
    z = rng.uniform(0, 1, 6)
    out = check_op(lambda t: ad.sigmoid_cross_entropy_with_logits(t, z, reduction), x)
    p = 1 / (1 + np.exp(-x))
    reference = -(z * np.log(p) + (1 - z) * np.log(1 - p))
    expected = {"mean": reference.mean(), "sum": reference.sum(), "none": reference}[reduction]
    np.testing.assert_allclose(out.data, expected, rtol=1e-10)


def test_sigmoid_cross_entropy_is_stable_and_float32():
    x = Tensor(np.array([-200.0, 200.0, -200.0, 200.0], np.float32), requires_grad=True)
    with np.errstate(over="raise", invalid="raise", divide="raise"):
        loss = ad.sigmoid_cross_entropy_with_logits(x, [0.0, 1.0, 1.0, 0.0])
        (g,) = ad.gradients(loss, [x])
    assert loss.dtype == np.float32 and g.dtype == np.float32
    np.testing.assert_allclose(loss.data, 100.0)  # (0 + 0 + 200 + 200) / 4
    np.testing.assert_allclose(g, [0.0, 0.0, -0.25, 0.25])
    with pytest.raises(ValueError, match="labels shape"):
        ad.sigmoid_cross_entropy_with_logits(x, [1.0])
    with pytest.raises(ValueError, match="reduction"):
        ad.sigmoid_cross_entropy_with_logits(x, np.ones(4), "max")


def test_mean_squared_error():
    p, t = randn(3, 2), randn(3, 2)
    out = check_op(ad.mean_squared_error, p, t)
    np.testing.assert_allclose(out.data, np.mean((p - t) ** 2))
    out = check_op(lambda a: ad.mean_squared_error(a, t, "none"), p)
    np.testing.assert_allclose(out.data, (p - t) ** 2)


def test_composite_graph_with_reuse():
    """A diamond graph: x feeds two branches that meet again."""
    x, w = randn(4, 3), randn(3, 3)

    def fn(x, w):
        h = ad.tanh(ad.matmul(x, w))
        return ad.concat([h * x, ad.sigmoid(h) - x], axis=1).mean(axis=1)
    check_op(fn, x, w)


def test_float32_stays_float32():
    x = Tensor(np.ones((2, 3), np.float32), requires_grad=True)
    w = Tensor(np.ones((3, 4), np.float32), requires_grad=True)
    y = ad.relu(ad.linear(x * 0.5 + 1.0, w, np.zeros(4, np.float32))).mean(axis=0)
    y = ad.fm_interaction(ad.stack([y, y], axis=1).reshape(4, 2, 1)).sum()
    grads = ad.gradients(y, [x, w])
    assert y.dtype == np.float32
    assert all(g.dtype == np.float32 for g in grads)


@pytest.mark.parametrize("axis,index", [(1, 2), (0, 0), (-1, 1)])
def test_select(axis, index):
    # EmbeddingBagCollection.__call__ splits its [B, F, D] stack with select.
    x = randn(3, 4, 2)
    out = check_op(lambda t: ad.select(t, index, axis=axis), x)
    np.testing.assert_allclose(out.data, np.take(x, index, axis=axis))


def test_neg_and_linear_relu():
    local = np.random.default_rng(7)   # not the module rng: runs alone (-k) alike
    x = local.standard_normal((3, 2))
    np.testing.assert_allclose(check_op(ad.neg, x).data, -x)
    x, w, b = (local.standard_normal(s) for s in ((6, 2), (2, 4), (4,)))
    pre = x @ w + b
    assert (pre > 0).any() and (pre < 0).any() and np.abs(pre).min() > 1e-3  # no kink within eps
    out = check_op(lambda *t: ad.linear(*t, activation="relu"), x, w, b)
    np.testing.assert_allclose(out.data, np.maximum(pre, 0))


def test_non_finite_labels_are_refused_naming_the_position():
    x = Tensor(np.zeros(3, np.float32), requires_grad=True)
    with pytest.raises(ValueError, match="label nan at flat position 1 is not finite"):
        ad.sigmoid_cross_entropy_with_logits(x, [1.0, np.nan, 0.0])
    with pytest.raises(ValueError, match="label inf at flat position 2"):
        ad.sigmoid_cross_entropy_with_logits(x, [1.0, 0.0, np.inf])


@pytest.mark.parametrize("axis", [0, 1, -1])
def test_concat_backward_splits_unequal_parts_as_np_split(axis):
    parts = [randn(3, 2), randn(3, 1), randn(3, 4)] if axis else [randn(2, 3), randn(1, 3)]
    tensors = [ad.Tensor(p, requires_grad=True) for p in parts]
    g = np.arange(np.concatenate(parts, axis=axis).size, dtype=np.float64).reshape(
        np.concatenate(parts, axis=axis).shape)
    grads = ad.gradients((ad.concat(tensors, axis=axis) * ad.Tensor(g)).sum(), tensors)
    bounds = np.cumsum([p.shape[axis] for p in parts])[:-1]
    for got, want in zip(grads, np.split(g, bounds, axis=axis)):
        np.testing.assert_array_equal(got, want)
