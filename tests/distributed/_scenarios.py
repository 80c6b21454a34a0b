"""Models, batches and upstream gradients shared by the MPI worker and the
single-process references of the tests (both must build the same thing)."""
import numpy as np

import sparse_train as st
from sparse_train import autodiff as ad
from sparse_train.checkpoint import optimizer_state_dict
from sparse_train.data import Batch, DataSpec, FeatureSpec
from sparse_train.data._batching import slice_rows

# -------------------------------------------------------- lookup scenario
#: Every lookup feature the exchange must get right: one id a bag (sum),
#: multi-hot with empty bags (mean), weighted with zero-weight bags (sqrtn),
#: two features on one table, a table smaller than the world, hashed ids
#: (hash_ids) and a padding id.
LOOKUP_SPEC = DataSpec(
    (FeatureSpec("one", 50), FeatureSpec("multi", 40, multi_hot=True),
     FeatureSpec("weighted", 30, multi_hot=True, weighted=True),
     FeatureSpec("shared_a", 25), FeatureSpec("shared_b", 20, multi_hot=True),
     FeatureSpec("tiny", 2), FeatureSpec("hashed", 17), FeatureSpec("padded", 12, multi_hot=True)),
    ("x0", "x1"))
LOOKUP_OPTIONS = dict(embedding_dim=4, seed=3, scope="lk",
                      combiner={"weighted": "sqrtn", "shared_b": "sum"},
                      tables={"shared_a": "shared", "shared_b": "shared"})
HASH_RANGE = 1000
PADDING_IDX = 3
#: Global batch sizes of the steps: not divisible by 2 or 3, and one
#: smaller than the world (a rank with no example).
LOOKUP_BATCH_SIZES = (37, 2, 23, 37)

#: Optimizers of the lookup scenario, with hyperparameters that make every
#: term of each rule show (AdagradDecay decays every 2 steps).
OPTIMIZERS = {
    "sgd": lambda gs: st.optim.GradientDescent(0.3, name="opt"),
    "adagrad": lambda gs: st.optim.Adagrad(0.3, initial_accumulator_value=0.2, epsilon=1e-3,
                                           name="opt"),
    "adagrad_decay": lambda gs: st.optim.AdagradDecay(0.3, gs, initial_accumulator_value=0.2,
                                                      accumulator_decay_step=2,
                                                      accumulator_decay_rate=0.5, name="opt"),
    "adam": lambda gs: st.optim.Adam(0.05, beta1=0.8, beta2=0.95, epsilon=1e-6, name="opt"),
    "lazy_adam": lambda gs: st.optim.LazyAdam(0.05, beta1=0.8, beta2=0.95, epsilon=1e-6,
                                              name="opt"),
    "rowwise_adagrad": lambda gs: st.optim.RowwiseAdagrad(0.3, epsilon=1e-3, name="opt"),
}


def lookup_model():
    """An FM over ``LOOKUP_SPEC`` with a hashed and a padded table (linear
    tables drawn non-zero, so their lookups show too)."""
    model = st.build_model("fm", LOOKUP_SPEC, **LOOKUP_OPTIONS)
    rng = np.random.default_rng(7)
    for table in model.linear.weights.tables.values():
        table.weight.value[:] = rng.normal(0, 0.1, table.weight.shape)
    for collection in (model.linear.weights, model.embedding):
        collection.tables["hashed"].hash_ids = True
        padded = collection.tables["padded"]
        padded.padding_idx = PADDING_IDX
        padded.weight.value[PADDING_IDX] = 0.0
    return model


def lookup_batch(step):
    """The global batch of step ``step`` (the same on every rank)."""
    rng = np.random.default_rng(100 + step)
    size = LOOKUP_BATCH_SIZES[step]
    sparse = {}
    for feature in LOOKUP_SPEC.sparse_features:
        high = HASH_RANGE if feature.name == "hashed" else feature.num_embeddings
        lengths = (rng.integers(0, 5, size) if feature.multi_hot else np.ones(size, np.int64))
        values = rng.integers(0, high, int(lengths.sum()))
        if feature.name == "padded":
            values[rng.random(values.shape[0]) < 0.3] = PADDING_IDX
        weights = None
        if feature.weighted:
            weights = rng.choice(np.array([0.0, 0.5, 1.0, 2.5], np.float32), values.shape[0])
        sparse[feature.name] = st.Ragged.from_lengths(values, lengths, weights)
    labels = rng.integers(0, 2, size).astype(np.float32)
    dense = rng.normal(size=(size, LOOKUP_SPEC.num_dense)).astype(np.float32)
    return Batch(labels, dense, sparse)


def lookup_outputs(model, batch):
    """[(name, Tensor)] of every lookup of the model, in a fixed order."""
    linear = model.linear.weights(batch)
    embedding = model.embedding(batch)
    names = model.embedding.feature_names
    return ([(f"linear/{n}", t) for n, t in zip(names, linear)]
            + [(f"embedding/{n}", t) for n, t in zip(names, embedding)])


def upstream_loss(outputs, step, start, stop):
    """``sum_f sum(out_f * G_f)``: its gradient w.r.t. lookup f is exactly G_f,
    a fixed [B_global, D] array of step ``step`` (rows start:stop here)."""
    rng = np.random.default_rng(500 + step)
    total = None
    for _, out in outputs:
        full = rng.normal(size=(LOOKUP_BATCH_SIZES[step], out.shape[1])).astype(np.float32)
        term = ad.reduce_sum(out * full[start:stop])
        total = term if total is None else total + term
    return total


# --------------------------------------------------------- model scenario
MODEL_STEPS = 4


def model_data():
    """A small synthetic click log and its global batches."""
    from sparse_train.data import open_dataset
    data = open_dataset(format="synthetic", num_examples=1100, seed=5, batch_size=250)
    return data, list(data.batches(shuffle=True, seed=1))


def model_setup(spec):
    """DeepFM with AdagradDecay tables and Adam dense layers."""
    model = st.build_model("deepfm", spec, embedding_dim=8, seed=0, hidden_units=(32, 16),
                           scope="dfm")
    step = st.GlobalStep()
    sparse = st.optim.AdagradDecay(0.05, step, accumulator_decay_step=2, name="sparse")
    dense = st.optim.Adam(0.002, name="dense")
    return model, sparse, dense, step


# ----------------------------------------------------------------- state
def state_of(variables, optimizers, global_step=None):
    """{name: array copy} of variables, optimizer state and global step."""
    state = {v.name: v.value.copy() for v in variables}
    for opt in optimizers:
        state.update({k: np.array(v, copy=True) for k, v in optimizer_state_dict(opt).items()})
    if global_step is not None:
        state["global_step"] = np.array(int(global_step))
    return state


def batch_rows(batch, rank, size):
    start, stop = batch.size * rank // size, batch.size * (rank + 1) // size
    return slice_rows(batch, start, stop), start, stop


# ------------------------------------------------------ one-process references
def lookups_reference():
    """What ``_worker.lookups`` must produce, computed by one process."""
    arrays = {}
    for kind, make in OPTIMIZERS.items():
        model = lookup_model()
        step = st.GlobalStep()
        opt = make(step)
        for s in range(len(LOOKUP_BATCH_SIZES)):
            batch = lookup_batch(s)
            outputs = lookup_outputs(model, batch)
            arrays.update({f"{kind}/out/{s}/{n}": t.data for n, t in outputs})
            loss = upstream_loss(outputs, s, 0, batch.size)
            opt.apply_gradients(ad.compute_gradients(loss, model.sparse_variables()),
                                global_step=step)
        state = state_of(model.sparse_variables(), [opt], step)
        arrays.update({f"{kind}/state/{n}": a for n, a in state.items()})
    return arrays


def model_reference():
    """What ``_worker.model`` must produce (up to the dense bound), one process."""
    data, batches = model_data()
    model, sparse, dense, step = model_setup(data.spec)
    arrays, losses = {}, []
    for i, batch in enumerate(batches[:MODEL_STEPS]):
        losses.append(st.train_step(model, batch, sparse, dense, step))
        if i == 0:
            arrays.update({f"first/{n}": a for n, a in
                           state_of(model.variables(), [sparse, dense], step).items()})
    arrays.update({f"last/{n}": a for n, a in
                   state_of(model.variables(), [sparse, dense], step).items()})
    figures = st.models.evaluate(model, batches)
    arrays["losses"] = np.array(losses)
    arrays["eval"] = np.array([figures["auc"], figures["logloss"], figures["num_examples"]])
    return arrays, model
