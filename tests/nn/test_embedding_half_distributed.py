"""16-bit tables under ``DistributedModel``: 2 ranks give the bits of one
process. Lookups exchange the rows widened (exact); each owner updates its
shard, and stochastic rounding hashes the GLOBAL row, so the random bits do
not depend on the rank count.

Run as a test, this module launches itself under ``mpirun -n 2`` (``main``
below is the MPI side) and holds rank 0's assembled state against the
same steps in this process."""
import os
import sys
from pathlib import Path

import numpy as np
import pytest

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "distributed"))
import _launch as launch  # noqa: E402
import _scenarios as sc  # noqa: E402

import sparse_train as st  # noqa: E402
from sparse_train import autodiff as ad  # noqa: E402

KINDS = ("adagrad", "lazy_adam")


def half_lookup_model():
    """``_scenarios.lookup_model`` with bfloat16 embedding tables that round
    stochastically (hashed and padded tables included)."""
    model = st.build_model("fm", sc.LOOKUP_SPEC, **sc.LOOKUP_OPTIONS, table_dtype="bfloat16",
                           table_rounding="stochastic")
    rng = np.random.default_rng(7)
    for table in model.linear.weights.tables.values():
        table.weight.value[:] = rng.normal(0, 0.1, table.weight.shape)
    for collection in (model.linear.weights, model.embedding):
        collection.tables["hashed"].hash_ids = True
        padded = collection.tables["padded"]
        padded.padding_idx = sc.PADDING_IDX
        padded.weight.value[sc.PADDING_IDX] = 0
    return model


def one_process():
    arrays = {}
    for kind in KINDS:
        model, step = half_lookup_model(), st.GlobalStep()
        opt = sc.OPTIMIZERS[kind](step)
        for s in range(len(sc.LOOKUP_BATCH_SIZES)):
            batch = sc.lookup_batch(s)
            outputs = sc.lookup_outputs(model, batch)
            arrays.update({f"{kind}/out/{s}/{n}": t.data for n, t in outputs})
            loss = sc.upstream_loss(outputs, s, 0, batch.size)
            opt.apply_gradients(ad.compute_gradients(loss, model.sparse_variables()),
                                global_step=step)
        state = sc.state_of(model.sparse_variables(), [opt], step)
        arrays.update({f"{kind}/state/{n}": a for n, a in state.items()})
    return arrays


def main(out_dir):
    """The MPI side: the same steps on this rank's slice of each batch."""
    import _worker
    from sparse_train.distributed import DistributedModel, world
    comm, arrays = world(), {}
    for kind in KINDS:
        model, step = half_lookup_model(), st.GlobalStep()
        dist = DistributedModel(model, comm)
        opt = sc.OPTIMIZERS[kind](step)
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
        state = _worker.assemble(comm, dist, sc.state_of(dist.sparse_variables(), [opt], step))
        if state is not None:
            arrays.update({f"{kind}/state/{n}": a for n, a in state.items()})
    _worker.save(comm, out_dir, "half", arrays)


@pytest.mark.skipif(launch.mpi_missing() is not None, reason=launch.mpi_missing() or "")
def test_two_ranks_give_the_bits_of_one_process(tmp_path):
    expected = one_process()  # first: the ranks then load its kernels from Numba's cache
    launch.run(2, __file__, str(tmp_path), timeout=600).check()
    got = dict(np.load(tmp_path / "half-2.npz"))
    table = "lk/embedding/weight"
    assert expected[f"adagrad/state/{table}"].dtype == np.uint16
    assert sorted(got) == sorted(expected)
    different = [k for k in expected if expected[k].dtype != got[k].dtype
                 or expected[k].tobytes() != got[k].tobytes()]
    assert not different, different


if __name__ == "__main__":
    main(*sys.argv[1:])
