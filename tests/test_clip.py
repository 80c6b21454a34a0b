"""Clipping against a NumPy computation written from SPEC §4."""
import doctest

import numpy as np
import pytest

import sparse_train.clip as clip_module
from sparse_train import RowSparseGrad, Variable, functional
from sparse_train.clip import (clip_by_global_norm, clip_by_norm, clip_by_value,
                               clip_gradients, global_norm)
from sparse_train.kernels.clip import NORM_CHUNK
from sparse_train.optim import GradientDescent


def summed_rows(indices, values, num_rows):
    """NumPy reference: the dense float64 gradient, duplicates summed."""
    dense = np.zeros((num_rows,) + values.shape[1:], np.float64)
    np.add.at(dense, indices, values.astype(np.float64))
    return dense


@pytest.fixture
def grads():
    """A big dense gradient (several norm chunks), a small one, a table
    gradient with duplicate ids, a lookup's lazy gradient, and None."""
    rng = np.random.default_rng(0)
    big = rng.standard_normal((3 * NORM_CHUNK + 17,)).astype(np.float32)
    small = rng.standard_normal((4, 3)).astype(np.float32)
    ids = np.array([5, 2, 5, 5, 0, 2, 9])
    table = RowSparseGrad(ids, rng.standard_normal((7, 4)), (10, 4))
    values, offsets = np.array([1, 3, 1, 1, 7]), np.array([0, 2, 3, 5])
    d_out = rng.standard_normal((3, 4)).astype(np.float32)
    lookup = functional.embedding_bag_grad(d_out, values, offsets, 8, combiner="mean")
    return {"big": big, "small": small, "table": table, "lookup": lookup, "none": None,
            "table_ref": summed_rows(ids, table.values, 10),
            "lookup_ref": _lookup_reference(d_out, values, offsets, 8)}


def _lookup_reference(d_out, values, offsets, num_rows):
    dense = np.zeros((num_rows, d_out.shape[1]))
    for b in range(len(offsets) - 1):
        ids = values[offsets[b]:offsets[b + 1]]
        for i in ids:
            dense[i] += d_out[b].astype(np.float64) / len(ids)
    return dense


def grad_list(g):
    return [g["big"], g["table"], g["none"], g["small"], g["lookup"]]


def reference_norm(g):
    parts = [g["big"], g["small"], g["table_ref"], g["lookup_ref"]]
    return np.sqrt(sum(np.sum(np.asarray(p, np.float64) ** 2) for p in parts))


def test_global_norm_is_the_norm_after_summing_duplicates(grads):
    norm = global_norm(grad_list(grads))
    np.testing.assert_allclose(norm, reference_norm(grads), rtol=1e-6)
    # The norm of exactly what the optimizer applies: the float32 summed rows.
    applied = [grads["big"], grads["small"], grads["table"].to_dense(), grads["lookup"].to_dense()]
    np.testing.assert_allclose(
        norm, np.sqrt(sum(np.sum(a.astype(np.float64) ** 2) for a in applied)), rtol=1e-13)
    # TF's norm squares the un-summed values; with duplicates it differs.
    unsummed = np.sum(grads["table"].values.astype(np.float64) ** 2)
    assert not np.isclose(unsummed, np.sum(grads["table_ref"] ** 2), rtol=1e-3)


def test_clip_by_global_norm_scales_every_gradient(grads):
    clip_norm = 0.25 * reference_norm(grads)
    clipped, norm = clip_by_global_norm(grad_list(grads), clip_norm)
    scale = np.float32(clip_norm / norm)
    big, table, none, small, lookup = clipped
    assert none is None
    np.testing.assert_array_equal(big, grads["big"] * scale)
    np.testing.assert_array_equal(small, grads["small"] * scale)
    assert isinstance(table, RowSparseGrad) and table.is_coalesced
    np.testing.assert_array_equal(table.to_dense(), grads["table"].to_dense() * scale)
    np.testing.assert_array_equal(lookup.to_dense(), grads["lookup"].to_dense() * scale)
    np.testing.assert_allclose(table.to_dense(), grads["table_ref"] * clip_norm / norm,
                               rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(global_norm(clipped), clip_norm, rtol=1e-6)


def test_within_the_norm_nothing_changes(grads):
    given = grad_list(grads)
    clipped, norm = clip_by_global_norm(given, 2.0 * reference_norm(grads))
    assert all(a is b for a, b in zip(clipped, given))
    np.testing.assert_allclose(norm, reference_norm(grads), rtol=1e-6)


def test_use_norm_replaces_the_computed_norm():
    clipped, norm = clip_by_global_norm([np.array([3.0, 4.0])], 1.0, use_norm=10.0)
    assert norm == 10.0
    np.testing.assert_array_equal(clipped[0], np.float32([3.0, 4.0]) * np.float32(0.1))


def test_clip_gradients_pairs_then_apply_equals_manual_scaling(grads):
    table_var = Variable(np.ones((10, 4)), "table")
    dense_var = Variable(np.ones((4, 3)), "dense")
    pairs, norm = clip_gradients([(grads["table"], table_var), (grads["small"], dense_var)], 0.5)
    assert [v for _, v in pairs] == [table_var, dense_var]
    np.testing.assert_allclose(
        norm, np.sqrt(np.sum(grads["table_ref"] ** 2) + np.sum(grads["small"] ** 2.0)), rtol=1e-6)
    GradientDescent(1.0).apply_gradients(pairs)
    scale = np.float32(0.5 / norm)
    summed = grads["table"].coalesce()
    expected = np.ones((10, 4), np.float32)
    expected[summed.indices] -= summed.values * scale
    np.testing.assert_array_equal(table_var.value, expected)
    np.testing.assert_array_equal(dense_var.value, np.float32(1.0) - grads["small"] * scale)


def test_non_finite_norm_names_the_variables():
    bad_table = RowSparseGrad([1, 1], [[1.0], [np.nan]], (3, 1))
    pairs = [(np.ones(2), Variable(np.zeros(2), "fine")),
             (bad_table, Variable(np.zeros((3, 1)), "emb/user")),
             (np.array([np.inf]), Variable(np.zeros(1), "dense/bias"))]
    with pytest.raises(ValueError, match=r"'emb/user' \(nan\).*'dense/bias' \(inf\)") as info:
        clip_gradients(pairs, 1.0)
    assert "fine" not in str(info.value)
    with pytest.raises(ValueError, match="gradient 1"):
        clip_by_global_norm([None, np.array([np.nan])], 1.0)
    with pytest.raises(ValueError, match="not finite"):
        clip_by_norm(bad_table, 1.0)


@pytest.mark.parametrize("clip_norm", [0.0, -1.0, np.nan, "x"])
def test_bad_clip_norm(clip_norm):
    with pytest.raises(ValueError, match="clip_norm"):
        clip_by_global_norm([np.ones(2)], clip_norm)


def test_pairs_given_to_clip_by_global_norm_are_refused():
    with pytest.raises(TypeError, match="clip_gradients"):
        clip_by_global_norm([(np.ones(2), Variable(np.zeros(2), "w"))], 1.0)


def test_clip_by_norm_dense_and_sparse():
    dense = np.array([[3.0, 0.0], [0.0, 4.0]])
    np.testing.assert_array_equal(clip_by_norm(dense, 2.5), np.float32(dense) * np.float32(0.5))
    assert clip_by_norm(dense, 5.0) is dense
    assert clip_by_norm(None, 1.0) is None
    # rows 0 + 0 sum to [3, 4]: norm 5 (TF would see sqrt(1.5**2 + 2**2) * sqrt(2))
    sparse = RowSparseGrad([0, 0], [[1.5, 2.0], [1.5, 2.0]], (2, 2))
    clipped = clip_by_norm(sparse, 1.0)
    np.testing.assert_array_equal(clipped.to_dense(), np.float32([[3.0, 4.0], [0.0, 0.0]]) * np.float32(0.2))


def test_clip_by_value_clamps_summed_rows():
    dense = np.array([-3.0, 0.5, 2.0])
    out = clip_by_value(dense, -1.0, 1.0)
    assert out.dtype == np.float32
    np.testing.assert_array_equal(out, [-1.0, 0.5, 1.0])
    ids = np.array([4, 1, 4, 4])
    values = np.array([[0.4, -0.1], [2.0, 0.3], [0.4, -0.9], [0.4, 0.2]])
    out = clip_by_value(RowSparseGrad(ids, values, (6, 2)), -0.5, 1.0)
    reference = np.clip(summed_rows(ids, values, 6), -0.5, 1.0)
    np.testing.assert_allclose(out.to_dense(), reference, rtol=1e-6)
    assert sorted(out.indices.tolist()) == [1, 4]
    # Clamping each value first (TF) would give row 4 = [1.2, -0.8]; summed first: [1.0, -0.5].
    np.testing.assert_allclose(out.to_dense()[4], [1.0, -0.5])
    assert clip_by_value(None, 0.0, 1.0) is None
    with pytest.raises(ValueError, match="clip_value_min must be <= clip_value_max"):
        clip_by_value(dense, 1.0, -1.0)


# 1 thread == 2 threads for the norms (and a clipped DeepFM step) is checked in
# subprocesses with NUMBA_NUM_THREADS=1 and 2: test_optim_conformance.py. An
# in-process numba.set_num_threads check cannot fail when the suite itself
# runs with NUMBA_NUM_THREADS=1.


def test_docstring_examples():
    assert doctest.testmod(clip_module).failed == 0
