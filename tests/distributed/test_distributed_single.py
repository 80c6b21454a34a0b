"""``sparse_train.distributed`` in one process (no MPI needed): the
``SingleProcessComm`` path equals plain training bit for bit; the routing
kernels against NumPy; sharding, checkpoints, errors and fault handling."""
import io
import subprocess
import sys

import numpy as np
import pytest

import sparse_train as st
from sparse_train.checkpoint import Checkpoint, CheckpointError, CorruptCheckpointError
from sparse_train.distributed import (DistributedCheckpointManager, DistributedModel,
                                      ShardedTable, SingleProcessComm, batch_slice, fail_fast,
                                      local_batch, owned_ids, restore_sharded, save_sharded,
                                      shard_size)
from sparse_train.functional import COMBINERS, embedding_bag, embedding_bag_grad
from sparse_train.kernels import distributed_exchange as kx
from sparse_train.kernels.coalesce import group_rows

import _scenarios as sc
import _worker


def _bits_equal(a, b):
    return a.shape == b.shape and a.dtype == b.dtype and a.tobytes() == b.tobytes()


def _states_equal(expected, got):
    assert sorted(expected) == sorted(got)
    assert [k for k in expected if not _bits_equal(expected[k], got[k])] == []


# --------------------------------------------------- the one-process path
def test_import_does_not_import_mpi4py():
    code = ("import sys, sparse_train, sparse_train.distributed as d; d.world(); "
            "assert 'mpi4py' not in sys.modules, 'mpi4py imported'")
    subprocess.run([sys.executable, "-c", code], check=True,
                   env={k: v for k, v in __import__("os").environ.items()
                        if not k.startswith(("OMPI_", "PMI", "PMIX"))})


@pytest.mark.parametrize("clip_norm, optimizers", [
    (None, "separate"), (0.5, "separate"), (None, "sparse only"), (None, "adam twice")])
def test_single_process_comm_trains_bit_for_bit(clip_norm, optimizers):
    """DistributedModel on a SingleProcessComm == models.train_step: every
    variable, slot, Adam power, the global step and the loss; also with one
    optimizer given for both groups (one apply a step: Adam's powers move
    once)."""
    data, batches = sc.model_data()
    ref_model, ref_sparse, ref_dense, ref_step = sc.model_setup(data.spec)
    model, sparse, dense, step = sc.model_setup(data.spec)
    dist = DistributedModel(model, SingleProcessComm())
    transform = None if clip_norm is None else (
        lambda grads: st.clip_gradients(grads, clip_norm)[0])
    ref_pair, pair = {"separate": ((ref_sparse, ref_dense), (sparse, dense)),
                      "sparse only": ((ref_sparse, None), (sparse, None)),
                      "adam twice": ((ref_dense, ref_dense), (dense, dense))}[optimizers]
    for batch in batches:
        expected = st.train_step(ref_model, batch, *ref_pair, ref_step, transform)
        got = dist.train_step(batch, *pair, step, clip_norm)
        assert got == expected
    _states_equal(sc.state_of(ref_model.variables(), [ref_sparse, ref_dense], ref_step),
                  sc.state_of(dist.variables(), [sparse, dense], step))
    assert dist.evaluate(batches) == st.models.evaluate(ref_model, batches)


def test_a_bad_dense_gradient_leaves_the_shards_unchanged(monkeypatch):
    """As models.train_step: every group is validated before any is applied,
    so a non-finite dense gradient raises with tables, slots and step as
    they were."""
    data, batches = sc.model_data()
    model, sparse, dense, step = sc.model_setup(data.spec)
    dist = DistributedModel(model, SingleProcessComm())
    dist.train_step(batches[0], sparse, dense, step)
    before = sc.state_of(dist.variables(), [sparse, dense], step)
    summed = dist._allreduce

    def poisoned(dense_grads, total):
        pairs, loss = summed(dense_grads, total)
        pairs[0][0].flat[0] = np.nan
        return pairs, loss
    monkeypatch.setattr(dist, "_allreduce", poisoned)
    with pytest.raises(ValueError, match="non-finite|not finite|NaN"):
        dist.train_step(batches[1], sparse, dense, step)
    _states_equal(before, sc.state_of(dist.variables(), [sparse, dense], step))


def test_single_process_lookups_bit_exact(tmp_path):
    _worker.lookups(SingleProcessComm(), str(tmp_path))
    got = dict(np.load(tmp_path / "lookups-1.npz"))
    _states_equal(sc.lookups_reference(), got)


# --------------------------------------------------------------- kernels
def _bags(seed, weighted, num_bags=9, rows=13):
    rng = np.random.default_rng(seed)
    lengths = rng.integers(0, 5, num_bags)
    lengths[0] = 0
    offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
    values = rng.integers(0, rows, offsets[-1]).astype(np.int64)
    weights = (rng.choice(np.array([0.0, 0.5, 2.0], np.float32), values.shape[0])
               if weighted else np.empty(0, np.float32))
    return values, offsets, weights


@pytest.mark.parametrize("weighted", [False, True])
@pytest.mark.parametrize("combiner", sorted(COMBINERS))
@pytest.mark.parametrize("world_size", [1, 2, 3, 5])
def test_routing_pooling_and_owner_plans_match_the_lookup(combiner, weighted, world_size):
    """Route ids to owners, fetch from the shards, pool: the bits of
    ``functional.embedding_bag``. Each owner's plan from the d_out rows and
    coefficients it receives: the bits of ``embedding_bag_grad`` on its rows."""
    values, offsets, weights = _bags(world_size * 10 + weighted, weighted)
    rows, dim, padding = 13, 3, 4
    table = np.random.default_rng(1).normal(size=(rows, dim)).astype(np.float32)
    code = COMBINERS[combiner]
    positions, bag_starts, kept_weights, coefs, divisors = kx.kept_occurrences(
        values, offsets, weights, weighted, code, padding)
    ids = values[positions]
    assert (ids != padding).all()
    shard_rows = -(-rows // world_size)
    keys, starts, order = group_rows(kx.routing_keys(ids, world_size, shard_rows))
    requests, occ_unique, occ_rank, occurrences = kx.route_groups(keys, starts, order,
                                                                  world_size, shard_rows)
    owner, local = keys // shard_rows, keys % shard_rows
    np.testing.assert_array_equal(np.unique(ids), np.sort(local * world_size + owner))
    np.testing.assert_array_equal(requests, np.bincount(owner, minlength=world_size))
    np.testing.assert_array_equal(occurrences, np.bincount(ids % world_size,
                                                           minlength=world_size))
    fetched = table[local * world_size + owner]             # what the owners send back
    out = np.empty((offsets.shape[0] - 1, dim), np.float32)
    kx.pool_fetched_rows(out, fetched.reshape(-1), occ_unique * dim, bag_starts, kept_weights,
                         divisors, code)
    expected = embedding_bag(table, values, offsets, weights if weighted else None, combiner,
                             padding)
    assert _bits_equal(expected, out)

    d_out = np.random.default_rng(2).normal(size=out.shape).astype(np.float32)
    single = embedding_bag_grad(d_out, values, offsets, rows, weights if weighted else None,
                                combiner, padding)
    row_bags, row_counts, occ_row = kx.owner_rows(ids % world_size, bag_starts, world_size)
    row_first = np.concatenate([[0], np.cumsum(row_counts)])
    for o in range(world_size):
        mine = np.flatnonzero(ids % world_size == o)     # position order
        np.testing.assert_array_equal(occ_rank[mine], np.arange(mine.shape[0]))
        src = d_out[row_bags[row_first[o]:row_first[o + 1]]]
        kx.copy_rows(copied := np.empty(src.size, np.float32),
                     np.arange(src.shape[0]) * dim, d_out, row_bags[row_first[o]:row_first[o + 1]])
        assert _bits_equal(src.reshape(-1), copied)
        urows, ustarts, uorder = group_rows(ids[mine] // world_size)
        plan = (urows, ustarts, occ_row[mine][uorder], coefs[mine][uorder], src,
                np.float32(1.0))
        grad = st.RowSparseGrad._from_plan(plan, (shard_size(rows, o, world_size), dim))
        theirs = np.isin(single.indices, owned_ids(rows, o, world_size))
        np.testing.assert_array_equal(grad.indices * world_size + o, single.indices[theirs])
        assert _bits_equal(single.values[theirs], grad.values)


# -------------------------------------------------------------- sharding
@pytest.mark.parametrize("rows, world_size", [(10, 3), (2, 3), (7, 1), (64, 4)])
def test_shards_partition_the_rows(rows, world_size):
    owned = [owned_ids(rows, r, world_size) for r in range(world_size)]
    np.testing.assert_array_equal(np.sort(np.concatenate(owned)), np.arange(rows))
    for r, ids in enumerate(owned):
        assert (ids % world_size == r).all()
        assert shard_size(rows, r, world_size) == max(1, ids.shape[0])
        table = st.EmbeddingTable(rows, 2, f"shard_test_{rows}_{world_size}", seed=0)
        shard = ShardedTable(table, r, world_size)
        assert shard.weight.shape == (shard_size(rows, r, world_size), 2)
        assert _bits_equal(shard.weight.value[:ids.shape[0]], table.weight.value[ids])


def test_local_batches_split_the_global_batch_in_order():
    batch = sc.lookup_batch(0)
    assert [batch_slice(10, r, 3) for r in range(3)] == [(0, 3), (3, 6), (6, 10)]

    class Comm(SingleProcessComm):
        def __init__(self, rank, size):
            self.rank, self.size = rank, size
    parts = [local_batch(batch, Comm(r, 3)) for r in range(3)]
    assert sum(p.size for p in parts) == batch.size
    for name, ragged in batch.sparse.items():
        np.testing.assert_array_equal(np.concatenate([p.sparse[name].values for p in parts]),
                                      ragged.values)


# ----------------------------------------------------------- checkpoints
def _trained(steps=2):
    data, batches = sc.model_data()
    model, sparse, dense, step = sc.model_setup(data.spec)
    dist = DistributedModel(model, SingleProcessComm())
    for batch in batches[:steps]:
        dist.train_step(batch, sparse, dense, step)
    return dist, sparse, dense, step


def test_sharded_checkpoint_round_trip_and_fallback(tmp_path):
    dist, sparse, dense, step = _trained()
    manager = DistributedCheckpointManager(dist, [sparse, dense], step, tmp_path, max_to_keep=2)
    first = manager.save(metadata={"epoch": 0})
    saved = sc.state_of(dist.variables(), [sparse, dense], step)
    data, batches = sc.model_data()
    dist.train_step(batches[2], sparse, dense, step)
    second = manager.save()
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "ckpt-2.manifest.json", "ckpt-2.shard-0-of-1.ckpt", "ckpt-3.manifest.json",
        "ckpt-3.shard-0-of-1.ckpt", "latest"]
    shard = tmp_path / "ckpt-3.shard-0-of-1.ckpt"
    raw = bytearray(shard.read_bytes())
    raw[len(raw) // 2] ^= 0xFF
    shard.write_bytes(bytes(raw))
    fresh, fresh_sparse, fresh_dense, fresh_step = _trained(0)
    again = DistributedCheckpointManager(fresh, [fresh_sparse, fresh_dense], fresh_step, tmp_path)
    with pytest.warns(UserWarning, match="corrupt"):
        assert again.restore_latest() == first
    _states_equal(saved, sc.state_of(fresh.variables(), [fresh_sparse, fresh_dense], fresh_step))
    with pytest.raises(CorruptCheckpointError):
        restore_sharded(second, fresh, [fresh_sparse, fresh_dense], fresh_step)
    manager.save(4)  # a third save drops ckpt-2 (max_to_keep=2)
    assert not (tmp_path / "ckpt-2.shard-0-of-1.ckpt").exists()
    assert not (tmp_path / "ckpt-2.manifest.json").exists()


def test_restores_a_single_process_checkpoint(tmp_path):
    """A plain ``Checkpoint`` file restores as a world of one (resharded)."""
    data, batches = sc.model_data()
    model, sparse, dense, step = sc.model_setup(data.spec)
    for batch in batches[:2]:
        st.train_step(model, batch, sparse, dense, step)
    path = Checkpoint(model.variables(), [sparse, dense], step).save(tmp_path / "one.ckpt")
    fresh, fresh_sparse, fresh_dense, fresh_step = _trained(0)
    manifest = restore_sharded(path, fresh, [fresh_sparse, fresh_dense], fresh_step)
    assert manifest["world_size"] == 1
    _states_equal(sc.state_of(model.variables(), [sparse, dense], step),
                  sc.state_of(fresh.variables(), [fresh_sparse, fresh_dense], fresh_step))


def test_checkpoint_of_another_model_fails_clearly(tmp_path):
    dist, sparse, dense, step = _trained(1)
    path = save_sharded(tmp_path, "ckpt-1", dist, [sparse, dense], step)
    other = st.build_model("deepfm", st.data.DataSpec((st.data.FeatureSpec("c0", 7),)),
                           embedding_dim=8, hidden_units=(32, 16), scope="dfm")
    with pytest.raises(CheckpointError, match="dfm/embedding/weight: 338 rows saved, 7 in the model"):
        restore_sharded(path, DistributedModel(other, SingleProcessComm()), [sparse, dense],
                        step)


# ---------------------------------------------------------------- errors
def test_misuse_is_reported():
    dist, sparse, dense, step = _trained(0)
    with pytest.raises(ValueError, match="no lookup exchange in progress"):
        dist.exchange.backward()
    with pytest.raises(ValueError, match="already sharded"):
        DistributedModel(dist.model, SingleProcessComm())
    with pytest.raises(TypeError, match="expected a CTRModel"):
        DistributedModel(object(), SingleProcessComm())
    data, batches = sc.model_data()
    batch = batches[0]
    dist.exchange_lookups(batch)
    other = local_batch(batch, SingleProcessComm())  # same rows, other Ragged objects
    with pytest.raises(ValueError, match="the ids differ"):
        dist.model.forward(other)
    bad = sc.lookup_batch(0)
    with pytest.raises(KeyError, match="no sparse feature 'c0'"):
        dist.forward(bad)


class _RecordingComm(SingleProcessComm):
    """A 2-rank world whose abort records instead of exiting."""

    def __init__(self):
        self.rank, self.size, self.aborted = 1, 2, None

    def abort(self, code=1):
        self.aborted = code


@pytest.mark.parametrize("error, code, text", [
    (RuntimeError("boom"), 1, "[rank 1/2] Traceback"),
    (ValueError("bad flag"), 2, "[rank 1/2] error: bad flag"),
    (SystemExit("error: no data"), 2, "[rank 1/2] error: no data"),
    (KeyboardInterrupt(), 130, "[rank 1/2] interrupted")])
def test_fail_fast_reports_the_rank_and_aborts(error, code, text):
    comm, out = _RecordingComm(), io.StringIO()
    with pytest.raises(type(error)):
        with fail_fast(comm, expected=(ValueError,), file=out):
            raise error
    assert comm.aborted == code
    assert text in out.getvalue() and "ending the job" in out.getvalue()


def test_fail_fast_in_one_process_just_raises():
    with pytest.raises(RuntimeError, match="boom"):
        with fail_fast(SingleProcessComm()):
            raise RuntimeError("boom")


def test_run_distributed_still_imports_and_says_what_replaced_it():
    from sparse_train.distributed import run_distributed
    with pytest.raises(TypeError, match="train_distributed"):
        run_distributed(None, None, None)
