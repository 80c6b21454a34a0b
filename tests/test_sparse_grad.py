"""RowSparseGrad and Ragged (DESIGN core types; SPEC §1.4 duplicate summing)."""
import numpy as np
import pytest

from sparse_train import Ragged, RowSparseGrad

from reference import coalesce, to_dense


def _grad_with_duplicates(seed=0, n=40, V=9, D=3):
    rng = np.random.default_rng(seed)
    ids = rng.integers(0, V, n)
    # Wide dynamic range so that the order of the float32 additions shows.
    values = (rng.standard_normal((n, D)) * 10.0 ** rng.integers(-4, 5, (n, 1))).astype(np.float32)
    return ids, values, (V, D)


def test_coalesce_unique_order_and_position_order_sums():
    ids, values, shape = _grad_with_duplicates()
    c = RowSparseGrad(ids, values, shape).coalesce()
    rows, sums = coalesce(ids, values, dtype=np.float32)
    assert c.is_coalesced
    assert c.indices.dtype == np.int64 and c.values.dtype == np.float32
    np.testing.assert_array_equal(c.indices, rows)
    np.testing.assert_array_equal(c.values, sums)  # bit for bit: position order


def test_coalesce_order_of_additions_is_position_order():
    # (1e8 + 1) - 1e8 == 0 in float32, while 1e8 - 1e8 + 1 == 1.
    g = RowSparseGrad([5, 2, 5, 5], np.array([[1e8], [3.0], [1.0], [-1e8]], np.float32), (6, 1))
    rows, sums = coalesce([5, 2, 5, 5], [[1e8], [3.0], [1.0], [-1e8]], dtype=np.float32)
    c = g.coalesce()
    np.testing.assert_array_equal(c.indices, rows)
    np.testing.assert_array_equal(c.values, sums)
    assert dict(zip(c.indices.tolist(), c.values[:, 0].tolist())) == {5: 0.0, 2: 3.0}


def test_to_dense_sums_duplicates():
    ids, values, shape = _grad_with_duplicates(seed=1)
    dense = RowSparseGrad(ids, values, shape).to_dense()
    assert dense.shape == shape and dense.dtype == np.float32
    np.testing.assert_allclose(dense, to_dense(ids, values, shape), rtol=1e-5, atol=1e-3)
    rows, sums = coalesce(ids, values, dtype=np.float32)
    np.testing.assert_array_equal(dense[rows], sums)
    untouched = np.setdiff1d(np.arange(shape[0]), rows)
    assert not dense[untouched].any()


def test_scaled_multiplies_the_summed_gradient():
    ids, values, shape = _grad_with_duplicates(seed=2)
    g = RowSparseGrad(ids, values, shape)
    s = g.scaled(0.25)
    rows, sums = coalesce(ids, values)
    np.testing.assert_array_equal(s.indices, rows)
    np.testing.assert_allclose(s.values, 0.25 * sums, rtol=1e-5, atol=1e-3)
    np.testing.assert_allclose(s.to_dense(), 0.25 * to_dense(ids, values, shape),
                               rtol=1e-5, atol=1e-3)
    # The original is untouched, and scaling composes.
    np.testing.assert_array_equal(g.values, values)
    np.testing.assert_allclose(s.scaled(2.0).values, 0.5 * sums, rtol=1e-5, atol=1e-3)


def test_nnz_and_coalesced_flag():
    g = RowSparseGrad([1, 1, 0], np.ones((3, 2)), (4, 2))
    assert g.nnz == 3 and not g.is_coalesced
    c = g.coalesce()
    assert c.nnz == 2 and c.is_coalesced and c.coalesce() is c


def test_higher_rank_values():
    ids = [2, 0, 2]
    values = np.arange(18, dtype=np.float32).reshape(3, 2, 3)
    dense = RowSparseGrad(ids, values, (4, 2, 3)).to_dense()
    np.testing.assert_array_equal(dense, to_dense(ids, values, (4, 2, 3)))


@pytest.mark.parametrize("indices, values, shape", [
    (np.zeros((2, 1), np.int64), np.ones((2, 3)), (5, 3)),      # 2-D indices
    (np.array([0.0, 1.0]), np.ones((2, 3)), (5, 3)),           # float indices
    ([0, 1], np.ones((3, 3)), (5, 3)),                          # one row too many
    ([0, 1], np.ones((2, 4)), (5, 3)),                          # wrong row width
    ([0, 5], np.ones((2, 3)), (5, 3)),                          # id == V
    ([-1, 0], np.ones((2, 3)), (5, 3)),                         # negative id
    ([0, 1], np.array([["a"] * 3] * 2), (5, 3)),                # non-real values
    ([0], np.ones((1, 3)), (-5, 3)),                            # bad dense_shape
])
def test_bad_input_raises_value_error(indices, values, shape):
    with pytest.raises(ValueError):
        RowSparseGrad(indices, values, shape)


def test_out_of_range_error_names_value_and_position():
    with pytest.raises(ValueError, match=r"17.*position 2|position 2.*17"):
        RowSparseGrad([0, 1, 17], np.ones((3, 2)), (10, 2))


def test_ragged_from_lengths_and_dense():
    r = Ragged.from_lengths([4, 7, 7, 1], [2, 0, 2], weights=[1.0, 2.0, 3.0, 4.0])
    assert r.values.dtype == np.int64 and r.offsets.dtype == np.int64
    assert r.weights.dtype == np.float32
    assert r.offsets.tolist() == [0, 2, 2, 4]
    assert r.lengths.tolist() == [2, 0, 2] and r.num_bags == 3 and len(r) == 3
    d = Ragged.from_dense([[5], [6], [7]])
    assert d.values.tolist() == [5, 6, 7] and d.offsets.tolist() == [0, 1, 2, 3]
    assert d.weights is None and d.num_bags == 3
