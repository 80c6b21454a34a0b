"""Lookups and their gradients (SPEC §3) against the float64 reference."""
import numpy as np
import pytest

from sparse_train import EmbeddingTable, RowSparseGrad, Variable
from sparse_train.functional import embedding_bag, embedding_bag_grad

import reference as ref
from reference import assert_close

COMBINERS = ["sum", "mean", "sqrtn"]
V, D = 11, 4


def _batch(seed, weighted, B=7, V=V, D=D):
    """A ragged batch with empty bags and duplicate ids inside bags."""
    rng = np.random.default_rng(seed)
    lengths = rng.integers(0, 5, B)
    lengths[1] = 0                       # an empty bag
    lengths[-1] = 0                      # an empty last bag
    lengths[2] = 3                       # holds a duplicate (below)
    offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
    values = rng.integers(0, V, offsets[-1]).astype(np.int64)
    values[offsets[2]:offsets[2] + 2] = 3   # a duplicate inside one bag
    weights = rng.uniform(0.5, 2.0, values.shape[0]).astype(np.float32) if weighted else None
    table = rng.standard_normal((V, D)).astype(np.float32)
    d_out = rng.standard_normal((B, D)).astype(np.float32)
    return table, values, offsets, weights, d_out


def _check_grad(grad, d_out, values, offsets, weights, combiner, padding_idx, num_rows=V):
    assert isinstance(grad, RowSparseGrad)
    assert grad.dense_shape == (num_rows, d_out.shape[1])
    ids, rows = ref.embedding_bag_grad(d_out, values, offsets, weights, combiner, padding_idx)
    unique, sums = ref.coalesce(ids, rows)
    # Coalesced: unique ids (in ref.COALESCE_ORDER), padding left out.
    np.testing.assert_array_equal(grad.indices, unique)
    assert grad.values.dtype == np.float32
    assert_close(grad.values, sums)
    assert_close(grad.to_dense(), ref.to_dense(ids, rows, (num_rows, d_out.shape[1])))


@pytest.mark.parametrize("weighted", [False, True])
@pytest.mark.parametrize("combiner", COMBINERS)
def test_forward_and_grad_match_reference(combiner, weighted):
    table, values, offsets, weights, d_out = _batch(10 + weighted, weighted)
    out = embedding_bag(table, values, offsets, weights, combiner)
    assert out.shape == (offsets.shape[0] - 1, D) and out.dtype == np.float32
    assert_close(out, ref.embedding_bag(table, values, offsets, weights, combiner))
    assert not out[1].any() and not out[-1].any()     # empty bags give zeros
    grad = embedding_bag_grad(d_out, values, offsets, V, weights, combiner)
    _check_grad(grad, d_out, values, offsets, weights, combiner, None)


@pytest.mark.parametrize("weighted", [False, True])
@pytest.mark.parametrize("combiner", COMBINERS)
def test_padding_idx_is_skipped_in_output_divisor_and_grad(combiner, weighted):
    table, values, offsets, weights, d_out = _batch(20 + weighted, weighted)
    pad = 3  # present, duplicated inside bag 2
    values[offsets[0]] = pad
    assert (values == pad).sum() >= 3
    out = embedding_bag(table, values, offsets, weights, combiner, padding_idx=pad)
    assert_close(out, ref.embedding_bag(table, values, offsets, weights, combiner, pad))
    grad = embedding_bag_grad(d_out, values, offsets, V, weights, combiner, padding_idx=pad)
    assert pad not in grad.indices.tolist()
    _check_grad(grad, d_out, values, offsets, weights, combiner, pad)


@pytest.mark.parametrize("combiner", COMBINERS)
def test_bag_of_only_padding_is_empty(combiner):
    table = np.arange(12, dtype=np.float32).reshape(4, 3)
    out = embedding_bag(table, [0, 0, 2], [0, 2, 3], combiner=combiner, padding_idx=0)
    np.testing.assert_array_equal(out[0], 0.0)
    assert_close(out[1], table[2])
    grad = embedding_bag_grad(np.ones((2, 3), np.float32), [0, 0, 2], [0, 2, 3], 4,
                              combiner=combiner, padding_idx=0)
    assert grad.indices.tolist() == [2]


@pytest.mark.parametrize("combiner", ["mean", "sqrtn"])
def test_zero_divisor_bag_gives_zeros_and_no_gradient(combiner):
    # SPEC defines no 0/0; we read a zero divisor like an empty bag.
    rng = np.random.default_rng(3)
    table = rng.standard_normal((5, 2)).astype(np.float32)
    values, offsets = np.array([1, 2, 3, 4]), np.array([0, 2, 4])
    weights = np.array([0.0, 0.0, 1.5, 0.5], np.float32)
    out = embedding_bag(table, values, offsets, weights, combiner)
    assert np.isfinite(out).all()
    assert_close(out, ref.embedding_bag(table, values, offsets, weights, combiner))
    d_out = rng.standard_normal((2, 2)).astype(np.float32)
    grad = embedding_bag_grad(d_out, values, offsets, 5, weights, combiner)
    ids, rows = ref.embedding_bag_grad(d_out, values, offsets, weights, combiner)
    assert np.isfinite(grad.to_dense()).all()
    assert_close(grad.to_dense(), ref.to_dense(ids, rows, (5, 2)))


def test_all_bags_empty():
    table = np.ones((3, 2), np.float32)
    out = embedding_bag(table, np.zeros(0, np.int64), [0, 0, 0])
    np.testing.assert_array_equal(out, np.zeros((2, 2)))
    grad = embedding_bag_grad(np.ones((2, 2), np.float32), np.zeros(0, np.int64), [0, 0, 0], 3)
    assert grad.indices.shape == (0,)
    np.testing.assert_array_equal(grad.to_dense(), np.zeros((3, 2)))


def test_duplicates_in_a_bag_count_twice():
    table = np.arange(8, dtype=np.float32).reshape(4, 2)
    out = embedding_bag(table, [1, 1, 2], [0, 3], combiner="mean")
    assert_close(out, [(2 * table[1] + table[2]) / 3])
    grad = embedding_bag_grad(np.array([[3.0, 6.0]], np.float32), [1, 1, 2], [0, 3], 4,
                              combiner="mean")
    assert grad.indices.tolist() == [1, 2]
    assert_close(grad.values, [[2.0, 4.0], [1.0, 2.0]])


def test_variable_is_accepted_as_weight():
    table, values, offsets, weights, _ = _batch(4, True)
    out = embedding_bag(Variable(table, "t"), values, offsets, weights, "sqrtn")
    assert_close(out, ref.embedding_bag(table, values, offsets, weights, "sqrtn"))


@pytest.mark.parametrize("combiner", COMBINERS)
def test_grad_matches_finite_differences_of_forward(combiner):
    rng = np.random.default_rng(5)
    table = rng.standard_normal((5, 3)).astype(np.float32)
    values = np.array([0, 4, 4, 2, 1, 0, 3])
    offsets = np.array([0, 3, 3, 5, 7])
    weights = rng.uniform(0.5, 2.0, 7).astype(np.float32)
    d_out = rng.standard_normal((4, 3)).astype(np.float32)

    def loss(t):
        return float(np.sum(embedding_bag(t, values, offsets, weights, combiner).astype(np.float64) * d_out))

    h = 1e-2
    numeric = np.zeros(table.shape)
    for i in range(table.shape[0]):
        for j in range(table.shape[1]):
            plus, minus = table.copy(), table.copy()
            plus[i, j] += h
            minus[i, j] -= h
            numeric[i, j] = (loss(plus) - loss(minus)) / (2 * h)
    grad = embedding_bag_grad(d_out, values, offsets, 5, weights, combiner).to_dense()
    np.testing.assert_allclose(grad, numeric, rtol=1e-3, atol=1e-3)


# ----------------------------------------------------------- EmbeddingTable
def test_table_init_is_seeded_and_reproducible():
    a = EmbeddingTable(50, 8, "user", seed=3)
    b = EmbeddingTable(50, 8, "user", seed=3)
    c = EmbeddingTable(50, 8, "user", seed=4)
    assert a.weight.value.dtype == np.float32 and a.weight.shape == (50, 8)
    assert a.weight.name == "user"
    np.testing.assert_array_equal(a.weight.value, b.weight.value)
    assert not np.array_equal(a.weight.value, c.weight.value)
    # Default seed: derived from the name, so runs repeat and tables differ.
    np.testing.assert_array_equal(EmbeddingTable(20, 4, "item").weight.value,
                                  EmbeddingTable(20, 4, "item").weight.value)
    assert not np.array_equal(EmbeddingTable(20, 4, "item").weight.value,
                              EmbeddingTable(20, 4, "shop").weight.value)
    # truncated normal, stddev 1/sqrt(D): nothing beyond 2 stddev.
    assert np.abs(a.weight.value).max() <= 2.0 / np.sqrt(8) + 1e-6
    assert a.weight.value.std() > 0.1


@pytest.mark.parametrize("initializer", ["truncated_normal", "normal", "uniform", "zeros"])
def test_table_padding_row_is_zero(initializer):
    t = EmbeddingTable(10, 3, "p", initializer=initializer, seed=1, padding_idx=4)
    np.testing.assert_array_equal(t.weight.value[4], 0.0)
    np.testing.assert_array_equal(
        t.weight.value, EmbeddingTable(10, 3, "p", initializer=initializer, seed=1,
                                       padding_idx=4).weight.value)


def test_table_lookup_and_grad_with_padding():
    t = EmbeddingTable(V, D, "f", seed=0, padding_idx=2)
    _, values, offsets, weights, d_out = _batch(30, True)
    values[0] = 2
    out = t.lookup(values, offsets, weights, "mean")
    assert_close(out, ref.embedding_bag(t.weight.value, values, offsets, weights, "mean", 2))
    grad = t.lookup_grad(d_out, values, offsets, weights, "mean")
    _check_grad(grad, d_out, values, offsets, weights, "mean", 2)


def test_hash_ids_rule_is_id_mod_num_embeddings():
    t = EmbeddingTable(10, 3, "h", seed=0, hash_ids=True)
    values = np.array([3, 13, 27, 10, 9, 123456789012])
    offsets = np.array([0, 2, 4, 6])
    hashed = values % 10
    np.testing.assert_array_equal(t.ids(values), hashed)
    assert_close(t.lookup(values, offsets), ref.embedding_bag(t.weight.value, hashed, offsets))
    d_out = np.arange(9, dtype=np.float32).reshape(3, 3)
    grad = t.lookup_grad(d_out, values, offsets)
    _check_grad(grad, d_out, hashed, offsets, None, "sum", None, num_rows=10)
    with pytest.raises(ValueError, match="'h'.*-3|-3.*'h'"):
        t.lookup([1, -3], [0, 2])
    with pytest.raises(ValueError, match="clicks"):
        t.lookup([1, -3], [0, 2], name="clicks")


def test_unhashed_table_rejects_large_ids():
    t = EmbeddingTable(10, 3, "u", seed=0)
    with pytest.raises(ValueError, match=r"'u'.*\b13\b"):
        t.lookup([1, 13], [0, 2])
    with pytest.raises(ValueError, match=r"'ctx'.*\b13\b"):
        t.lookup_grad(np.ones((1, 3), np.float32), [1, 13], [0, 2], name="ctx")


@pytest.mark.parametrize("kwargs", [
    dict(num_embeddings=0, embedding_dim=3), dict(num_embeddings=4, embedding_dim=0),
    dict(num_embeddings=4, embedding_dim=3, padding_idx=4),
    dict(num_embeddings=4, embedding_dim=3, initializer="glorot-ish"),
])
def test_table_rejects_bad_arguments(kwargs):
    with pytest.raises(ValueError):
        EmbeddingTable(name="bad", **kwargs)


# ---------------------------------------------------------------- bad input
TABLE = np.zeros((6, 2), np.float32)
BAD_BAGS = {
    "id_too_large": dict(values=[0, 6, 1], offsets=[0, 2, 3], offending="6"),
    "id_negative": dict(values=[0, 1, -2], offsets=[0, 2, 3], offending="-2"),
    "offsets_not_from_0": dict(values=[0, 1, 2], offsets=[1, 2, 3], offending=None),
    "offsets_decreasing": dict(values=[0, 1, 2], offsets=[0, 2, 1, 3], offending=None),
    "offsets_short": dict(values=[0, 1, 2], offsets=[0, 1, 2], offending=None),
    "offsets_long": dict(values=[0, 1, 2], offsets=[0, 1, 4], offending=None),
    "offsets_empty": dict(values=[0, 1, 2], offsets=[], offending=None),
}


@pytest.mark.parametrize("case", sorted(BAD_BAGS))
def test_bad_bags_raise_naming_the_feature(case):
    bag = BAD_BAGS[case]
    with pytest.raises(ValueError, match="user_clicks") as info:
        embedding_bag(TABLE, bag["values"], bag["offsets"], name="user_clicks")
    if bag["offending"] is not None:
        assert bag["offending"] in str(info.value)
    num_bags = max(len(bag["offsets"]) - 1, 0)
    with pytest.raises(ValueError, match="user_clicks") as info:
        embedding_bag_grad(np.ones((num_bags, 2), np.float32), bag["values"], bag["offsets"],
                           6, name="user_clicks")
    if bag["offending"] is not None:
        assert bag["offending"] in str(info.value)


@pytest.mark.parametrize("weights", [
    np.ones(2, np.float32),                  # too short
    np.ones((3, 1), np.float32),             # wrong rank
    np.array([1 + 1j, 1, 1]),                # complex
    np.array(["a", "b", "c"]),               # not numbers
])
def test_bad_weights_raise_naming_the_feature(weights):
    with pytest.raises(ValueError, match="age_bucket"):
        embedding_bag(TABLE, [0, 1, 2], [0, 1, 3], weights=weights, name="age_bucket")
    with pytest.raises(ValueError, match="age_bucket"):
        embedding_bag_grad(np.ones((2, 2), np.float32), [0, 1, 2], [0, 1, 3], 6,
                           weights=weights, name="age_bucket")


@pytest.mark.parametrize("shape", [(3, 2), (1, 2), (2,), (2, 2, 1)])
def test_bad_d_out_shape_raises_naming_the_feature(shape):
    with pytest.raises(ValueError, match="geo"):
        embedding_bag_grad(np.ones(shape, np.float32), [0, 1, 2], [0, 1, 3], 6, name="geo")


def test_bad_combiner_raises_naming_the_feature():
    with pytest.raises(ValueError, match="geo"):
        embedding_bag(TABLE, [0, 1], [0, 2], combiner="max", name="geo")


@pytest.mark.parametrize("hash_ids", [False, True])
def test_table_lookup_refuses_float_ids_instead_of_truncating(hash_ids):
    # 1.7 must not silently become row 1 (functional.embedding_bag refuses
    # floats; the table's own id conversion must too).
    t = EmbeddingTable(10, 2, "user", seed=0, hash_ids=hash_ids)
    with pytest.raises(ValueError, match="feature 'user': values must be integers, got dtype float64"):
        t.lookup(np.array([1.7]), [0, 1])
    with pytest.raises(ValueError, match="feature 'ctx': values must be integers"):
        t.lookup_grad(np.ones((1, 2), np.float32), np.array([1.7]), [0, 1], name="ctx")


def test_unsigned_ids_beyond_int64_are_reported_not_wrapped():
    huge = np.array([1, 2 ** 63 + 5], np.uint64)
    with pytest.raises(ValueError, match=r"feature 'geo': values\[1\] = 9223372036854775813 "
                                         r"does not fit int64"):
        embedding_bag(TABLE, huge, [0, 2], name="geo")
    with pytest.raises(ValueError, match=r"index 9223372036854775813 at position 1"):
        RowSparseGrad(huge, np.ones((2, 2)), (6, 2))


@pytest.mark.parametrize("padding_idx", ["a", 1.5, True, -1, None])
def test_bad_padding_idx_and_sizes_raise_value_errors_naming_the_table(padding_idx):
    with pytest.raises(ValueError, match="geo.*padding_idx"):
        embedding_bag(TABLE, [0], [0, 1], padding_idx=padding_idx if padding_idx is not None
                      else 6, name="geo")
    if padding_idx is not None:
        with pytest.raises(ValueError, match=r"EmbeddingTable 'pad': padding_idx must be an "
                                             r"integer in \[0, 4\)"):
            EmbeddingTable(4, 2, "pad", padding_idx=padding_idx)
    assert EmbeddingTable(4, 2, "pad", padding_idx=np.int64(2)).padding_idx == 2
    for size in (None, "4", 4.5):
        with pytest.raises(ValueError, match="num_embeddings must be a"):
            embedding_bag_grad(np.ones((1, 2), np.float32), [0], [0, 1], size, name="geo")
        with pytest.raises(ValueError, match="'pad': num_embeddings must be a positive integer"):
            EmbeddingTable(size, 2, "pad")
    with pytest.raises(ValueError, match="name must be a non-empty string"):
        EmbeddingTable(4, 2, 7)


def test_non_numeric_d_out_raises_naming_the_feature():
    with pytest.raises(ValueError, match="feature 'geo': d_out must be a real array"):
        embedding_bag_grad(np.array([["a", "b"]]), [0], [0, 1], 6, name="geo")
