"""The two plans of an embedding bag's gradient agree.

``functional.embedding_bag_grad`` takes a short path (``unit_grad_plan``)
when every id contributes ``1 * d_out[b]`` (sum, no weights, no padding):
the grouping tags each id with its bag. Weights of one select the general
``embedding_bag_grad_plan`` (position -> bag map, coefficients). Both must give the same bits, on batches small and large
enough for the parallel grouping, on 1 thread (serial grouping) and 2, and
match a brute-force sum.
"""
import numpy as np
import pytest

from sparse_train import functional as F
from sparse_train.kernels import _jit
from sparse_train.kernels.coalesce import PARALLEL_MIN_IDS


@pytest.mark.parametrize("num_bags,bag_size,num_rows", [
    (3, 2, 5), (7, 4, 1 << 22), (PARALLEL_MIN_IDS // 8 + 3, 9, 50_000),
    (PARALLEL_MIN_IDS // 8 + 3, 9, 1 << 30)])
def test_unit_plan_equals_general_plan_and_brute_force(num_bags, bag_size, num_rows,
                                                       threads, monkeypatch):
    # tables of every size take the short path here (by default a small
    # table takes the general plan: kernels._jit.STATIC_DIM_MIN_ROWS)
    monkeypatch.setattr(_jit, "STATIC_DIM_MIN_ROWS", 0)
    rng = np.random.default_rng(num_bags)
    lengths = rng.integers(0, 2 * bag_size, num_bags)
    lengths[:num_bags // 3] = 0                           # empty bags first
    offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
    values = rng.integers(0, num_rows, offsets[-1])
    values[::97] = values[:1]                             # duplicates across bags
    d_out = rng.standard_normal((num_bags, 8)).astype(np.float32)
    _jit._TEAM_STATE[0] = 0  # regions not running alone: 2 threads take the parallel sort
    unit = F.embedding_bag_grad(d_out, values, offsets, num_rows)
    general = F.embedding_bag_grad(d_out, values, offsets, num_rows,
                                   weights=np.ones(values.shape[0], np.float32))
    np.testing.assert_array_equal(unit.indices, general.indices)
    np.testing.assert_array_equal(unit.values.view(np.uint32), general.values.view(np.uint32))
    rows, inverse = np.unique(values, return_inverse=True)
    sums = np.zeros((rows.shape[0], 8))
    bag_of = np.repeat(np.arange(num_bags), lengths)
    np.add.at(sums, inverse, d_out[bag_of].astype(np.float64))
    np.testing.assert_array_equal(unit.indices, rows)
    np.testing.assert_allclose(unit.values, sums, rtol=1e-5, atol=1e-4)
