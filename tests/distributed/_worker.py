"""The MPI side of the distributed tests: ``mpirun -n W python -m mpi4py
_worker.py OUT_DIR SCENARIO [SCENARIO ...]``.

Every rank runs the scenarios; rank 0 assembles the sharded state (tables
and their slots from all ranks, rows ``r::W`` from rank r) and writes it to
``OUT_DIR/{scenario}-{W}.npz`` for the test to hold against one process.
Replicated state is checked to be identical on every rank on the way.
"""
import json
import os
import shutil
import signal
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import _scenarios as sc  # noqa: E402
from sparse_train import GlobalStep  # noqa: E402
from sparse_train import autodiff as ad  # noqa: E402
from sparse_train.checkpoint import CheckpointError  # noqa: E402
from sparse_train.distributed import (DistributedCheckpointManager, DistributedError,  # noqa: E402
                                      DistributedModel, fail_fast, restore_sharded, world)


def assemble(comm, dist, state):
    """Full arrays on rank 0 (None elsewhere) from every rank's ``state``."""
    tables = {t.name: t.num_embeddings for t in dist.tables.values()}
    gathered = comm.allgather(state)
    if comm.rank != 0:
        return None
    full = {}
    for name, array in state.items():
        table = next((t for t in tables if name == t or name.startswith(t + "/")), None)
        if table is None:
            for rank, theirs in enumerate(gathered):
                if not np.array_equal(theirs[name], array):
                    raise AssertionError(f"replicated {name!r} differs on rank {rank}")
            full[name] = array
            continue
        out = np.empty((tables[table],) + array.shape[1:], array.dtype)
        for rank, theirs in enumerate(gathered):
            owned = out[rank::comm.size]  # a shard owning no row holds a placeholder row
            owned[...] = theirs[name][:owned.shape[0]]
        full[name] = out
    return full


def save(comm, out_dir, name, arrays):
    if comm.rank == 0:
        np.savez(os.path.join(out_dir, f"{name}-{comm.size}.npz"), **arrays)


def lookups(comm, out_dir):
    """Every optimizer, fixed upstream gradients: pooled outputs and state."""
    arrays = {}
    for kind, make in sc.OPTIMIZERS.items():
        model = sc.lookup_model()
        dist = DistributedModel(model, comm)
        step = GlobalStep()
        opt = make(step)
        for s in range(len(sc.LOOKUP_BATCH_SIZES)):
            local, start, stop = sc.batch_rows(sc.lookup_batch(s), comm.rank, comm.size)
            dist.exchange_lookups(local)
            outputs = sc.lookup_outputs(model, local)
            gathered = comm.allgather({n: t.data for n, t in outputs})
            for n, _ in outputs:
                arrays[f"{kind}/out/{s}/{n}"] = np.concatenate([g[n] for g in gathered])
            ad.compute_gradients(sc.upstream_loss(outputs, s, start, stop), [])
            grads = dist.exchange.backward()
            opt.apply_gradients([(grads.get(v.name), v) for v in dist.sparse_variables()],
                                global_step=step)
        state = assemble(comm, dist, sc.state_of(dist.sparse_variables(), [opt], step))
        if state is not None:
            arrays.update({f"{kind}/state/{n}": a for n, a in state.items()})
    save(comm, out_dir, "lookups", arrays)


def model(comm, out_dir):
    """DeepFM training steps; state after the first and the last step."""
    data, batches = sc.model_data()
    model, sparse, dense, step = sc.model_setup(data.spec)
    dist = DistributedModel(model, comm)
    arrays, losses = {}, []
    for i, batch in enumerate(batches[:sc.MODEL_STEPS]):
        losses.append(dist.train_step(sc.batch_rows(batch, comm.rank, comm.size)[0],
                                      sparse, dense, step))
        if i == 0:
            first = assemble(comm, dist, sc.state_of(dist.variables(), [sparse, dense], step))
    last = assemble(comm, dist, sc.state_of(dist.variables(), [sparse, dense], step))
    figures = dist.evaluate(sc.batch_rows(b, comm.rank, comm.size)[0] for b in batches)
    if comm.rank == 0:
        arrays.update({f"first/{n}": a for n, a in first.items()})
        arrays.update({f"last/{n}": a for n, a in last.items()})
        arrays["losses"] = np.array(losses)
        arrays["eval"] = np.array([figures["auc"], figures["logloss"], figures["num_examples"]])
    save(comm, out_dir, "model", arrays)


def _checkpoint_setup(comm, out_dir):
    data, batches = sc.model_data()
    model, sparse, dense, step = sc.model_setup(data.spec)
    dist = DistributedModel(model, comm)
    manager = DistributedCheckpointManager(dist, [sparse, dense], step,
                                           os.path.join(out_dir, "ckpt"), max_to_keep=2)
    return batches, dist, sparse, dense, step, manager


def _train(comm, dist, sparse, dense, step, batches):
    for batch in batches:
        dist.train_step(sc.batch_rows(batch, comm.rank, comm.size)[0], sparse, dense, step)


def ckpt_save(comm, out_dir):
    """3 steps, a save, 2 more steps."""
    batches, dist, sparse, dense, step, manager = _checkpoint_setup(comm, out_dir)
    _train(comm, dist, sparse, dense, step, batches[:3])
    manager.save(metadata={"batches_done": 3})
    saved = assemble(comm, dist, sc.state_of(dist.variables(), [sparse, dense], step))
    _train(comm, dist, sparse, dense, step, batches[3:5])
    continued = assemble(comm, dist, sc.state_of(dist.variables(), [sparse, dense], step))
    if comm.rank == 0:
        save(comm, out_dir, "ckpt_save", {**{f"saved/{n}": a for n, a in saved.items()},
                                          **{f"continued/{n}": a for n, a in continued.items()}})


def ckpt_resume(comm, out_dir):
    """Restore the latest checkpoint (resharded on another world size), the
    same 2 steps, and a save in ``resaved-{W}``."""
    batches, dist, sparse, dense, step, manager = _checkpoint_setup(comm, out_dir)
    path = manager.restore_latest()
    restored = assemble(comm, dist, sc.state_of(dist.variables(), [sparse, dense], step))
    batches_done = manager.manifest(path)["metadata"]["batches_done"]
    _train(comm, dist, sparse, dense, step, batches[batches_done:batches_done + 2])
    resumed = assemble(comm, dist, sc.state_of(dist.variables(), [sparse, dense], step))
    DistributedCheckpointManager(dist, [sparse, dense], step,
                                 os.path.join(out_dir, f"resaved-{comm.size}")).save()
    if comm.rank == 0:
        save(comm, out_dir, "ckpt_resume", {**{f"restored/{n}": a for n, a in restored.items()},
                                            **{f"resumed/{n}": a for n, a in resumed.items()}})


def ckpt_break(comm, out_dir):
    """A copy of ``ckpt_save``'s directory without shard 1, for ``ckpt_broken``
    (on 2 ranks, which saved it)."""
    if comm.rank == 0:
        shutil.copytree(os.path.join(out_dir, "ckpt"), os.path.join(out_dir, "broken"))
        os.unlink(os.path.join(out_dir, "broken", "ckpt-3.shard-1-of-2.ckpt"))
    comm.barrier()


def ckpt_broken(comm, out_dir):
    """Restore a checkpoint whose shard 1 is missing: every rank must raise."""
    batches, dist, sparse, dense, step, manager = _checkpoint_setup(comm, out_dir)
    try:
        restore_sharded(os.path.join(out_dir, "broken", "ckpt-3.manifest.json"), dist,
                        [sparse, dense], step)
        outcome = "restored"
    except CheckpointError as error:
        outcome = f"{type(error).__name__}: {error}"
    outcomes = comm.allgather(outcome)
    if comm.rank == 0:
        with open(os.path.join(out_dir, f"ckpt_broken-{comm.size}.json"), "w") as f:
            json.dump(outcomes, f)


def fault(comm, out_dir, kind):
    """A rank fails at the second step in one of several ways."""
    data, batches = sc.model_data()
    model, sparse, dense, step = sc.model_setup(data.spec)
    dist = DistributedModel(model, comm)

    def run():
        for i, batch in enumerate(batches):
            local = sc.batch_rows(batch, comm.rank, comm.size)[0]
            if i == 1 and comm.rank == comm.size - 1:
                if kind in ("raise", "uncaught"):
                    raise RuntimeError(f"boom on rank {comm.rank}")
                if kind == "die":
                    os.kill(os.getpid(), signal.SIGKILL)
                if kind == "bad_ids":
                    local.sparse["c0"].values[0] = 10 ** 6
            dist.train_step(local, sparse, dense, step)
    if kind == "uncaught":
        run()  # python -m mpi4py aborts the job on an uncaught exception
    else:
        with fail_fast(comm, expected=(ValueError, DistributedError)):
            run()


SCENARIOS = {"lookups": lookups, "model": model, "ckpt_save": ckpt_save,
             "ckpt_break": ckpt_break, "ckpt_resume": ckpt_resume, "ckpt_broken": ckpt_broken}


def main(out_dir, *scenarios):
    comm = world()
    for scenario in scenarios:
        if scenario.startswith("fault_"):
            fault(comm, out_dir, scenario[len("fault_"):])
        else:
            SCENARIOS[scenario](comm, out_dir)


if __name__ == "__main__":
    main(*sys.argv[1:])
