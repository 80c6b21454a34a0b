"""Layers: Linear, MLP, CrossNetwork, embedding bags, FeatureLinear."""
import numpy as np
import pytest

from sparse_train import RowSparseGrad, collections
from sparse_train import autodiff as ad
from sparse_train.autodiff import Tensor
from sparse_train.data import Batch, DataSpec, FeatureSpec
from sparse_train.nn import (MLP, CrossNetwork, EmbeddingBag, EmbeddingBagCollection,
                             EmbeddingTable, FeatureLinear, Linear, glorot_uniform)
from sparse_train.ragged import Ragged


@pytest.fixture(autouse=True)
def _fresh_collections():
    collections.reset_collections()
    yield
    collections.reset_collections()


def test_linear_glorot_uniform_seeded_and_named():
    layer = Linear(300, 100, "net/dense", seed=3)
    limit = np.sqrt(6.0 / 400)
    w = layer.kernel.value
    assert w.dtype == np.float32 and w.shape == (300, 100)
    assert np.abs(w).max() <= limit and np.abs(w).max() > 0.95 * limit
    assert abs(w.std() - limit / np.sqrt(3)) < 0.01 * limit  # the uniform's std
    np.testing.assert_array_equal(layer.bias.value, np.zeros(100, np.float32))
    assert [v.name for v in layer.variables()] == ["net/dense/kernel", "net/dense/bias"]
    np.testing.assert_array_equal(Linear(300, 100, "net/dense", seed=3).kernel.value, w)
    assert not np.array_equal(Linear(300, 100, "net/other", seed=3).kernel.value, w)
    assert not np.array_equal(Linear(300, 100, "net/dense", seed=4).kernel.value, w)
    x = np.random.default_rng(0).standard_normal((5, 300)).astype(np.float32)
    np.testing.assert_allclose(layer(Tensor(x)).data, x @ w, rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="out_features must be a positive integer"):
        Linear(3, 0, "bad")


def test_glorot_uniform_bounds():
    w = glorot_uniform((10, 30), seed=1)
    assert np.abs(w).max() <= np.sqrt(6 / 40)


def test_mlp_forward_matches_numpy():
    mlp = MLP(4, (5, 3), "m", seed=1, output_units=2)
    x = np.random.default_rng(0).standard_normal((6, 4)).astype(np.float32)
    h = x
    for layer in mlp.hidden:
        h = np.maximum(h @ layer.kernel.value + layer.bias.value, 0)
    expected = h @ mlp.output.kernel.value + mlp.output.bias.value
    np.testing.assert_allclose(mlp(Tensor(x)).data, expected, rtol=1e-5, atol=1e-6)
    assert [v.name for v in mlp.variables()] == [
        "m/dense_0/kernel", "m/dense_0/bias", "m/dense_1/kernel", "m/dense_1/bias",
        "m/output/kernel", "m/output/bias"]
    with pytest.raises(ValueError, match="activation"):
        MLP(4, (5,), "m2", activation="gelu")


def test_cross_network_forward_and_gradient():
    cross = CrossNetwork(3, 2, "c", seed=0)
    for b in cross.biases:
        b.value[:] = np.random.default_rng(1).standard_normal(3)
    x0 = np.random.default_rng(0).standard_normal((4, 3))
    x = x0
    for w, b in zip(cross.kernels, cross.biases):
        x = x0 * (x @ w.value) + b.value + x
    np.testing.assert_allclose(cross(Tensor(x0)).data, x, rtol=1e-6)
    # gradient w.r.t. the input against finite differences (float64)
    for v in cross.variables():
        v.value = v.value.astype(np.float64)
    inp = Tensor(x0, requires_grad=True)
    (g,) = ad.gradients(cross(inp).sum(), [inp])
    eps, numeric = 1e-6, np.zeros_like(x0)
    for i in np.ndindex(*x0.shape):
        up, down = x0.copy(), x0.copy()
        up[i] += eps
        down[i] -= eps
        numeric[i] = (cross(Tensor(up)).data.sum() - cross(Tensor(down)).data.sum()) / (2 * eps)
    np.testing.assert_allclose(g, numeric, rtol=1e-6, atol=1e-9)


SPEC = DataSpec((FeatureSpec("user", 6), FeatureSpec("item", 9), FeatureSpec("tags", 9, multi_hot=True, weighted=True)),
                ("age", "price"))


def make_batch():
    return Batch(
        labels=np.array([1, 0, 1], np.float32),
        dense=np.array([[0.5, 1.0], [2.0, -1.0], [0.0, 0.25]], np.float32),
        sparse={"user": Ragged.from_dense([1, 5, 1]),
                "item": Ragged.from_dense([8, 0, 3]),
                "tags": Ragged.from_lengths([2, 3, 8, 2], [2, 0, 2], [1.0, 0.5, 2.0, 1.0])})


def test_embedding_bag_layer_hashes_and_pads():
    table = EmbeddingTable(5, 2, "h", hash_ids=True, padding_idx=0)
    out = EmbeddingBag(table, "mean", name="f")(Ragged([7, 5, 3], [0, 2, 3]))
    w = table.weight.value
    np.testing.assert_allclose(out.data, [w[2], w[3]])  # 7 -> 2; 5 -> 0 is padding
    with pytest.raises(TypeError, match="Ragged"):
        EmbeddingBag(table)([1, 2])
    with pytest.raises(ValueError, match="combiner"):
        EmbeddingBag(table, "max")


def test_embedding_bag_collection_tables_and_sharing():
    ebc = EmbeddingBagCollection(SPEC, 4, "emb", seed=1, combiner={"tags": "mean"},
                                 tables={"item": "items", "tags": "items"})
    assert list(ebc.tables) == ["user", "items"]
    assert ebc.tables["items"].num_embeddings == 9
    assert [v.name for v in ebc.variables()] == ["emb/weight"]  # user rows 0-5, items 6-14
    assert ebc.weight.shape == (6 + 9, 4)
    assert np.shares_memory(ebc.tables["items"].weight.value, ebc.weight.value)
    assert collections.get_collection(collections.EMBEDDING_VARIABLES) == ebc.variables()
    batch = make_batch()
    outs = ebc(batch)
    items = ebc.tables["items"].weight.value
    np.testing.assert_allclose(outs[1].data, items[[8, 0, 3]])
    np.testing.assert_allclose(outs[2].data[0], (items[2] + 0.5 * items[3]) / 1.5, rtol=1e-6)
    stacked = ebc.stacked(batch)
    assert stacked.shape == (3, 3, 4)
    grads = ad.compute_gradients(stacked.sum())
    assert [v.name for _, v in grads] == ["emb/weight"]
    grad = grads[0][0]
    assert isinstance(grad, RowSparseGrad)
    dense = grad.to_dense()[6:]  # the items table's rows
    # item ids 8, 0, 3 (coefficient 1 each) + tags under "mean": bag 0 holds
    # ids 2, 3 with weights 1, 0.5; bag 2 holds ids 8, 2 with weights 2, 1
    expected = np.zeros(9)
    expected[[8, 0, 3]] += 1
    expected[2] += 1 / 1.5 + 1 / 3
    expected[3] += 0.5 / 1.5
    expected[8] += 2 / 3
    np.testing.assert_allclose(dense[:, 0], expected, rtol=1e-6)
    with pytest.raises(ValueError, match="unknown features"):
        EmbeddingBagCollection(SPEC, 4, "emb2", tables={"nope": "x"})
    with pytest.raises(KeyError, match="no sparse feature 'user'"):
        ebc(Batch(batch.labels, batch.dense, {"item": batch.sparse["item"]}))


def test_feature_linear_matches_numpy():
    lin = FeatureLinear(SPEC, "lin", seed=0)
    rng = np.random.default_rng(0)
    for v in lin.variables():
        v.value[...] = rng.standard_normal(v.shape)
    batch = make_batch()
    w = {f: lin.weights.tables[f].weight.value[:, 0] for f in ("user", "item", "tags")}
    expected = (w["user"][[1, 5, 1]] + w["item"][[8, 0, 3]]
                + np.array([w["tags"][2] + 0.5 * w["tags"][3], 0.0, 2 * w["tags"][8] + w["tags"][2]])
                + batch.dense @ lin.dense.kernel.value[:, 0] + lin.bias.value[0])
    np.testing.assert_allclose(lin(batch).data, expected, rtol=1e-5)
    assert [v.name for v in lin.sparse_variables()] == ["lin/weight"]
    assert [v.name for v in lin.dense_variables()] == ["lin/dense/kernel", "lin/bias"]
    fresh = FeatureLinear(SPEC, "lin0")
    # everything starts at zero, as TF's linear models: tables, numeric
    # kernel (random before; Adam barely moved it on raw numerics) and bias
    for v in fresh.variables():
        assert not v.value.any(), v.name
    assert fresh.dense.kernel.shape == (SPEC.num_dense, 1)


def test_collection_sees_a_feature_replaced_in_the_same_batch_dict():
    # The fused lookup is cached per batch; replacing one feature's Ragged (or
    # its values) in the same dict must give the new ids' embeddings.
    from sparse_train.data import Batch
    spec = DataSpec((FeatureSpec("user", 4), FeatureSpec("item", 3)))
    ebc = EmbeddingBagCollection(spec, 2, "cache_test/emb", seed=1)
    batch = Batch(np.zeros(2, np.float32), None,
                  {"user": Ragged.from_dense([1, 3]), "item": Ragged.from_dense([0, 2])})
    table = ebc.weight.value
    np.testing.assert_array_equal(ebc.stacked(batch).data[:, 0], table[[1, 3]])
    batch.sparse["user"] = Ragged.from_dense([0, 2])
    np.testing.assert_array_equal(ebc.stacked(batch).data[:, 0], table[[0, 2]])
    batch.sparse["user"].values = np.array([3, 3], np.int64)
    np.testing.assert_array_equal(ebc.stacked(batch).data[:, 0], table[[3, 3]])
    np.testing.assert_array_equal(ebc.stacked(batch).data[:, 1], table[4 + np.array([0, 2])])
    batch.sparse["user"] = Ragged.from_dense([9, 0])
    with pytest.raises(ValueError, match="feature 'user': id 9"):
        ebc.stacked(batch)



def test_the_fused_ids_live_on_the_batch_not_the_layer():
    # Built once per batch (the distributed exchange and the forward share
    # them), kept in batch.derived: the layer holds no batch's arrays, a
    # second layer on the same batch builds its own (its rows are offset in
    # its own stacked table), and a bare dict of features is built afresh.
    from sparse_train.data import Batch
    spec = DataSpec((FeatureSpec("user", 4), FeatureSpec("item", 3)))
    a = EmbeddingBagCollection(spec, 2, "derived_test/a", seed=1)
    b = EmbeddingBagCollection(spec, 2, "derived_test/b", seed=2,
                               tables={"user": "shared", "item": "shared"})
    batch = Batch(np.zeros(2, np.float32), None,
                  {"user": Ragged.from_dense([1, 3]), "item": Ragged.from_dense([0, 2])})
    def fused_entries():
        return sum(1 for key in batch.derived if key[0] == "fused_ragged")
    fused_a = a.fused_ragged(batch)
    assert a.fused_ragged(batch) is fused_a and fused_entries() == 1
    assert not any(isinstance(v, tuple) for v in vars(a).values())  # no cached (key, ids)
    fused_b = b.fused_ragged(batch)
    assert fused_b is not fused_a and fused_entries() == 2
    # bag b * F + f; a: user rows 0..3, item rows 4..6 of its stacked table;
    # b: one shared table, both features read its rows from 0
    np.testing.assert_array_equal(fused_a.values, [1, 4, 3, 6])
    np.testing.assert_array_equal(fused_b.values, [1, 0, 3, 2])
    assert a.fused_ragged(batch.sparse) is not a.fused_ragged(batch.sparse)
    np.testing.assert_array_equal(a.fused_ragged(batch.sparse).values, fused_a.values)


def test_a_feature_checked_for_one_collection_is_checked_again_for_a_smaller_table():
    # the per-feature checks of a batch's features (run when the one scan of
    # the batch, ``bags_look_valid``, finds a problem; forced here) are
    # shared between collections whose tables have the same size (DeepFM's
    # embeddings and linear term); a table of another size checks again,
    # and a bad id still names the feature
    from sparse_train.data import Batch
    from sparse_train.nn import embedding_bag as eb
    big = DataSpec((FeatureSpec("user", 6), FeatureSpec("item", 3)))
    small = DataSpec((FeatureSpec("user", 4), FeatureSpec("item", 3)))
    a = EmbeddingBagCollection(big, 2, "checked_test/a", seed=1)
    same = EmbeddingBagCollection(big, 1, "checked_test/same", seed=2)
    b = EmbeddingBagCollection(small, 2, "checked_test/b", seed=3)

    def make():
        return Batch(np.zeros(2, np.float32), None,
                     {"user": Ragged.from_dense([1, 5]), "item": Ragged.from_dense([0, 2])})
    calls = []
    real, real_scan = eb.check_bags, eb.bags_look_valid

    def counting(*args):
        calls.append(args[-1])
        return real(*args)
    eb.check_bags = counting
    try:
        a.fused_ragged(make())   # valid: the scan alone, no per-feature check
        assert calls == []
        with pytest.raises(ValueError, match=r"feature 'user': id 5 at position 1 is "
                                             r"outside \[0, 4\)"):
            b.fused_ragged(make())
        assert calls == ["user"]
        calls.clear()
        eb.bags_look_valid = lambda *args: False
        batch = make()
        a.fused_ragged(batch)
        same.fused_ragged(batch)
        assert calls == ["user", "item"]        # the second collection reused both
        np.testing.assert_array_equal(same.fused_ragged(batch).values,
                                      same.fused_ragged(batch.sparse).values)
        with pytest.raises(ValueError, match=r"feature 'user': id 5 at position 1 is "
                                             r"outside \[0, 4\)"):
            b.fused_ragged(batch)
        # the bare dict is checked afresh; then b's smaller table checks "user" again
        assert calls[2:] == ["user", "item", "user"]
    finally:
        eb.check_bags, eb.bags_look_valid = real, real_scan


def test_feature_linear_sums_an_unweighted_bag():
    # TF's LinearClassifier(sparse_combiner="sum"): a bag of words adds its
    # words' weights (an embedding of the same bag would average them)
    from sparse_train.data import Batch
    spec = DataSpec((FeatureSpec("words", 6, multi_hot=True),))
    bag = Ragged(np.array([2, 3, 5, 1], np.int64), np.array([0, 3, 3, 4], np.int64))
    batch = Batch(np.zeros(3, np.float32), None, {"words": bag})
    w = np.array([0.0, 1.0, 2.0, 4.0, 8.0, 16.0], np.float32)
    for combiner, expected in ((None, [22.0, 0.0, 1.0]),
                               ({"words": "mean"}, [22.0 / 3, 0.0, 1.0])):
        lin = FeatureLinear(spec, f"bag_{combiner is None}", combiner=combiner)
        lin.weights.weight.value[:, 0] = w
        np.testing.assert_allclose(lin(batch).data, expected, rtol=1e-6)


@pytest.mark.parametrize("weighted", [False, True])
def test_an_all_sum_collection_shares_the_fused_ids_of_another_combiner(weighted):
    # DeepFM: the mean-combined embeddings fuse first; the linear term (all
    # sum, same tables) takes their ids and offsets as they are when it
    # needs no weights (with per-id weights it fuses its own). Either way
    # its lookup equals a fuse of its own (a bare dict: no sharing).
    from sparse_train.data import Batch
    spec = DataSpec((FeatureSpec("user", 4), FeatureSpec("tags", 5, multi_hot=True,
                                                         weighted=weighted)))
    mean = EmbeddingBagCollection(spec, 2, "share_test/mean", seed=1,
                                  combiner={"tags": "mean"})
    total = EmbeddingBagCollection(spec, 1, "share_test/sum", seed=2,
                                   combiner={"tags": "sum"})
    tags = Ragged([1, 4, 2, 0], [0, 2, 2, 4], [1.0, 2.0, 0.5, 1.5] if weighted else None)
    batch = Batch(np.zeros(3, np.float32), None,
                  {"user": Ragged.from_dense([1, 3, 0]), "tags": tags})
    from sparse_train.nn import embedding_bag as eb
    scans, real_scan = [], eb.bags_look_valid

    def counting(*args):
        scans.append(1)
        return real_scan(*args)
    eb.bags_look_valid = counting
    try:
        mean.fused_ragged(batch)
        shared = total.fused_ragged(batch)
        # shared ids: the very arrays were scanned for the mean fuse, not again
        assert len(scans) == (2 if weighted else 1)
        own = total.fused_ragged(batch.sparse)
        assert len(scans) == (3 if weighted else 2)  # a bare dict: scanned afresh
    finally:
        eb.bags_look_valid = real_scan
    for got, want in ((shared.values, own.values), (shared.offsets, own.offsets),
                      (shared.weights, own.weights)):
        np.testing.assert_array_equal(got, want)
    assert (shared.values is mean.fused_ragged(batch).values) == (not weighted)
    # bag b * 2 + f; the ids are the stacked table's rows: user r -> r, tags t -> 4 + t
    np.testing.assert_array_equal(own.values, [1, 5, 8, 3, 0, 6, 4])
    np.testing.assert_array_equal(own.offsets, [0, 1, 3, 4, 4, 5, 7])
