"""The embedding-bag op: forward, row-sparse backward, shared tables."""
import numpy as np
import pytest

from sparse_train import RowSparseGrad, Variable
from sparse_train import autodiff as ad
from sparse_train import functional as F
from sparse_train.autodiff import Tensor

V, D = 7, 3
VALUES = np.array([1, 4, 1, 0, 6, 2, 2, 2], np.int64)
OFFSETS = np.array([0, 3, 3, 5, 8], np.int64)  # bag 1 is empty
WEIGHTS = np.array([0.5, 2.0, 1.5, 1.0, -0.5, 1.0, 2.0, 0.25], np.float32)


def table(seed=0):
    return Variable(np.random.default_rng(seed).standard_normal((V, D)).astype(np.float32), "t")


def numeric_table_grad(var, fn, weights, eps=1e-6):
    """Central differences of sum(fn(w) * weights) over every entry of a
    float64 copy of the table (the op runs its float64 path)."""
    w64 = var.value.astype(np.float64)
    grad = np.zeros_like(w64)
    for index in np.ndindex(*w64.shape):
        saved = w64[index]
        results = []
        for step in (eps, -eps):
            w64[index] = saved + step
            results.append(float(np.sum(fn(Tensor(w64)).data * weights)))
        w64[index] = saved
        grad[index] = (results[0] - results[1]) / (2 * eps)
    return grad


@pytest.mark.parametrize("combiner", ["sum", "mean", "sqrtn"])
@pytest.mark.parametrize("weighted", [False, True])
@pytest.mark.parametrize("padding_idx", [None, 2])
def test_embedding_bag_against_finite_differences(combiner, weighted, padding_idx):
    var = table()
    w = WEIGHTS if weighted else None

    def fn(weight):
        return ad.embedding_bag(weight, VALUES, OFFSETS, w, combiner, padding_idx, "f")
    out = fn(var)
    np.testing.assert_array_equal(
        out.data, F.embedding_bag(var.value, VALUES, OFFSETS, w, combiner, padding_idx))
    up = np.random.default_rng(1).uniform(0.5, 1.5, out.shape)
    (grad,) = ad.gradients(ad.reduce_sum(out * Tensor(up.astype(np.float32))), [var])
    assert isinstance(grad, RowSparseGrad)  # never a dense [V, D] array
    expected_rows = {int(i) for i in VALUES if i != padding_idx}
    assert set(grad.indices.tolist()) == expected_rows
    numeric = numeric_table_grad(var, fn, up)
    np.testing.assert_allclose(grad.to_dense(), numeric, rtol=1e-5, atol=1e-6)


def test_float64_path_matches_the_float32_kernel():
    var = table()
    for combiner in ("sum", "mean", "sqrtn"):
        f32 = ad.embedding_bag(var, VALUES, OFFSETS, WEIGHTS, combiner, 2).data
        f64 = ad.embedding_bag(Tensor(var.value.astype(np.float64)), VALUES, OFFSETS, WEIGHTS,
                               combiner, 2).data
        assert f64.dtype == np.float64
        np.testing.assert_allclose(f32, f64, rtol=1e-6, atol=1e-6)


def test_gradient_flows_to_the_table_through_dense_ops():
    var = table()
    out = ad.embedding_bag(var, VALUES, OFFSETS, combiner="mean")
    loss = ad.sigmoid_cross_entropy_with_logits(out.sum(axis=1), [1.0, 0.0, 1.0, 0.0])
    (grad,) = ad.gradients(loss, [var])
    p = 1 / (1 + np.exp(-out.data.sum(axis=1)))
    d_out = np.repeat(((p - [1.0, 0.0, 1.0, 0.0]) / 4)[:, None], D, axis=1).astype(np.float32)
    expected = F.embedding_bag_grad(d_out, VALUES, OFFSETS, V, combiner="mean").to_dense()
    np.testing.assert_allclose(grad.to_dense(), expected, rtol=1e-6, atol=1e-8)


def test_shared_table_gets_one_gradient_equal_to_the_sum():
    """Two features (and a second lookup of one of them) read one table."""
    var = table()
    second_values = np.array([3, 1, 1, 5], np.int64)
    second_offsets = np.array([0, 1, 2, 3, 4], np.int64)
    up1 = np.random.default_rng(2).standard_normal((4, D)).astype(np.float32)
    up2 = np.random.default_rng(3).standard_normal((4, D)).astype(np.float32)
    leaf = Tensor(var)  # one leaf, two lookups
    out1 = ad.embedding_bag(leaf, VALUES, OFFSETS, WEIGHTS, "sqrtn")
    out2 = ad.embedding_bag(leaf, second_values, second_offsets)
    out3 = ad.embedding_bag(var, second_values, second_offsets)  # a second leaf of the same var
    loss = (out1 * Tensor(up1)).sum() + (out2 * Tensor(up2)).sum() + out3.sum()
    grads_and_vars = ad.compute_gradients(loss)
    assert [v for _, v in grads_and_vars] == [var]
    grad = grads_and_vars[0][0]
    assert isinstance(grad, RowSparseGrad)
    expected = (F.embedding_bag_grad(up1, VALUES, OFFSETS, V, WEIGHTS, "sqrtn").to_dense()
                + F.embedding_bag_grad(up2, second_values, second_offsets, V).to_dense()
                + F.embedding_bag_grad(np.ones((4, D), np.float32), second_values,
                                       second_offsets, V).to_dense())
    np.testing.assert_allclose(grad.to_dense(), expected, rtol=1e-6, atol=1e-7)


def test_sparse_and_dense_contributions_to_one_variable_add_up():
    var = table()
    out = ad.embedding_bag(var, VALUES, OFFSETS)
    loss = out.sum() + (Tensor(var) * 3.0).sum()
    (grad,) = ad.gradients(loss, [var])
    expected = F.embedding_bag_grad(np.ones((4, D), np.float32), VALUES, OFFSETS, V).to_dense() + 3.0
    assert isinstance(grad, np.ndarray)
    np.testing.assert_allclose(grad, expected)


def test_concat_row_sparse():
    a = RowSparseGrad([1, 3], np.ones((2, 2)), (5, 2))
    b = RowSparseGrad([3, 0], 2 * np.ones((2, 2)), (5, 2))
    total = ad.concat_row_sparse([a, b])
    assert total.indices.tolist() == [1, 3, 3, 0]
    np.testing.assert_array_equal(total.to_dense(), a.to_dense() + b.to_dense())
    assert ad.concat_row_sparse([a]) is a
    with pytest.raises(ValueError, match="shapes"):
        ad.concat_row_sparse([a, RowSparseGrad([0], np.ones((1, 3)), (5, 3))])


def test_bad_ids_name_the_feature():
    with pytest.raises(ValueError, match="feature 'user'.*id 9"):
        ad.embedding_bag(table(), [9], [0, 1], name="user")
    with pytest.raises(TypeError, match="Variable or Tensor"):
        ad.embedding_bag(np.ones((3, 2), np.float32), [0], [0, 1])


def test_lookups_of_the_same_ids_in_two_tables_reuse_one_grouping_and_stay_exact(
        monkeypatch):
    # tables reading the same ids with the sum combiner (as DeepFM's linear
    # term and embeddings read one fused lookup, weighted or not) share the
    # grouping of the ids between their backwards; every gradient still
    # equals the float64 brute force, for equal ids in new arrays, other
    # ids, and a mean lookup (not shared) in between
    def brute(g, values, offsets, weights, mean=False):
        out = np.zeros((V, g.shape[1]))
        for b in range(len(offsets) - 1):
            w = weights[offsets[b]:offsets[b + 1]].astype(np.float64)
            divisor = w.sum() if mean else 1.0
            for i in range(offsets[b], offsets[b + 1]):
                if divisor:
                    out[values[i]] += weights[i] / divisor * g[b].astype(np.float64)
        return out
    planned = []
    real = F.grad_checked
    monkeypatch.setattr(F, "grad_checked", lambda *a: planned.append(1) or real(*a))
    rng = np.random.default_rng(3)
    ones = np.ones(len(VALUES), np.float32)
    wide, narrow, third = table(1), Variable(np.ones((V, 1), np.float32), "n"), table(2)
    for values in (VALUES, VALUES.copy(), (VALUES + 3) % V):
        a = ad.embedding_bag(wide, values, OFFSETS, WEIGHTS)
        b = ad.embedding_bag(narrow, values.copy(), OFFSETS.copy())
        c = ad.embedding_bag(third, values, OFFSETS, WEIGHTS, combiner="mean")
        ga, gb, gc = (rng.standard_normal(t.shape).astype(np.float32) for t in (a, b, c))
        grads = ad.gradients((c * gc).sum() + (b * gb).sum() + (a * ga).sum(),
                             [wide, narrow, third])
        for grad, g, w, mean in zip(grads, (ga, gb, gc), (WEIGHTS, ones, WEIGHTS),
                                    (False, False, True)):
            np.testing.assert_allclose(grad.to_dense(), brute(g, values, OFFSETS, w, mean),
                                       rtol=1e-5, atol=1e-5)
    assert len(planned) == 6  # a's backward runs first; b reuses its grouping; c does not
