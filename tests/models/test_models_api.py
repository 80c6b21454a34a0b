"""build_model and the model objects: names, options, outputs, variables."""
import numpy as np
import pytest

from sparse_train import RowSparseGrad, collections
from sparse_train import autodiff as ad
from sparse_train.models import MODELS, CTRModel, build_model, model_options

from _models_common import SMALL, SPEC, make_batch


@pytest.fixture(autouse=True)
def _fresh_collections():
    collections.reset_collections()
    yield
    collections.reset_collections()


def test_registry_names():
    assert sorted(MODELS) == ["dcn", "deepfm", "dlrm", "fm", "lr", "wide_deep"]


@pytest.mark.parametrize("name", sorted(MODELS))
def test_every_model_runs_and_splits_its_variables(name):
    model = build_model(name, SPEC, embedding_dim=4, seed=0, **SMALL[name])
    assert isinstance(model, CTRModel) and model.name == name
    batch = make_batch(seed=1, size=5)
    logits = model.forward(batch)
    assert isinstance(logits, ad.Tensor) and logits.shape == (5,) and logits.dtype == np.float32
    p = model.predict(batch)
    assert p.dtype == np.float32
    np.testing.assert_allclose(p, 1 / (1 + np.exp(-logits.data)), rtol=1e-6)
    names = [v.name for v in model.variables()]
    assert len(set(names)) == len(names) and all(n.startswith(f"{name}/") for n in names)
    assert model.variables() == model.sparse_variables() + model.dense_variables()
    grads = dict((v.name, g) for g, v in ad.compute_gradients(model.loss(batch), model.variables()))
    for var in model.sparse_variables():
        assert var.value.dtype == np.float32 and len(var.shape) == 2
        assert isinstance(grads[var.name], RowSparseGrad), var.name
    for var in model.dense_variables():
        assert isinstance(grads[var.name], np.ndarray) and grads[var.name].dtype == np.float32
    assert model.get_config()["model"] == name


@pytest.mark.parametrize("name", sorted(MODELS))
def test_seed_repeats_and_changes(name):
    batch = make_batch(seed=1)
    first = build_model(name, SPEC, 4, seed=7, **SMALL[name]).forward(batch).data
    again = build_model(name, SPEC, 4, seed=7, **SMALL[name]).forward(batch).data
    other = build_model(name, SPEC, 4, seed=8, **SMALL[name])
    np.testing.assert_array_equal(first, again)
    if name == "lr":  # LR starts at zero: compare its (empty) randomness via a table
        return
    assert not np.array_equal(first, other.forward(batch).data)


def test_default_widths():
    deepfm = build_model("deepfm", SPEC)
    assert [layer.out_features for layer in deepfm.deep.layers()] == [400, 400, 400, 1]
    assert deepfm.deep.in_features == 3 * 16 + 2
    dlrm = build_model("dlrm", SPEC, embedding_dim=8)
    assert [layer.out_features for layer in dlrm.bottom.layers()] == [512, 256, 64, 8]
    assert [layer.out_features for layer in dlrm.top.layers()] == [512, 256, 1]
    assert dlrm.top.in_features == 8 + 4 * 3 // 2  # z plus the pairs of 4 vectors
    assert model_options("dcn")["num_cross_layers"] == 3


def test_bad_names_and_options():
    with pytest.raises(ValueError, match="unknown model 'xgboost'; models are"):
        build_model("xgboost", SPEC)
    with pytest.raises(ValueError, match=r"no option\(s\) \['depth'\]"):
        build_model("deepfm", SPEC, depth=3)
    with pytest.raises(ValueError, match="embedding_dim must be a positive integer"):
        build_model("fm", SPEC, embedding_dim=0)
    with pytest.raises(TypeError, match="DataSpec"):
        build_model("lr", {"user": 3})
    model = build_model("lr", SPEC)
    batch = make_batch()
    batch.dense = batch.dense[:, :1]
    with pytest.raises(ValueError, match=r"batch.dense has shape \(6, 1\), expected \[6, 2\]"):
        model.forward(batch)


def test_two_models_in_one_process_need_different_scopes():
    a = build_model("deepfm", SPEC, 4, hidden_units=(4,), scope="a")
    b = build_model("deepfm", SPEC, 4, hidden_units=(4,), scope="b")
    assert {v.name.split("/")[0] for v in a.variables() + b.variables()} == {"a", "b"}


def test_deepfm_learns_a_planted_model():
    """A sanity check of the whole loop: loss on a learnable task falls."""
    from sparse_train import GlobalStep, functional, optim
    from sparse_train.models import train_step
    rng = np.random.default_rng(0)
    planted = {f.name: (rng.standard_normal((f.num_embeddings, 1)) * 2).astype(np.float32)
               for f in SPEC.sparse_features}
    batches = []
    for seed in range(8):
        batch = make_batch(seed=seed, size=64)
        logit = sum(functional.embedding_bag(planted[n], r.values, r.offsets, r.weights)[:, 0]
                    for n, r in batch.sparse.items())
        batch.labels = (rng.uniform(size=64) < 1 / (1 + np.exp(-logit))).astype(np.float32)
        batches.append(batch)
    model = build_model("deepfm", SPEC, 4, seed=0, hidden_units=(16,))
    gs = GlobalStep()
    sparse, dense = optim.Adagrad(0.1), optim.Adam(0.01)
    first = np.mean([float(model.loss(b).data) for b in batches])
    for _ in range(15):
        for b in batches:
            train_step(model, b, sparse, dense, gs)
    last = np.mean([float(model.loss(b).data) for b in batches])
    assert int(gs) == 15 * 8
    assert last < 0.8 * first, (first, last)


def test_embedding_init_scale():
    small = build_model("fm", SPEC, 4, seed=2)
    full = build_model("fm", SPEC, 4, seed=2, embedding_init_scale=1.0)  # same names, same seeds
    assert small.get_config()["embedding_init_scale"] == 0.1
    for name in ("user", "tags"):
        a = small.embedding.tables[name].weight.value
        b = full.embedding.tables[name].weight.value
        assert b.std() > 0.15  # truncated normal, stddev 1/sqrt(4) before truncation
        np.testing.assert_allclose(a, b * np.float32(0.1), rtol=1e-6)
    with pytest.raises(ValueError, match="init_scale must be > 0"):
        build_model("fm", SPEC, 4, embedding_init_scale=0.0)
