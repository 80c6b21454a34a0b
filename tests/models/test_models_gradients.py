"""Whole models against finite differences (double precision)."""
import numpy as np
import pytest

from sparse_train import RowSparseGrad, collections
from sparse_train import autodiff as ad
from sparse_train.data import DataSpec
from sparse_train.models import MODELS, build_model

from _models_common import SMALL, SPEC, check_model_gradients, make_batch, to_float64


@pytest.fixture(autouse=True)
def _fresh_collections():
    collections.reset_collections()
    yield
    collections.reset_collections()


@pytest.mark.parametrize("name", sorted(MODELS))
def test_model_gradients_match_finite_differences(name):
    model = build_model(name, SPEC, embedding_dim=3, seed=1, **SMALL[name])
    to_float64(model)
    check_model_gradients(model, make_batch(seed=2), entries_per_variable=6)


def test_deepfm_with_a_shared_table():
    model = build_model("deepfm", SPEC, embedding_dim=3, hidden_units=(6,),
                         tables={"item": "ids", "tags": "ids"})
    names = [v.name for v in model.sparse_variables()]
    assert names == ["deepfm/linear/weight", "deepfm/embedding/weight"]  # stacked tables
    assert [v.shape[0] for v in model.sparse_variables()] == [11 + 13, 11 + 13]  # user + ids
    to_float64(model)
    check_model_gradients(model, make_batch(seed=3, size=8), entries_per_variable=6)


def test_models_without_numeric_features():
    spec = DataSpec(SPEC.sparse_features)
    for name in sorted(MODELS):
        model = build_model(name, spec, embedding_dim=3, seed=0, **SMALL[name])
        to_float64(model)
        check_model_gradients(model, make_batch(seed=4, spec=spec), entries_per_variable=2)


@pytest.mark.parametrize("name", sorted(MODELS))
def test_float32_gradients_match_float64(name):
    """The float32 path (Numba lookups, float32 BLAS) gives the gradients of
    the double-precision run to float32 accuracy."""
    model = build_model(name, SPEC, embedding_dim=4, seed=5, **SMALL[name])
    for var in model.variables():  # no exact zeros (zero-initialised tables)
        var.value += np.random.default_rng(0).uniform(-0.1, 0.1, var.shape).astype(np.float32)
    batch = make_batch(seed=6, size=32)
    single = ad.gradients(model.loss(batch), model.variables())
    for var in model.variables():
        var.value = var.value.astype(np.float64)
    double = ad.gradients(model.loss(batch), model.variables())
    for var, g32, g64 in zip(model.variables(), single, double):
        assert type(g32) is type(g64), var.name
        if isinstance(g32, RowSparseGrad):
            g32, g64 = g32.to_dense(), g64.to_dense()
        else:
            assert g32.dtype == np.float32 and g64.dtype == np.float64
        scale = np.abs(g64).max()
        np.testing.assert_allclose(g32, g64, rtol=0, atol=1e-5 * scale + 1e-9, err_msg=var.name)
