"""EmbeddingBagCollection / models over DynamicEmbeddingTables: the same
training as the static stacked tables, counting only in training lookups,
eviction at checkpoint saves, the best state kept whole."""
import numpy as np
import pytest

pytest.importorskip("sparse_train.nn.dynamic_embedding",
                    reason="DynamicEmbeddingTable (branch dyncore) is not merged yet")

import sparse_train as st  # noqa: E402
from sparse_train.data import Batch, DataSpec, FeatureSpec, SyntheticClickLog  # noqa: E402
from sparse_train.nn import EmbeddingBagCollection  # noqa: E402
from sparse_train.ragged import Ragged  # noqa: E402
from sparse_train.training import MemoryState, fit, train_step  # noqa: E402

SPEC = DataSpec((FeatureSpec("user", 11), FeatureSpec("item", 13),
                 FeatureSpec("tags", 7, multi_hot=True, weighted=True)), ("age", "price"))


def batches(count=4, size=6, seed=0):
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(count):
        lengths = rng.integers(0, 4, size)
        sparse = {"user": Ragged.from_dense(rng.integers(0, 11, size)),
                  "item": Ragged.from_dense(rng.integers(0, 13, size)),
                  "tags": Ragged.from_lengths(rng.integers(0, 7, lengths.sum()), lengths,
                                              rng.uniform(0.5, 2.0, lengths.sum()))}
        out.append(Batch(rng.integers(0, 2, size).astype(np.float32),
                         rng.standard_normal((size, 2)).astype(np.float32), sparse))
    return out


def admit_all(model, global_step=0):
    """Admit keys 0..V-1 of every feature by one training lookup (rows are a
    function of (seed, key) only); returns {table name: rows [V, D]}."""
    rows = {}
    for collection in model.embedding_collections():
        for feature, table in zip(collection.bags, collection.tables.values()):
            size = SPEC.feature(feature).num_embeddings
            table.lookup(np.arange(size), np.arange(size + 1), training=True,
                         global_step=global_step)
            rows[table.name] = table.export()["values"]
    return rows


@pytest.mark.parametrize("sparse_kind", ["adagrad_decay", "lazy_adam"])
def test_filter_freq_0_trains_like_the_static_tables(sparse_kind):
    """Keys 0..V-1, the static model started from the dynamic tables' rows:
    the same losses, rows and optimizer slots, bit for bit. (Combiner "sum":
    the stacked path pools mean / sqrtn as per-id weights w / divisor, equal
    to the per-feature division only up to rounding.)"""
    models, optimizers, steps = {}, {}, {}
    for kind in ("static", "dynamic"):
        models[kind] = st.build_model("deepfm", SPEC, embedding_dim=4, seed=1, scope=kind,
                                      hidden_units=(5,), combiner="sum",
                                      dynamic={"filter_freq": 0} if kind == "dynamic" else None)
        steps[kind] = st.GlobalStep()
        optimizers[kind] = (st.optim.build_optimizer(sparse_kind, 0.05, steps[kind],
                                                     name="sparse"),
                            st.optim.build_optimizer("adam", 0.01, steps[kind], name="dense"))
    static, dynamic = models["static"], models["dynamic"]
    rows = admit_all(dynamic)
    for s_collection, d_collection in zip(static.embedding_collections(),
                                          dynamic.embedding_collections()):
        for feature in s_collection.bags:
            s_collection.tables[feature].weight.value[...] = rows[
                d_collection.tables[feature].name]
    for s_var, d_var in zip(static.dense_variables(), dynamic.dense_variables()):
        d_var.value[...] = s_var.value
    losses = {kind: [] for kind in models}
    for batch in batches() * 2:
        for kind, model in models.items():
            losses[kind].append(train_step(model, batch, *optimizers[kind], steps[kind]))
    assert losses["static"] == losses["dynamic"]
    sparse_static = optimizers["static"][0]
    for s_collection, d_collection in zip(static.embedding_collections(),
                                          dynamic.embedding_collections()):
        first = 0
        for feature, d_table in zip(d_collection.bags, d_collection.tables.values()):
            size = SPEC.feature(feature).num_embeddings
            state = d_table.export()
            np.testing.assert_array_equal(state["keys"], np.arange(size))
            np.testing.assert_array_equal(state["values"],
                                          s_collection.weight.value[first:first + size])
            for slot in sparse_static.get_slot_names():
                static_slot = sparse_static.get_slot(s_collection.weight, slot).value
                np.testing.assert_array_equal(state[slot], static_slot[first:first + size],
                                              err_msg=f"{d_table.name} slot {slot}")
            first += size
    for s_var, d_var in zip(static.dense_variables(), dynamic.dense_variables()):
        np.testing.assert_array_equal(s_var.value, d_var.value)


def test_only_training_lookups_count_and_admit():
    model = st.build_model("fm", SPEC, embedding_dim=4, scope="counting",
                           dynamic={"filter_freq": 2})
    user = model.embedding.tables["user"]
    assert user.weight in model.sparse_variables() and user.weight in model.variables()
    gs = st.GlobalStep(5)
    opt = st.optim.build_optimizer("adagrad", 0.1)
    batch = batches(1, size=3)[0]
    batch.sparse["user"] = Ragged.from_dense([1, 1, 2])
    train_step(model, batch, opt, None, gs)
    assert user.keys().tolist() == [1]  # 1 seen twice, 2 once
    state = user.export()
    assert state["counts"].tolist() == [2] and state["last_seen"].tolist() == [5]
    unseen = batches(1, size=4, seed=1)[0]
    unseen.sparse["user"] = Ragged.from_dense([2, 2, 9, 9])
    model.predict(unseen)
    st.training.evaluate(model, [unseen])
    assert user.keys().tolist() == [1] and user.export()["counts"].tolist() == [2]
    # keys without a row read the default value (0) outside training
    pooled = model.embedding.stacked(unseen).data
    assert not pooled[:, 0].any()
    train_step(model, batch, opt, None, gs)  # 2 reaches its second occurrence
    assert user.keys().tolist() == [1, 2]


def test_fit_evicts_before_each_save_and_memory_state_restores():
    log = SyntheticClickLog(300, categorical_sizes=(30, 20), multi_hot_sizes=(), num_dense=1,
                            batch_size=50, seed=2, raw_keys=True)
    train, valid = log.split(0.2, seed=0)
    model = st.build_model("lr", train.spec, scope="evicting", dynamic={"steps_to_live": 1})
    assert all(c.is_dynamic for c in model.embedding_collections())
    gs = st.GlobalStep()
    opt = st.optim.build_optimizer("adagrad", 0.1)
    seen = []

    class Manager:
        def save(self, number, metadata):
            for table in model.dynamic_tables():  # only the last step's keys are left
                seen.append((number, set(table.export()["last_seen"].tolist())))
    result = fit(train, valid, lambda b: train_step(model, b, opt, None, gs),
                 lambda bs: st.training.evaluate(model, bs), gs, epochs=2, manager=Manager(),
                 checkpoint_every=2, progress=None, evict=model.evict)
    assert seen and all(stamps <= {number - 1} for number, stamps in seen)
    assert result["evicted_keys"] > 0
    keep = MemoryState(lambda: model.variables() + opt.variables(), gs)
    keep.save(int(gs))
    before = {t.name: t.state_dict() for t in model.dynamic_tables()}
    for batch in train.batches():
        train_step(model, batch, opt, None, gs)
    keep.restore(int(result["global_step"]))
    for table in model.dynamic_tables():
        after = table.state_dict()
        assert sorted(after) == sorted(before[table.name])
        for key, value in before[table.name].items():
            np.testing.assert_array_equal(after[key], value, err_msg=f"{table.name} {key}")


def test_dynamic_collection_surface_and_errors():
    raw = DataSpec((FeatureSpec("a", None), FeatureSpec("b", None, multi_hot=True)))
    ebc = EmbeddingBagCollection(raw, 3, "surface")  # raw keys: dynamic by itself
    assert ebc.is_dynamic and [v.name for v in ebc.variables()] == ["surface/a", "surface/b"]
    assert ebc.bags == {"a": "sum", "b": "mean"}
    out = ebc.stacked({"a": Ragged.from_dense([2 ** 62, -5]),
                       "b": Ragged([7, 8, 9], [0, 1, 3])})
    assert out.shape == (2, 2, 3) and ebc.admitted_keys() == {"surface/a": 0, "surface/b": 0}
    with pytest.raises(ValueError, match="share table"):
        EmbeddingBagCollection(raw, 3, "shared", tables={"a": "t", "b": "t"})
    with pytest.raises(ValueError, match="unknown option"):
        EmbeddingBagCollection(raw, 3, "typo", dynamic={"filter_frequency": 2})
    capped = EmbeddingBagCollection(raw, 3, "capped", dynamic={"max_pending": 5})
    assert {t.max_pending for t in capped.tables.values()} == {5}
    with pytest.raises(ValueError, match="no stacked weight"):
        ebc.weight
