"""Dynamic tables on 2 and 3 MPI ranks against one process, bit for bit.

Run as a script under ``mpirun -n 3`` it is the worker (``main``): on a
world of 3 ranks, then of 2 (ranks 0-1), every rank trains its
``ShardedDynamicTable``s (Adagrad, AdagradDecay, Adam; admission after 2
uses, eviction every 2 steps) on its slice of the same global batches (sum
and mean bags, weighted and not), writes its pooled outputs and table
states, saves incrementally at each eviction (``DistributedCheckpointManager(
incremental_every=3)``: a full save, then two deltas) and saves a full
sharded checkpoint at the end. The 2 ranks restore their own chain, and a
copy of it whose middle delta lost rank 1's shard (a warning, then the full
save before it), and one that lost rank 1's full save (every rank raises,
none changed). Then the 3 ranks restore the 2 ranks' full checkpoint and
their delta chain (both resharded), train 3 more steps and save again. One
launch keeps the test fast. The tests hold the ranks' tables, merged by key,
against a plain ``DynamicEmbeddingTable`` trained on the global batches
(independent of the exchange), and restore the 3-rank checkpoint and the 2-
and 3-rank chains in one process.
"""
import json
import os
import shutil
import sys
import warnings

import numpy as np

from sparse_train import DynamicEmbeddingTable, GlobalStep
from sparse_train.distributed import (DistributedCheckpointManager, ShardedDynamicTable,
                                      SingleProcessComm, key_owner, reshard_table_states,
                                      restore_sharded, save_sharded)
from sparse_train.distributed.sharding import batch_slice
from sparse_train.optim import Adagrad, AdagradDecay, Adam

D, BAGS, STEPS, MORE = 4, 12, 6, 3
EVERY = 3  # incremental_every: saves at steps 2 (full), 4 and 6 (deltas)
OPTIMIZERS = {"adagrad_decay": lambda step: AdagradDecay(0.1, step, accumulator_decay_step=2,
                                                         accumulator_decay_rate=0.5),
              "adagrad": lambda step: Adagrad(0.1),
              "adam": lambda step: Adam(0.05)}  # last: it increments the global step


def global_batch(step):
    """(keys, offsets, weights or None, combiner, d_out) of global step ``step``."""
    rng = np.random.default_rng(1000 + step)
    lengths = rng.integers(0, 5, BAGS)
    offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
    keys = (rng.integers(step, step + 14, offsets[-1]) * 2654435761 - 2**50).astype(np.int64)
    weights = rng.random(offsets[-1]).astype(np.float32) if step % 2 else None
    combiner = "mean" if step % 3 == 1 else "sum"
    return keys, offsets, weights, combiner, rng.standard_normal((BAGS, D)).astype(np.float32)


def build():
    step = GlobalStep()
    tables = {name: DynamicEmbeddingTable(D, name, seed=5, filter_freq=2, steps_to_live=3)
              for name in OPTIMIZERS}
    optimizers = {name: make(step) for name, make in OPTIMIZERS.items()}
    return step, tables, optimizers


def train(step, lookups, optimizers, steps, rank=0, size=1, save=None):
    """Train ``lookups`` (tables, or their sharded stand-ins) on this rank's
    slice of global steps ``steps``, evicting every 2 steps and then calling
    ``save()`` (a save evicts too: at the same step, a no-op); returns the
    pooled outputs."""
    outputs = []
    for s in steps:
        keys, offsets, weights, combiner, d_out = global_batch(s)
        start, stop = batch_slice(BAGS, rank, size)
        local = slice(offsets[start], offsets[stop])
        bags = (keys[local], offsets[start:stop + 1] - offsets[start],
                None if weights is None else weights[local])
        for name, table in lookups.items():
            outputs.append(table.lookup(*bags, combiner=combiner, global_step=step))
            grad = table.lookup_grad(d_out[start:stop], *bags, combiner=combiner)
            optimizers[name].apply_gradients([(grad, table.weight)],
                                             global_step=step if name == "adam" else None)
        if s % 2 == 1:
            for table in lookups.values():
                getattr(table, "table", table).evict(int(step))
            if save is not None:
                save()
    return outputs


class Tables:
    """What ``save_sharded`` / ``restore_sharded`` read of a distributed model."""

    def __init__(self, comm, tables):
        self.comm, self.tables, self._weights = comm, {}, [t.weight for t in tables.values()]

    def variables(self):
        return list(self._weights)

    def dense_variables(self):
        return []


def dump(path, tables, outputs):
    arrays = {f"{name}/{field}": array for name, table in tables.items()
              for field, array in table.state_dict().items()}
    arrays.update({f"out/{i}": out for i, out in enumerate(outputs)})
    np.savez(path, **arrays)


def manager(comm, directory, step, tables, optimizers):
    return DistributedCheckpointManager(Tables(comm, tables), list(optimizers.values()), step,
                                        directory, incremental_every=EVERY)


def run_world(comm, out_dir, name, steps):
    """Train on ``comm`` from scratch, saving incrementally in ``{name}-inc``;
    dump and save (sharded, full) as ``name``."""
    step, tables, optimizers = build()
    sharded = {n: ShardedDynamicTable(table, comm) for n, table in tables.items()}
    chain = manager(comm, os.path.join(out_dir, f"{name}-inc"), step, tables, optimizers)
    outputs = train(step, sharded, optimizers, steps, comm.rank, comm.size, chain.save)
    dump(os.path.join(out_dir, f"{name}-{comm.rank}.npz"), tables, outputs)
    save_sharded(os.path.join(out_dir, name), f"ckpt-{int(step)}", Tables(comm, tables),
                 list(optimizers.values()), step)


def restore_chain(comm, out_dir, name, stage):
    """Restore the latest point of the chain in ``name`` (a fresh build on
    ``comm``); dump its tables as ``stage``, and (rank 0) the restored
    manifest's name and the warnings as ``stage.json``."""
    step, tables, optimizers = build()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        path = manager(comm, os.path.join(out_dir, name), step, tables, optimizers).restore_latest()
    dump(os.path.join(out_dir, f"{stage}-{comm.rank}.npz"), tables, [])
    if comm.rank == 0:
        with open(os.path.join(out_dir, f"{stage}.json"), "w") as f:
            json.dump({"restored": os.path.basename(path), "step": int(step),
                       "warnings": [str(w.message) for w in caught]}, f)


def break_chain(comm, out_dir, name, shard):
    """``name``: a copy of ``two-inc`` without the file ``shard``."""
    if comm.rank == 0:
        broken = os.path.join(out_dir, name)
        shutil.copytree(os.path.join(out_dir, "two-inc"), broken)
        os.unlink(os.path.join(broken, shard))
    comm.barrier()


def restore_nothing(comm, out_dir):
    """``two-unrestorable`` lacks rank 1's shard of the full save every
    point needs: every rank raises, and rank 0 (whose files are whole)
    changed nothing. Rank 0 writes what each rank saw."""
    from sparse_train.checkpoint import CorruptCheckpointError
    break_chain(comm, out_dir, "two-unrestorable", "ckpt-2.shard-1-of-2.ckpt")
    step, tables, optimizers = build()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            manager(comm, os.path.join(out_dir, "two-unrestorable"), step, tables,
                    optimizers).restore_latest()
        outcome = "restored"
    except CorruptCheckpointError as error:
        outcome = type(error).__name__
    seen = comm.allgather([outcome, sum(len(t) + t.num_pending for t in tables.values()),
                           int(step)])
    if comm.rank == 0:
        with open(os.path.join(out_dir, "two-unrestorable.json"), "w") as f:
            json.dump(seen, f)


def model_run(comm=None):
    """An FM over dynamic tables (``DistributedModel`` on ``comm``, or one
    process) trained on the synthetic log's raw keys; its variables' states."""
    import sparse_train as st
    from sparse_train.data import open_dataset
    from sparse_train.distributed import DistributedModel, local_batch
    data = open_dataset(format="synthetic", num_examples=400, seed=0, ids="dynamic",
                        batch_size=100)
    model = st.build_model("fm", data.spec, embedding_dim=4,
                           dynamic={"filter_freq": 2, "steps_to_live": 2})
    trained = model if comm is None else DistributedModel(model, comm)
    step = GlobalStep()
    tables, dense = Adagrad(0.5), Adam(0.01)
    for batch in data.batches():
        st.train_step(trained, batch if comm is None else local_batch(batch, comm), tables,
                      dense, step)
    trained.evict(int(step))
    return {f"{v.name}:{k}": a for v in model.variables()
            for k, a in (v.table.state_dict() if hasattr(v, "table") else {"": v.value}).items()}


def main(out_dir):
    """On 3 ranks: train on all 3; train on ranks 0-1 (a world of 2), which
    restore their delta chain, whole and broken; then on all 3 restore the 2
    ranks' full checkpoint and their chain, and train on from the chain."""
    from mpi4py import MPI

    from sparse_train.distributed import MPIComm
    world = MPIComm()
    run_world(world, out_dir, "three", range(STEPS))
    np.savez(os.path.join(out_dir, f"model-three-{world.rank}.npz"), **model_run(world))
    pair = MPI.COMM_WORLD.Split(0 if world.rank < 2 else 1, world.rank)
    if world.rank < 2:
        two = MPIComm(pair)
        run_world(two, out_dir, "two", range(STEPS))
        np.savez(os.path.join(out_dir, f"model-two-{world.rank}.npz"), **model_run(two))
        restore_chain(two, out_dir, "two-inc", "two-restored")
        break_chain(two, out_dir, "two-broken", "ckpt-4.shard-1-of-2.ckpt")
        restore_chain(two, out_dir, "two-broken", "two-fallback")
        restore_nothing(two, out_dir)
    world.barrier()
    step, tables, optimizers = build()
    restore_sharded(os.path.join(out_dir, "two", f"ckpt-{STEPS}.manifest.json"),
                    Tables(world, tables), list(optimizers.values()), step)
    dump(os.path.join(out_dir, f"resharded-full-{world.rank}.npz"), tables, [])
    step, tables, optimizers = build()  # the 2 ranks' delta chain, resharded: trained on
    restore_sharded(os.path.join(out_dir, "two-inc", f"ckpt-{STEPS}.manifest.json"),
                    Tables(world, tables), list(optimizers.values()), step)
    dump(os.path.join(out_dir, f"resharded-inc-{world.rank}.npz"), tables, [])
    sharded = {n: ShardedDynamicTable(table, world) for n, table in tables.items()}
    outputs = train(step, sharded, optimizers, range(STEPS, STEPS + MORE), world.rank, world.size)
    dump(os.path.join(out_dir, f"resumed-{world.rank}.npz"), tables, outputs)
    save_sharded(os.path.join(out_dir, "resumed"), f"ckpt-{int(step)}", Tables(world, tables),
                 list(optimizers.values()), step)


if __name__ == "__main__":
    main(*sys.argv[1:])
else:
    import pytest

    import _launch as launch

    pytestmark = pytest.mark.skipif(launch.mpi_missing() is not None,
                                    reason=launch.mpi_missing() or "")

    @pytest.fixture(scope="module")
    def run(tmp_path_factory):
        """One ``mpirun -n 3``: worlds of 3 and of 2 ranks, and a resume."""
        reference = build()
        train(reference[0], reference[1], reference[2], range(1))  # compile before mpirun
        model_reference()
        directory = tmp_path_factory.mktemp("dynamic_mpi")
        launch.run(3, __file__, str(directory)).check()
        return directory

    _MODEL = []

    def model_reference():
        if not _MODEL:
            _MODEL.append(model_run())
        return _MODEL[0]

    def reference_run(steps):
        step, tables, optimizers = build()
        outputs = train(step, tables, optimizers, range(steps))
        return tables, outputs

    def as_bits(state):
        return {k: (v.dtype.str, v.shape, v.tobytes()) for k, v in state.items()}

    def merged(directory, stage, size, name):
        """The table ``name`` of every rank, merged by key; checks ownership."""
        states = []
        for rank in range(size):
            with np.load(directory / f"{stage}-{rank}.npz") as f:
                state = {k.split("/", 1)[1]: f[k] for k in f.files if k.startswith(name + "/")}
            assert (key_owner(state["keys"], size) == rank).all()
            assert (key_owner(state["pending_keys"], size) == rank).all()
            states.append(state)
        return reshard_table_states(states, 0, 1)

    def pooled(directory, stage, size):
        """Every rank's pooled outputs, in global bag order."""
        parts = [np.load(directory / f"{stage}-{rank}.npz") for rank in range(size)]
        count = len([k for k in parts[0].files if k.startswith("out/")])
        return [np.concatenate([p[f"out/{i}"] for p in parts]) for i in range(count)]

    @pytest.mark.parametrize("size", [2, 3])
    def test_ranks_give_the_tables_slots_counts_and_outputs_of_one_process(run, size):
        tables, outputs = reference_run(STEPS)
        assert all(len(t) > 0 for t in tables.values())
        stage = {2: "two", 3: "three"}[size]
        for name, table in tables.items():
            assert as_bits(merged(run, stage, size, name)) == as_bits(table.state_dict()), name
        got = pooled(run, stage, size)
        assert len(got) == len(outputs)
        assert all(a.tobytes() == b.tobytes() for a, b in zip(got, outputs))

    def test_a_2_rank_checkpoint_resumes_on_3_ranks_and_on_one_process(run):
        tables, _ = reference_run(STEPS + MORE)
        for name, table in tables.items():  # 2 ranks -> 3 ranks, trained on
            assert as_bits(merged(run, "resumed", 3, name)) == as_bits(table.state_dict()), name
        step, restored, optimizers = build()  # 3 ranks -> one process
        comm = SingleProcessComm()
        restore_sharded(run / "resumed" / f"ckpt-{STEPS + MORE}.manifest.json",
                        Tables(comm, restored), list(optimizers.values()), step)
        assert int(step) == STEPS + MORE
        for name, table in tables.items():
            table.evict(STEPS + MORE)  # as the save did
            assert as_bits(restored[name].state_dict()) == as_bits(table.state_dict()), name

    @pytest.mark.parametrize("size", [2, 3])
    def test_a_model_over_dynamic_tables_trains_on_ranks_as_on_one_process(run, size):
        """DistributedModel: the same keys, counts and last uses as one
        process; rows and slots equal up to the dense Allreduce's rounding
        (summed in another order than one process's BLAS, as static tables)."""
        expected = model_reference()
        stage = {2: "two", 3: "three"}[size]
        parts = [dict(np.load(run / f"model-{stage}-{rank}.npz")) for rank in range(size)]
        tables = sorted({k.split(":")[0] for k in expected if k.endswith(":keys")})
        assert tables and all(len(expected[f"{t}:keys"]) for t in tables)
        for name in tables:
            got = reshard_table_states([{k.split(":", 1)[1]: v for k, v in p.items()
                                         if k.split(":")[0] == name} for p in parts], 0, 1)
            for field, want in ((k.split(":", 1)[1], v) for k, v in expected.items()
                                if k.split(":")[0] == name):
                if field in ("values",) or field.startswith("slots/"):
                    np.testing.assert_allclose(got[field], want, rtol=1e-4, atol=1e-6,
                                               err_msg=f"{name}:{field}")
                else:
                    assert got[field].tobytes() == want.tobytes(), f"{name}:{field}"

    def test_delta_chains_are_saved_per_rank_and_restore_on_the_same_ranks(run):
        """The 2 ranks restore their chain's last delta (each rank its own
        shard's chain): the tables of the run at that step."""
        from sparse_train.checkpoint import load_checkpoint
        for stage, size in (("two-inc", 2), ("three-inc", 3)):
            for rank in range(size):
                kinds = [load_checkpoint(run / stage / f"ckpt-{n}.shard-{rank}-of-{size}.ckpt")
                         .header["dynamic"]["adam"]["kind"] for n in (2, 4, 6)]
                assert kinds == ["full", "delta", "delta"], (stage, rank)
            manifest = json.loads((run / stage / "ckpt-6.manifest.json").read_text())
            assert manifest["chain"]["files"] == ["ckpt-2.manifest.json", "ckpt-4.manifest.json"]
        assert json.loads((run / "two-restored.json").read_text()) == {
            "restored": "ckpt-6.manifest.json", "step": STEPS, "warnings": []}
        tables, _ = reference_run(STEPS)
        for name, table in tables.items():
            assert as_bits(merged(run, "two-restored", 2, name)) == as_bits(table.state_dict())

    def test_a_delta_missing_on_one_rank_is_named_and_every_rank_falls_back(run):
        report = json.loads((run / "two-fallback.json").read_text())
        assert report["restored"] == "ckpt-2.manifest.json" and report["step"] == 2
        assert len(report["warnings"]) == 1
        assert "ckpt-4.shard-1-of-2.ckpt" in report["warnings"][0], report["warnings"]
        tables, _ = reference_run(2)
        for name, table in tables.items():
            assert as_bits(merged(run, "two-fallback", 2, name)) == as_bits(table.state_dict())

    def test_a_restore_that_fails_on_one_rank_changes_no_rank(run):
        seen = json.loads((run / "two-unrestorable.json").read_text())
        assert seen == [["CorruptCheckpointError", 0, 0]] * 2

    def test_delta_chains_reshard_from_2_to_3_ranks_and_onto_one_process(run):
        tables, _ = reference_run(STEPS)
        for name, table in tables.items():
            for stage in ("resharded-full", "resharded-inc"):
                assert as_bits(merged(run, stage, 3, name)) == as_bits(table.state_dict()), stage
        for stage in ("two-inc", "three-inc"):
            step, restored, optimizers = build()
            manager = DistributedCheckpointManager(
                Tables(SingleProcessComm(), restored), list(optimizers.values()), step,
                run / stage, incremental_every=EVERY)
            assert manager.restore_latest().endswith("ckpt-6.manifest.json")
            assert int(step) == STEPS
            for name, table in tables.items():
                assert as_bits(restored[name].state_dict()) == as_bits(table.state_dict()), name
