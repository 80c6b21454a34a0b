"""``DistributedModel``: a CTR model with row-sharded tables and replicated
dense layers, trained by every rank on its slice of each global batch.

Model-parallel tables, data-parallel dense layers (the HugeCTR / torchrec
layout): every rank builds the same model (same seed), then
``DistributedModel`` keeps only its shard of each table and routes lookups
through ``LookupExchange``. One step on rank r::

    exchange_lookups(batch_r)                     # rows fetched from their owners
    loss = sum_b CE(logit_b, label_b) / B_global  # the GLOBAL batch's mean
    reverse pass                                  # dense grads; lookups record d_out
    exchange.backward()                           # per-occurrence rows to owners
    Allreduce(dense grads)                        # sum over ranks
    sparse_optimizer.apply_gradients(shards)      # each owner updates its rows + slots
    dense_optimizer.apply_gradients(dense, global_step)   # same on every rank

Exactness against one process on the global batch (issue 6): the pooled
lookups are bit-exact; for a given upstream gradient of the lookups, the
tables and their slots are bit-exact (same products, summed in the same
order). Dense gradients are summed over ranks by ``Allreduce``, in another
order than one process's BLAS sum over the batch, so dense weights differ
in the last bits (docs/DISTRIBUTED.md gives the measured bound); once they
differ, later upstream gradients, hence tables, differ by as little.
"""
import contextlib
import time
import zlib

import numpy as np

from .. import autodiff as ad
from ..clip import _sq_norm, clip_gradients
from ..kernels.clip import ordered_sum
from ..metrics import AUC, LogLoss
from ..training.step import train_step
from .comm import world
from .dynamic import ShardedDynamicTable
from .exchange import LookupExchange, ShardedEmbeddingBag
from .faults import DistributedError
from .sharding import ShardedTable

__all__ = ["DistributedModel"]


class DistributedModel:
    """Shards ``model``'s tables over ``comm`` and trains it with the others.

    Every rank must build the same model (same options and seed) and call
    the methods below in the same order with its own slice of each global
    batch (``sharding.local_batch``). The tables of ``model`` are replaced in
    place by this rank's shards (same names), so ``model.sparse_variables()``
    and checkpoints see shards; dense variables stay replicated.

    Dynamic tables (a collection built with ``dynamic=``) are not sharded
    by row: each rank's table keeps the keys ``dynamic.key_owner`` gives it,
    and their lookups go through ``dynamic.ShardedDynamicTable`` (keys and
    rows exchanged in the forward, gradients in the reverse pass); build
    the model and shard it before it sees any key.

    Args:
        model: a ``CTRModel`` whose tables live in its
            ``EmbeddingBagCollection`` and ``FeatureLinear`` layers (all
            registry models).
        comm: a ``Communicator``; default ``world()``.

    >>> from sparse_train.data import DataSpec, FeatureSpec
    >>> from sparse_train.models import build_model
    >>> spec = DataSpec((FeatureSpec("user", 100), FeatureSpec("item", 50)), ("age",))
    >>> dist = DistributedModel(build_model("fm", spec, embedding_dim=4, scope="doc_dist"))
    >>> dist.comm.size, [v.shape for v in dist.sparse_variables()][-1]
    (1, (150, 4))
    """

    def __init__(self, model, comm=None):
        self.model = model
        self.comm = world() if comm is None else comm
        if not hasattr(model, "embedding_collections"):
            raise TypeError(f"DistributedModel: expected a CTRModel, got {type(model).__name__}")
        collections = list(model.embedding_collections())
        self.collections = [c for c in collections if not getattr(c, "is_dynamic", False)]
        #: {name: ``ShardedDynamicTable``} of the model's dynamic tables (keys
        #: owned by ``dynamic.key_owner``; their lookups exchange keys and rows).
        self.dynamic_tables = {}
        for collection in collections:
            if getattr(collection, "is_dynamic", False):
                self.dynamic_tables.update(_shard_dynamic(collection, self.comm))
        bags = [_shard_collection(collection, self.comm) for collection in self.collections]
        self.exchange = LookupExchange(self.comm, bags)
        self.timings = self.exchange.timings
        shards = {id(bag.table.weight) for bag in bags}
        shards |= {id(t.weight) for t in self.dynamic_tables.values()}
        stray = [v.name for v in model.sparse_variables() if id(v) not in shards]
        if stray:
            raise ValueError(f"DistributedModel: tables {stray} are not in an "
                             f"EmbeddingBagCollection or FeatureLinear layer; cannot shard them")
        _check_same_model(self)

    # ------------------------------------------------------------ variables
    @property
    def tables(self):
        """{name: ``ShardedTable``} of every table, in lookup order."""
        return {bag.table.name: bag.table for bag in self.exchange.bags}

    def sparse_variables(self):
        """This rank's table shards (named like the full tables)."""
        return self.model.sparse_variables()

    def dense_variables(self):
        """The replicated dense variables."""
        return self.model.dense_variables()

    def variables(self):
        return self.sparse_variables() + self.dense_variables()

    def training_lookups(self, global_step=None):
        """The model's context in which dynamic tables count and admit
        (``train_step`` enters it); a no-op context for static tables."""
        lookups = getattr(self.model, "training_lookups", None)
        return lookups(global_step) if lookups is not None else contextlib.nullcontext()

    def evict(self, global_step):
        """Evict this rank's keys of every dynamic table (``table.evict``);
        returns the number of keys evicted on ALL ranks (a collective)."""
        mine = sum(int(t.table.evict(int(global_step))) for t in self.dynamic_tables.values())
        return int(sum(self.comm.allgather(mine)))

    # -------------------------------------------------------------- running
    def forward(self, batch):
        """[B_local] logits Tensor of this rank's batch (a collective: every
        rank calls it with its own slice)."""
        self.exchange_lookups(batch)
        return self.model.forward(batch)

    def exchange_lookups(self, batch):
        """Fetch from their owners the rows every lookup of this rank's
        ``batch`` needs (a collective); ``forward`` starts with it."""
        fused = {c.name: c.fused_ragged(batch) for c in self.collections}
        self.exchange.forward(fused, batch.size)

    def __call__(self, batch):
        return self.forward(batch)

    def predict(self, batch):
        """Click probabilities of this rank's batch, [B_local] float32."""
        with ad.no_grad():
            return ad.sigmoid(self.forward(batch)).data

    def loss(self, batch):
        """(loss, per-rank sum): the loss whose gradient is the global
        batch's mean loss gradient, ``sum_b CE_b * float32(1 / B_global)``
        (the factor one process's mean applies), and the Tensor of this
        rank's CE sum."""
        logits = self.forward(batch)
        total = ad.sigmoid_cross_entropy_with_logits(logits, batch.labels, reduction="sum")
        scale = np.float32(1.0 / max(self.exchange.global_batch_size, 1))
        return total * scale, total

    def loss_and_gradients(self, batch):
        """(the global batch's mean loss as a float, the same on every rank;
        ``[(gradient, variable)]``, shards first): the lookups exchanged,
        the reverse pass, the rows' gradients sent to their owners and the
        dense gradients summed over ranks (one Allreduce). What
        ``training.train_step`` asks of a model."""
        loss, total = self.loss(batch)
        global_size = self.exchange.global_batch_size
        if global_size == 0:
            raise ValueError("DistributedModel.train_step: the global batch is empty")
        dynamic = [t.weight for t in self.dynamic_tables.values()]
        # a dynamic lookup's backward is a collective (its rows go to their
        # owners): the reverse pass reaches them in the same order on every rank
        grads = ad.compute_gradients(loss, self.dense_variables() + dynamic)
        split = len(grads) - len(dynamic)
        dense_grads, dynamic_grads = grads[:split], grads[split:]
        sparse_grads = self.exchange.backward()
        sparse_grads.update({v.name: g for g, v in dynamic_grads})
        dense_grads, loss_sum = self._allreduce(dense_grads, total)
        pairs = [(sparse_grads.get(v.name), v) for v in self.sparse_variables()] + dense_grads
        # float32 sum / int count: the arithmetic of one process's mean loss.
        return float(np.float32(loss_sum) / global_size), pairs

    def clip_by_global_norm(self, grads_and_vars, clip_norm):
        """``clip.clip_gradients`` by the global norm of every gradient of
        all ranks (a collective); returns the clipped pairs."""
        return clip_gradients(grads_and_vars, clip_norm,
                              use_norm=self._global_norm(grads_and_vars))[0]

    def train_step(self, batch, sparse_optimizer, dense_optimizer=None, global_step=None,
                   clip_norm=None, l2_embedding=0.0, l2_dense=0.0):
        """One global step on this rank's slice; returns the global batch's
        mean loss (float, the same on every rank).

        ``training.train_step`` on this model: the sparse optimizer updates
        this rank's shards, the dense one (or the sparse one when None) the
        replicated dense variables; ``global_step`` goes to the last apply.
        ``clip_norm`` clips by the global norm of every gradient of all
        ranks (``clip_by_global_norm``). ``l2_embedding`` / ``l2_dense``:
        the L2 penalty of ``training.l2_regularize``, each shard owner on
        its own unique rows (the rows one process would penalise).
        """
        transform = (None if clip_norm is None
                     else lambda pairs: self.clip_by_global_norm(pairs, clip_norm))
        return train_step(self, batch, sparse_optimizer, dense_optimizer, global_step,
                          grad_transform=transform, l2_embedding=l2_embedding,
                          l2_dense=l2_dense)

    def evaluate(self, batches):
        """Validation figures over every global batch: each rank passes its
        slices (same number of batches on every rank); probabilities are
        gathered and scored in global order. Returns ``{"auc", "logloss",
        "num_examples"}`` on every rank, as ``models.evaluate``."""
        labels, probs = [], []
        for batch in batches:
            probs.append(self.predict(batch))
            labels.append(np.asarray(batch.labels, np.float32))
        gathered = self.comm.allgather((labels, probs))
        if len({len(part[0]) for part in gathered}) != 1:
            raise DistributedError("evaluate: the ranks saw different numbers of batches")
        auc, logloss = AUC(), LogLoss()
        for k in range(len(labels)):
            batch_labels = np.concatenate([part[0][k] for part in gathered])
            batch_probs = np.concatenate([part[1][k] for part in gathered])
            auc.update(batch_labels, batch_probs)
            logloss.update(batch_labels, batch_probs)
        return {"auc": auc.result(), "logloss": logloss.result(),
                "num_examples": auc.num_examples}

    # -------------------------------------------------------------- helpers
    def _allreduce(self, dense_grads, total):
        """Sum the dense gradients and the loss over ranks (one Allreduce);
        returns ([(grad, var)], global loss sum as float32)."""
        sizes = [int(np.prod(v.shape)) for _, v in dense_grads]
        buffer = np.zeros(sum(sizes) + 1, np.float32)
        start = 0
        for (grad, _), size in zip(dense_grads, sizes):
            if grad is not None:
                buffer[start:start + size] = np.asarray(grad, np.float32).reshape(-1)
            start += size
        buffer[-1] = total.data
        started = time.perf_counter()
        self.comm.allreduce_sum(buffer)
        self.timings["dense_allreduce"] += time.perf_counter() - started
        pairs, start = [], 0
        for (grad, var), size in zip(dense_grads, sizes):
            summed = None if grad is None else buffer[start:start + size].reshape(var.shape).copy()
            pairs.append((summed, var))
            start += size
        return pairs, buffer[-1]

    def _global_norm(self, pairs):
        """The global norm of all ranks' gradients, summed in float64: table
        shards' squared norms added over ranks (Allreduce), dense ones
        (identical everywhere) taken once, in the order of ``pairs``."""
        squares = np.array([_sq_norm(g, f"variable {v.name!r}") for g, v in pairs], np.float64)
        num_sparse = len(self.sparse_variables())
        sparse = np.ascontiguousarray(squares[:num_sparse])
        self.comm.allreduce_sum(sparse)
        squares[:num_sparse] = sparse
        norm = float(np.sqrt(ordered_sum(squares)))
        if not np.isfinite(norm):
            bad = [v.name for (g, v), sq in zip(pairs, squares) if not np.isfinite(sq)]
            raise ValueError(f"cannot clip by norm: the gradient norm is not finite; non-finite "
                             f"values in {bad}")
        return norm


def _shard_collection(collection, comm):
    """Replace a collection's stacked table by this rank's shard and its one
    lookup by a sharded lookup (``EmbeddingBagCollection.replace_table``);
    returns the lookup."""
    if isinstance(collection.table, ShardedTable):
        raise ValueError(f"DistributedModel: table {collection.table.name!r} is already sharded")
    sharded = ShardedTable(collection.table, comm.rank, comm.size)
    lookup = ShardedEmbeddingBag(sharded, "sum", collection.name)
    collection.replace_table(sharded, lookup)
    return lookup


def _shard_dynamic(collection, comm):
    """Route a dynamic collection's lookups through ``ShardedDynamicTable``s
    (each rank's table then holds the keys it owns); returns them by name."""
    sharded = {}
    for feature, table in list(collection._feature_table.items()):
        if len(table) or table.num_pending:
            raise ValueError(f"DistributedModel: dynamic table {table.name!r} already holds "
                             f"keys; shard it before training (or restore a checkpoint after)")
        sharded[table.name] = ShardedDynamicTable(table, comm)
        collection._feature_table[feature] = sharded[table.name]
    return sharded


def _check_same_model(dist):
    """Every rank must hold the same model: same tables (global shape) and
    the same dense variables, bit for bit (same seed)."""
    signature = ([("table", t.name, t.num_embeddings, t.embedding_dim)
                  for t in dist.tables.values()]
                 + [("dynamic", t.name, t.embedding_dim, t.table.seed, t.table.filter_freq,
                     t.table.steps_to_live, t.table.l2_weight_threshold,
                     getattr(t.table, "init_scale", 1.0))
                    for t in dist.dynamic_tables.values()]
                 + [("dense", v.name, tuple(v.shape), zlib.crc32(v.value.tobytes()))
                    for v in dist.dense_variables()])
    everyone = dist.comm.allgather(signature)
    for rank, theirs in enumerate(everyone):
        if theirs != signature:
            diff = sorted(set(map(str, theirs)) ^ set(map(str, signature)))[:4]
            raise DistributedError(
                f"rank {dist.comm.rank} and rank {rank} built different models (build it with "
                f"the same options and seed on every rank); differences: {diff}")
