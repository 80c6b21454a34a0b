"""Small specs, batches and a float64 finite-difference check for models."""
import numpy as np

from sparse_train import RowSparseGrad
from sparse_train import autodiff as ad
from sparse_train.data import Batch, DataSpec, FeatureSpec
from sparse_train.ragged import Ragged

SPEC = DataSpec((FeatureSpec("user", 11), FeatureSpec("item", 13),
                 FeatureSpec("tags", 7, multi_hot=True, weighted=True)),
                ("age", "price"))

#: Small widths so the finite-difference tests stay fast.
SMALL = {"lr": {}, "fm": {}, "wide_deep": {"hidden_units": (6, 5)},
         "deepfm": {"hidden_units": (6, 5)},
         "dcn": {"hidden_units": (6,), "num_cross_layers": 2},
         "dlrm": {"bottom_mlp": (5,), "top_mlp": (6,)}}


def make_batch(seed=0, size=6, spec=SPEC):
    rng = np.random.default_rng(seed)
    sparse = {}
    for feature in spec.sparse_features:
        if feature.multi_hot:
            lengths = rng.integers(0, 4, size)
            values = rng.integers(0, feature.num_embeddings, lengths.sum())
            weights = rng.uniform(0.5, 2.0, lengths.sum()) if feature.weighted else None
            sparse[feature.name] = Ragged.from_lengths(values, lengths, weights)
        else:
            sparse[feature.name] = Ragged.from_dense(rng.integers(0, feature.num_embeddings, size))
    return Batch(labels=rng.integers(0, 2, size).astype(np.float32),
                 dense=rng.standard_normal((size, spec.num_dense)).astype(np.float32),
                 sparse=sparse)


def to_float64(model, seed=0):
    """Run the model in double precision (test only): every Variable's value
    becomes float64, randomised so no weight is exactly zero."""
    rng = np.random.default_rng(seed)
    for var in model.variables():
        value = var.value.astype(np.float64)
        if not value.any():  # zero-initialised tables and biases
            value = rng.uniform(-0.3, 0.3, value.shape)
        var.value = value


def check_model_gradients(model, batch, entries_per_variable=4, seed=0, eps=1e-6):
    """d loss / d variable against central differences on a few entries of
    every variable (tables: rows the batch touches, and one row it does not).
    Returns the gradients."""
    rng = np.random.default_rng(seed)
    variables = model.variables()
    grads = ad.gradients(model.loss(batch), variables)

    def loss():
        with ad.no_grad():
            return float(model.loss(batch).data)

    for var, grad in zip(variables, grads):
        assert grad is not None, f"no gradient for {var.name}"
        if var in model.sparse_variables():
            assert isinstance(grad, RowSparseGrad), var.name
            touched = np.unique(grad.indices)
            rows = list(rng.choice(touched, size=min(entries_per_variable, touched.size),
                                   replace=False))
            untouched = np.setdiff1d(np.arange(var.shape[0]), touched)
            rows += list(untouched[:1])
            dense_grad = grad.to_dense()
            entries = [(r, rng.integers(var.shape[1])) for r in rows]
        else:
            assert isinstance(grad, np.ndarray) and grad.shape == var.shape, var.name
            dense_grad = grad
            entries = [tuple(rng.integers(n) for n in var.shape)
                       for _ in range(entries_per_variable)]
        for index in entries:
            saved = var.value[index]
            var.value[index] = saved + eps
            up = loss()
            var.value[index] = saved - eps
            down = loss()
            var.value[index] = saved
            numeric = (up - down) / (2 * eps)
            assert abs(dense_grad[index] - numeric) <= 1e-7 + 1e-4 * abs(numeric), (
                f"{var.name}{index}: autodiff {dense_grad[index]} vs numeric {numeric}")
    return grads
