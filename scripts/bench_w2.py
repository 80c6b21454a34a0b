"""W2 of BENCH.md: end-to-end CTR training, samples per second.

26 categorical features (one table each, Zipf(1.1) ids), 13 numeric
features, embedding_dim 16, batch 4096; models LR, FM, DeepFM (MLP
400-400-400) and DLRM. Tables on AdagradDecay and dense layers on Adam for
ours; the same model written here in PyTorch (``EmbeddingBag(sparse=True)``
tables on ``optim.Adagrad``, dense layers on ``optim.Adam``) runs in the same
rounds, alternating.

Our side is ``sparse_train.models`` (``build_model`` / ``train_step``);
``make_ours_step`` is the one place that plugs it in.
"""
import sparse_train as st  # first: sets the thread pools' spin limits before numpy loads
import numba
import numpy as np
from sparse_train.data import Batch, DataSpec, FeatureSpec

from bench_common import Contender, alternate, draw_ids, free_memory, ratio, torch
from bench_workloads import VOCABULARY_SIZES

MODELS = ("lr", "fm", "deepfm", "dlrm")
EMBEDDING_DIM = 16
NUM_DENSE = 13
BATCH_SIZE = 4096
SPARSE_LEARNING_RATE = 0.01
DENSE_LEARNING_RATE = 0.001


def make_spec(vocabulary_sizes=VOCABULARY_SIZES, num_dense=NUM_DENSE):
    sparse = tuple(FeatureSpec(f"C{i + 1}", int(v)) for i, v in enumerate(vocabulary_sizes))
    return DataSpec(sparse, tuple(f"I{i + 1}" for i in range(num_dense)))


def synthetic_click_log(spec, num_batches, batch_size=BATCH_SIZE, seed=0):
    """``num_batches`` Batches of a click log with Zipf(1.1) ids (ranks
    permuted per feature) and labels from a planted logistic model: a hidden
    effect per id (hashed into 1009 buckets) plus a linear term of the
    log1p-transformed numeric features."""
    rng = np.random.default_rng(seed)
    permutations = [rng.permutation(f.num_embeddings) for f in spec.sparse_features]
    effects = rng.normal(0.0, 0.5, (len(spec.sparse_features), 1009))
    dense_weights = rng.normal(0.0, 0.3, spec.num_dense)
    offsets = np.arange(batch_size + 1, dtype=np.int64)
    batches = []
    for _ in range(num_batches):
        sparse, logit = {}, np.full(batch_size, -1.5)
        for f, (feature, permutation) in enumerate(zip(spec.sparse_features, permutations)):
            ids = draw_ids(rng, feature.num_embeddings, batch_size, "zipf", permutation)
            sparse[feature.name] = st.Ragged(ids, offsets)
            logit += effects[f, ids % 1009]
        dense = np.log1p(rng.lognormal(1.0, 1.5, (batch_size, spec.num_dense))).astype(np.float32)
        logit += (dense - dense.mean(axis=0)) @ dense_weights
        labels = (rng.random(batch_size) < 1.0 / (1.0 + np.exp(-logit))).astype(np.float32)
        batches.append(Batch(labels, dense, sparse))
    return batches


# ------------------------------------------------------------------ ours
def make_ours_step(model_name, spec, batches):
    """(step(i) for our model, None), or (None, why not). The only place
    where ``sparse_train.models`` is called."""
    try:
        from sparse_train import models
        build_model, train_step = models.build_model, models.train_step
    except (ImportError, AttributeError):
        return None, "sparse_train.models not available yet"
    model = build_model(model_name, spec, embedding_dim=EMBEDDING_DIM, seed=0)
    global_step = st.GlobalStep()
    sparse_optimizer = st.optim.AdagradDecay(SPARSE_LEARNING_RATE, global_step)
    dense_optimizer = st.optim.Adam(DENSE_LEARNING_RATE)

    def step(i):
        train_step(model, batches[i % len(batches)], sparse_optimizer, dense_optimizer,
                   global_step)
    return step, None


# ----------------------------------------------------------------- torch
def _mlp(sizes, last_relu):
    layers = []
    for i, (fan_in, fan_out) in enumerate(zip(sizes[:-1], sizes[1:])):
        layers.append(torch.nn.Linear(fan_in, fan_out))
        if i < len(sizes) - 2 or last_relu:
            layers.append(torch.nn.ReLU())
    return torch.nn.Sequential(*layers)


def _tables(vocabulary_sizes, dim, scale):
    tables = torch.nn.ModuleList(
        torch.nn.EmbeddingBag(v, dim, mode="sum", sparse=True) for v in vocabulary_sizes)
    with torch.no_grad():
        for table in tables:
            table.weight.uniform_(-scale, scale)
    return tables


class TorchCTR(torch.nn.Module if torch is not None else object):
    """LR, FM, DeepFM or DLRM over one ``EmbeddingBag`` per feature.

    - lr: bias + sum of 1-d feature weights + linear(numeric).
    - fm: lr + 0.5 * sum_d((sum_f e_f)^2 - sum_f e_f^2) (Rendle 2010).
    - deepfm: fm + MLP(concat(e_f, numeric)) 400-400-400-1 (Guo et al. 2017).
    - dlrm: bottom MLP 13-512-256-64-16 on numeric, pairwise dots of the 27
      vectors (no self pairs), top MLP 367-512-256-1 (Naumov et al. 2019,
      the Criteo Kaggle configuration).
    """

    def __init__(self, model_name, vocabulary_sizes, num_dense, dim):
        super().__init__()
        self.model_name = model_name
        num_features = len(vocabulary_sizes)
        self.first_order = None
        self.embeddings = None
        if model_name in ("lr", "fm", "deepfm"):
            self.first_order = _tables(vocabulary_sizes, 1, 0.01)
            self.dense_linear = torch.nn.Linear(num_dense, 1)
        if model_name != "lr":
            self.embeddings = _tables(vocabulary_sizes, dim, 0.05)
        if model_name == "deepfm":
            self.mlp = _mlp([num_features * dim + num_dense, 400, 400, 400, 1], False)
        if model_name == "dlrm":
            self.bottom = _mlp([num_dense, 512, 256, 64, dim], True)
            pairs = (num_features + 1) * num_features // 2
            self.top = _mlp([dim + pairs, 512, 256, 1], False)
            self.register_buffer("pair_index", torch.tril_indices(num_features + 1,
                                                                  num_features + 1, -1))

    def forward(self, ids, offsets, dense):
        logit = 0.0
        if self.first_order is not None:
            logit = self.dense_linear(dense)
            for table, feature_ids in zip(self.first_order, ids):
                logit = logit + table(feature_ids, offsets)
        if self.embeddings is None:
            return logit.squeeze(1)
        vectors = torch.stack([t(i, offsets) for t, i in zip(self.embeddings, ids)], dim=1)
        if self.model_name in ("fm", "deepfm"):
            total = vectors.sum(dim=1)
            logit = logit + 0.5 * (total * total - (vectors * vectors).sum(dim=1)).sum(
                dim=1, keepdim=True)
        if self.model_name == "deepfm":
            logit = logit + self.mlp(torch.cat([vectors.flatten(1), dense], dim=1))
        if self.model_name == "dlrm":
            z = self.bottom(dense)
            stacked = torch.cat([z.unsqueeze(1), vectors], dim=1)
            dots = torch.bmm(stacked, stacked.transpose(1, 2))
            pairs = dots[:, self.pair_index[0], self.pair_index[1]]
            logit = self.top(torch.cat([z, pairs], dim=1))
        return logit.squeeze(1)

    def sparse_parameters(self):
        tables = [self.first_order, self.embeddings]
        return [p for t in tables if t is not None for p in t.parameters()]

    def dense_parameters(self):
        sparse = {id(p) for p in self.sparse_parameters()}
        return [p for p in self.parameters() if id(p) not in sparse]


def torch_batch(batch, spec):
    offsets = None
    ids = []
    for feature in spec.sparse_features:
        ragged = batch.sparse[feature.name]
        ids.append(torch.from_numpy(ragged.values))
        offsets = torch.from_numpy(ragged.offsets[:-1])
    return ids, offsets, torch.from_numpy(batch.dense), torch.from_numpy(batch.labels)


def make_torch_step(model_name, spec, batches):
    model = TorchCTR(model_name, [f.num_embeddings for f in spec.sparse_features],
                     spec.num_dense, EMBEDDING_DIM)
    sparse_optimizer = torch.optim.Adagrad(model.sparse_parameters(), lr=SPARSE_LEARNING_RATE,
                                           initial_accumulator_value=0.1)
    dense_optimizer = torch.optim.Adam(model.dense_parameters(), lr=DENSE_LEARNING_RATE)
    inputs = [torch_batch(b, spec) for b in batches]
    loss_fn = torch.nn.BCEWithLogitsLoss()

    def step(i):
        ids, offsets, dense, labels = inputs[i % len(inputs)]
        sparse_optimizer.zero_grad(set_to_none=True)
        dense_optimizer.zero_grad(set_to_none=True)
        loss = loss_fn(model(ids, offsets, dense), labels)
        loss.backward()
        sparse_optimizer.step()
        dense_optimizer.step()
    return step


# ------------------------------------------------------------------ run
def run_model(model_name, spec, batches, rounds, steps, warmup, with_torch):
    """Ours vs torch on one model, A B A B. Returns a flat dict; a side that
    cannot run has None figures and a ``note``."""
    contenders, notes = [], []
    ours_step, why = make_ours_step(model_name, spec, batches)
    if ours_step is None:
        notes.append(why)
    else:
        contenders.append(Contender("ours", ours_step))
    if with_torch and torch is not None:
        contenders.append(Contender("torch", make_torch_step(model_name, spec, batches)))
    elif with_torch:
        notes.append("torch not installed: baseline skipped")
    results = alternate(contenders, rounds, steps, warmup) if contenders else {}
    free_memory()
    ours, baseline = results.get("ours"), results.get("torch")
    batch_size = batches[0].size

    def per_s(summary):
        return summary and batch_size / (summary["ms"] * 1e-3)
    return {
        "workload": "W2", "model": model_name, "batch_size": batch_size,
        "threads": numba.get_num_threads(),
        "ours_ms": ours and ours["ms"], "torch_ms": baseline and baseline["ms"],
        "ours_samples_per_s": per_s(ours), "torch_samples_per_s": per_s(baseline),
        "speedup_vs_torch": ratio(baseline and baseline["ms"], ours and ours["ms"]),
        "speedup_vs_torch_best": ratio(baseline and baseline["ms_min"], ours and ours["ms_min"]),
        "others_cores": results.get("others_cores"), "ours": ours, "torch": baseline, "note": "; ".join(notes) or None,
    }
