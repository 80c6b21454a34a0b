#!/usr/bin/env python
"""Distributed benchmark: W1-like and W2-like steps, 2 ranks beside 1 process.

    python scripts/bench_distributed.py                  # small sizes, about a minute
    python scripts/bench_distributed.py --workloads w1 --rows 1000000 --dim 64 --steps 20
    python scripts/bench_distributed.py --ranks 2,3 --json out.json
    python scripts/bench_distributed.py --drift --ranks 2,3 --steps 100   # exactness

W1-like: one table, a global batch of ``--bags`` bags of ``--bag-size``
Zipf(1.1) ids, pooled lookup + backward + Adagrad update (BENCH.md's W1 at
smaller default sizes). W2-like: DeepFM (MLP 400-400-400) on 26 Zipf
features with Criteo-like cardinalities capped at ``--vocab-cap``, 13
numeric features, tables on AdagradDecay, dense layers on Adam.

Each configuration runs in its own process(es): one process with 1 and
with 2 Numba threads (the plain single-process API), one process through
``DistributedModel`` on a ``SingleProcessComm`` (the exchange machinery's
own cost), and ``mpirun -n R`` ranks with 1 thread each. A step's time is
the slowest rank's; medians over ``--steps`` timed steps after
``--warmup``. Exchange columns are seconds inside collectives (waiting for
a slower rank included): forward lookups, backward gradients, dense
Allreduce. On a 2-core machine 2 ranks use both cores, as does one process
with 2 threads: compare those two rows.

``--drift`` measures exactness instead: DeepFM on the synthetic log trained
by R ranks and, on rank 0, by one process on the same global batches; per
step the largest ``max|a - b| / max|b|`` over dense variables (with their
Adam slots) and over tables (with their slots).
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
import time

import numpy as np

from bench_workloads import VOCABULARY_SIZES

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)

PHASES = ("lookup_exchange", "gradient_exchange", "dense_allreduce")


# ------------------------------------------------------------------ data
def zipf_ids(rng, num_rows, size, permutation, exponent=1.1):
    """``size`` Zipf(exponent) ids of ``num_rows`` (``data.synthetic.zipf_ranks``),
    ranks spread over the table by ``permutation``."""
    from sparse_train.data.synthetic import zipf_ranks
    return permutation[zipf_ranks(rng, num_rows, size, exponent)]


def w1_batches(opts, num_batches):
    import sparse_train as st
    rng = np.random.default_rng(0)
    permutation = rng.permutation(opts.rows)
    offsets = np.arange(0, opts.bags * opts.bag_size + 1, opts.bag_size, dtype=np.int64)
    return [st.Ragged(zipf_ids(rng, opts.rows, opts.bags * opts.bag_size, permutation), offsets)
            for _ in range(num_batches)]


def w2_spec(opts):
    from sparse_train.data import DataSpec, FeatureSpec
    sizes = [min(v, opts.vocab_cap) for v in VOCABULARY_SIZES]
    return DataSpec(tuple(FeatureSpec(f"C{i + 1}", v) for i, v in enumerate(sizes)),
                    tuple(f"I{i + 1}" for i in range(13)))


def w2_batches(opts, spec, num_batches):
    import sparse_train as st
    from sparse_train.data import Batch
    rng = np.random.default_rng(0)
    perms = [rng.permutation(f.num_embeddings) for f in spec.sparse_features]
    offsets = np.arange(opts.batch + 1, dtype=np.int64)
    batches = []
    for _ in range(num_batches):
        sparse = {f.name: st.Ragged(zipf_ids(rng, f.num_embeddings, opts.batch, p), offsets)
                  for f, p in zip(spec.sparse_features, perms)}
        dense = np.log1p(rng.lognormal(1.0, 1.5, (opts.batch, 13))).astype(np.float32)
        labels = (rng.random(opts.batch) < 0.25).astype(np.float32)
        batches.append(Batch(labels, dense, sparse))
    return batches


# --------------------------------------------------------------- workers
def _slice(ragged, comm):
    from sparse_train.distributed import batch_slice
    import sparse_train as st
    start, stop = batch_slice(ragged.num_bags, comm.rank, comm.size)
    lo, hi = ragged.offsets[start], ragged.offsets[stop]
    return st.Ragged(ragged.values[lo:hi], ragged.offsets[start:stop + 1] - lo)


def run_w1(opts, comm, mode):
    """Per-step seconds and collective seconds of W1 in ``mode``."""
    import sparse_train as st
    from sparse_train import functional as F
    from sparse_train.distributed import LookupExchange, ShardedEmbeddingBag, ShardedTable
    batches = w1_batches(opts, 4)
    table = st.EmbeddingTable(opts.rows, opts.dim, "w1", seed=0)
    optimizer = st.optim.Adagrad(0.01)
    d_out = np.random.default_rng(1).normal(size=(opts.bags, opts.dim)).astype(np.float32)
    if mode == "plain":
        def step(i):
            ids = batches[i % len(batches)]
            F.embedding_bag(table.weight, ids.values, ids.offsets)
            grad = F.embedding_bag_grad(d_out, ids.values, ids.offsets, opts.rows)
            optimizer.apply_gradients([(grad, table.weight)])
        return _time_steps(opts, comm, step, {})
    shard = ShardedTable(table, comm.rank, comm.size)
    del table
    exchange = LookupExchange(comm, [ShardedEmbeddingBag(shard, "sum", name="ids")])
    local = [_slice(b, comm) for b in batches]
    start = _slice_bounds(opts.bags, comm)

    def step(i):
        ids = local[i % len(local)]
        exchange.forward({"ids": ids}, ids.num_bags)
        exchange.pooled(0, ids)
        exchange.record_grad(0, d_out[start[0]:start[1]])
        grads = exchange.backward()
        optimizer.apply_gradients([(grads["w1"], shard.weight)])
    return _time_steps(opts, comm, step, exchange.timings)


def run_w2(opts, comm, mode):
    import sparse_train as st
    from sparse_train.distributed import DistributedModel, local_batch
    spec = w2_spec(opts)
    batches = w2_batches(opts, spec, 3)
    model = st.build_model("deepfm", spec, embedding_dim=16, seed=0,
                           hidden_units=tuple(opts.hidden_units))
    global_step = st.GlobalStep()
    sparse = st.optim.AdagradDecay(0.01, global_step)
    dense = st.optim.Adam(0.001)
    if mode == "plain":
        return _time_steps(opts, comm, lambda i: st.train_step(
            model, batches[i % len(batches)], sparse, dense, global_step), {})
    dist = DistributedModel(model, comm)
    local = [local_batch(b, comm) for b in batches]
    return _time_steps(opts, comm, lambda i: dist.train_step(
        local[i % len(local)], sparse, dense, global_step), dist.timings)


def run_drift(opts, comm, mode):
    """How far 2+ ranks drift from one process: rank 0 also trains the
    one-process model on the global batches; per step, the largest
    max|a - b| / max|b| over dense variables (and their Adam slots) and over
    tables (and their slots)."""
    import sparse_train as st
    from sparse_train.checkpoint import optimizer_state_dict
    from sparse_train.data import open_dataset
    from sparse_train.distributed import DistributedModel, local_batch
    data = open_dataset(format="synthetic", num_examples=opts.drift_examples, seed=0,
                        batch_size=opts.drift_batch)

    def setup():
        model = st.build_model("deepfm", data.spec, embedding_dim=16, seed=0,
                               hidden_units=tuple(opts.hidden_units))
        step = st.GlobalStep()
        return (model, st.optim.AdagradDecay(0.05, step, name="sparse"),
                st.optim.Adam(0.002, name="dense"), step)
    model, sparse, dense, step = setup()
    dist = DistributedModel(model, comm)
    if comm.rank == 0:
        reference = setup()
    tables = [t.name for t in dist.tables.values()]
    dense_names = {v.name for v in dist.dense_variables()}
    curve = []
    batches = (b for epoch in range(1000) for b in data.batches(shuffle=True, seed=epoch))
    for i, batch in zip(range(opts.steps), batches):
        dist.train_step(local_batch(batch, comm), sparse, dense, step)
        if comm.rank == 0:
            st.train_step(reference[0], batch, *reference[1:])
        state = {v.name: v.value for v in dist.variables()}
        for opt in (sparse, dense):
            state.update(optimizer_state_dict(opt))
        gathered = comm.allgather(state)
        if comm.rank != 0:
            continue
        expected = {v.name: v.value for v in reference[0].variables()}
        for opt in reference[1:3]:
            expected.update(optimizer_state_dict(opt))
        worst = {"dense": 0.0, "dense_weights": 0.0, "tables": 0.0}
        for name, value in expected.items():
            table = next((t for t in tables if name == t or name.startswith(t + "/")), None)
            if table is None and name in dense_names:
                got = gathered[0][name]
                worst["dense_weights"] = max(worst["dense_weights"], float(
                    np.abs(got.astype(np.float64) - value).max(initial=0.0)
                    / max(float(np.abs(value).max(initial=0.0)), 1e-30)))
            got = gathered[0][name]
            if table is not None:
                got = np.empty_like(value)
                for r, theirs in enumerate(gathered):
                    got[r::comm.size] = theirs[name][:got[r::comm.size].shape[0]]
            rel = float(np.abs(got.astype(np.float64) - value).max(initial=0.0)
                        / max(float(np.abs(value).max(initial=0.0)), 1e-30))
            kind = "dense" if table is None else "tables"
            worst[kind] = max(worst[kind], rel)
        curve.append(worst)
    if comm.rank != 0:
        return {}
    return {"steps": len(curve), "curve": curve,
            "dense_max": max(c["dense"] for c in curve),
            "dense_weights_max": max(c["dense_weights"] for c in curve),
            "tables_max": max(c["tables"] for c in curve),
            "first_step": curve[0]}


def _slice_bounds(num, comm):
    from sparse_train.distributed import batch_slice
    return batch_slice(num, comm.rank, comm.size)


def _time_steps(opts, comm, step, timings):
    """Median over steps of the slowest rank's step and collective times."""
    rows = []
    for i in range(opts.warmup + opts.steps):
        comm.barrier()
        before = {p: timings.get(p, 0.0) for p in PHASES}
        started = time.perf_counter()
        step(i)
        elapsed = time.perf_counter() - started
        if i >= opts.warmup:
            rows.append([elapsed] + [timings.get(p, 0.0) - before[p] for p in PHASES])
    everyone = np.array(comm.allgather(rows))          # [ranks, steps, 1 + phases]
    slowest = everyone[:, :, 0].argmax(axis=0)         # per step: the slowest rank
    per_step = everyone[slowest, np.arange(everyone.shape[1])]
    return {k: statistics.median(per_step[:, j]) * 1e3
            for j, k in enumerate(("step_ms",) + tuple(f"{p}_ms" for p in PHASES))}


def worker(opts):
    import numba
    from sparse_train.distributed import world
    comm = world()
    run = {"w1": run_w1, "w2": run_w2, "drift": run_drift}[opts.worker]
    result = run(opts, comm, opts.mode)
    if comm.rank == 0 and opts.worker == "drift":
        print("RESULT " + json.dumps(dict(result, ranks=comm.size)), flush=True)
    elif comm.rank == 0:
        examples = opts.bags if opts.worker == "w1" else opts.batch
        result.update(workload=opts.worker, mode=opts.mode, ranks=comm.size,
                      threads=numba.get_num_threads(),
                      samples_per_s=examples / result["step_ms"] * 1e3)
        print("RESULT " + json.dumps(result), flush=True)


# ------------------------------------------------------------------ main
def launch(opts, workload, mode, ranks, threads):
    """Run one configuration in fresh process(es); its result dict."""
    env = dict(os.environ, NUMBA_NUM_THREADS=str(threads), OMP_NUM_THREADS=str(threads),
               OPENBLAS_NUM_THREADS=str(threads), OMPI_ALLOW_RUN_AS_ROOT="1",
               OMPI_ALLOW_RUN_AS_ROOT_CONFIRM="1")
    args = [os.path.abspath(__file__), "--worker", workload, "--mode", mode] + opts.forward
    if ranks > 1:
        mpirun = os.path.join(os.path.dirname(sys.executable), "mpirun")
        command = [mpirun if os.path.exists(mpirun) else "mpirun", "-n", str(ranks),
                   "--oversubscribe", sys.executable, "-m", "mpi4py"] + args
    else:
        command = [sys.executable] + args
    done = subprocess.run(command, env=env, cwd=ROOT, capture_output=True, text=True,
                          timeout=opts.timeout)
    lines = [l for l in done.stdout.splitlines() if l.startswith("RESULT ")]
    if done.returncode != 0 or not lines:
        raise SystemExit(f"{' '.join(command)} failed ({done.returncode}):\n{done.stderr[-3000:]}")
    return json.loads(lines[-1][len("RESULT "):])


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog=__doc__.split("\n\n", 1)[1])
    p.add_argument("--workloads", default="w1,w2")
    p.add_argument("--ranks", default="2", help="world sizes to run, e.g. 2,3")
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--rows", type=int, default=200_000, help="W1 table rows")
    p.add_argument("--dim", type=int, default=32, help="W1 embedding dim")
    p.add_argument("--bags", type=int, default=4096, help="W1 global batch (bags)")
    p.add_argument("--bag-size", type=int, default=26, help="W1 ids a bag")
    p.add_argument("--vocab-cap", type=int, default=100_000, help="W2 rows a table, at most")
    p.add_argument("--batch", type=int, default=4096, help="W2 global batch")
    p.add_argument("--hidden-units", default="400,400,400", help="W2 MLP widths")
    p.add_argument("--drift", action="store_true",
                   help="instead: measure how far R ranks' DeepFM drifts from one process")
    p.add_argument("--drift-examples", type=int, default=20_000)
    p.add_argument("--drift-batch", type=int, default=1024)
    p.add_argument("--json", help="also write the results here")
    p.add_argument("--timeout", type=int, default=600)
    p.add_argument("--worker", help=argparse.SUPPRESS)
    p.add_argument("--mode", help=argparse.SUPPRESS)
    opts = p.parse_args(argv)
    opts.hidden_units = [int(u) for u in opts.hidden_units.split(",")]
    if opts.worker:
        return worker(opts)
    opts.forward = [f"--{key.replace('_', '-')}={getattr(opts, key)}" for key in
                    ("steps", "warmup", "rows", "dim", "bags", "bag_size", "vocab_cap", "batch",
                     "drift_examples", "drift_batch")]
    opts.forward.append("--hidden-units=" + ",".join(map(str, opts.hidden_units)))
    if opts.drift:
        return drift(opts)
    configs = [("plain", 1, 1), ("plain", 1, 2), ("sharded", 1, 1)]
    configs += [("sharded", int(r), 1) for r in opts.ranks.split(",")]
    results = []
    for workload in opts.workloads.split(","):
        for mode, ranks, threads in configs:
            print(f"running {workload} {mode} ranks={ranks} threads={threads}", file=sys.stderr,
                  flush=True)
            results.append(launch(opts, workload, mode, ranks, threads))
    header = (f"{'workload':8} {'configuration':34} {'step ms':>8} {'lookup x':>9} "
              f"{'grad x':>8} {'allreduce':>9} {'compute':>8} {'samples/s':>11}")
    print(header)
    print("-" * len(header))
    for r in results:
        exchange = sum(r[f"{p}_ms"] for p in PHASES)
        what = (f"1 process, {r['threads']} thread(s)" if r["mode"] == "plain" and r["ranks"] == 1
                else f"DistributedModel, {r['ranks']} rank(s) x {r['threads']} thread")
        print(f"{r['workload']:8} {what:34} {r['step_ms']:8.1f} {r['lookup_exchange_ms']:9.2f} "
              f"{r['gradient_exchange_ms']:8.2f} {r['dense_allreduce_ms']:9.2f} "
              f"{r['step_ms'] - exchange:8.1f} {r['samples_per_s']:11,.0f}")
    if opts.json:
        with open(opts.json, "w") as f:
            json.dump({"options": {k: v for k, v in vars(opts).items() if k != "forward"},
                       "results": results}, f, indent=2)
    return 0


def drift(opts):
    """Print the drift of each world size from one process, step by step."""
    results = []
    for ranks in [int(r) for r in opts.ranks.split(",")]:
        print(f"running drift ranks={ranks}", file=sys.stderr, flush=True)
        results.append(launch(opts, "drift", "sharded", ranks, 1))
    print("largest max|a - b| / max|b| of a variable (R ranks vs one process), after the first "
          "step and over all steps; dense = weights and Adam slots")
    print(f"{'ranks':>5} {'steps':>5} {'dense 1st':>10} {'weights 1st':>12} {'tables 1st':>11} "
          f"{'dense max':>10} {'weights max':>12} {'tables max':>11}")
    for r in results:
        first = r["first_step"]
        print(f"{r['ranks']:>5} {r['steps']:>5} {first['dense']:10.2e} "
              f"{first['dense_weights']:12.2e} {first['tables']:11.2e} {r['dense_max']:10.2e} {r['dense_weights_max']:12.2e} "
              f"{r['tables_max']:11.2e}")
    if opts.json:
        with open(opts.json, "w") as f:
            json.dump(results, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
