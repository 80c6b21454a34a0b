"""W1 (../shared/BENCH.md) through a dynamic table vs the static table.

Both run in the same process, alternating rounds (A B A B), on the same
batches: the static ``EmbeddingTable`` path of ``bench_w1`` (lookup ->
lookup_grad -> apply_gradients) and a ``DynamicEmbeddingTable`` whose keys
(the same ids, scrambled over the whole int64 range by a bijection) are all
admitted before timing. Reported: median ms/step of each and the median
of the per-round ratios, in wall time and in CPU time (the machines are
shared: CPU time is what the step itself costs; target: dynamic within
1.3x of static), the phases of each step, the dynamic lookup's kernel calls
(``lookup_parts``), the key map's lookups per CPU
second (``resolve(training=False)``, one read-only probe per id), bytes
per admitted key (values + slots + map, allocated and compulsory), and the
load average. One thread by default (issue 13's bar). ``main(argv)``
returns {distribution: wall-time ratio}.

    python scripts/bench_dynamic.py [--rows 1000000] [--dim 64] [--rounds 7] [--threads 1]
"""
import argparse
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import sparse_train as st  # noqa: E402
from sparse_train import functional as F  # noqa: E402
from sparse_train.kernels import key_map as K  # noqa: E402
from sparse_train.kernels import lookup as L  # noqa: E402

from bench_common import Contender, alternate, log, set_threads  # noqa: E402
from bench_w1 import make_optimizer, make_workload  # noqa: E402

#: an odd multiplier: ``id * _SCRAMBLE`` (mod 2**64) is a bijection of int64
_SCRAMBLE = np.int64(-7046029254386353131)


def scrambled(ids):
    """Keys spread over the int64 range (negative and huge), one per id."""
    with np.errstate(over="ignore"):
        return ids.astype(np.int64) * _SCRAMBLE


def admitted_table(num_rows, dim, optimizer_name, chunk=1 << 17):
    """A dynamic table holding keys ``scrambled(0..num_rows-1)``, admitted."""
    table = st.DynamicEmbeddingTable(dim, "dynamic", filter_freq=0)
    for start in range(0, num_rows, chunk):
        keys = scrambled(np.arange(start, min(num_rows, start + chunk)))
        table.lookup(keys, np.array([0, keys.shape[0]], np.int64), global_step=0)
    gs = st.GlobalStep()
    return table, make_optimizer(optimizer_name, gs), gs


def bytes_per_key(table):
    """(allocated bytes / admitted key, {part: bytes/key})."""
    parts = table.memory_bytes()
    n = max(len(table), 1)
    return sum(parts.values()) / n, {k: v / n for k, v in parts.items()}


def map_rates(table, batches, repeats=3):
    """Map lookups per CPU second (the machine is shared): (unique keys/s,
    ids/s) of ``table.resolve(values, training=False)``, one read-only probe
    per id."""
    best = float("inf")
    for _ in range(repeats):
        start = time.process_time()
        for values in batches:
            table.resolve(values, training=False)
        best = min(best, time.process_time() - start)
    uniques = sum(np.unique(values).shape[0] for values in batches)
    return uniques / best, sum(v.shape[0] for v in batches) / best


def lookup_parts(table, keys, offsets, between, steps):
    """Median ms of the kernel calls a training lookup of ``table`` (all keys
    admitted, a sum without weights) makes, as ``DynamicEmbeddingTable.lookup``
    makes them: probe (``probe_rows``), plan (``unit_grad_plan``, the
    gradient's grouping, reused by ``lookup_grad``), count
    (``count_plan_rows``), pool (``embedding_bag_forward``); "whole": the
    public lookup, timed on the other steps; "rest": whole minus the parts
    (argument checks, copies for ``lookup_grad``, Python). ``between(i)``
    runs before each step (a static step: the caches as in the rounds).
    Counts the keys again (a benchmark table)."""
    times = {"probe": [], "plan": [], "count": [], "pool": [], "whole": []}
    stats = table._km.stats
    for i in range(2 * steps):
        values, bag_offsets = keys[i % len(keys)], offsets[i % len(keys)]
        between(i)
        if i % 2:
            t0 = time.perf_counter()
            table.lookup(values, bag_offsets, global_step=1)
            times["whole"].append(time.perf_counter() - t0)
            continue
        t0 = time.perf_counter()
        rows = np.empty(values.shape[0], np.int64)
        K.probe_rows(rows, table._km.slots, values)
        t1 = time.perf_counter()
        plan = L.unit_grad_plan(rows, bag_offsets)
        t2 = time.perf_counter()
        K.count_plan_rows(stats, plan[0], plan[1], np.int64(1))
        t3 = time.perf_counter()
        F.embedding_bag(table.weight.value, rows, bag_offsets)
        t4 = time.perf_counter()
        for name, t in (("probe", t1 - t0), ("plan", t2 - t1), ("count", t3 - t2),
                        ("pool", t4 - t3)):
            times[name].append(t)
    ms = {name: 1e3 * float(np.median(t)) for name, t in times.items()}
    ms["rest"] = ms["whole"] - sum(ms[k] for k in ("probe", "plan", "count", "pool"))
    return ms


def run(distribution, args):
    work = make_workload("1Mx64", args.rows, args.dim, distribution, args.batches)
    keys = [scrambled(values) for values, _ in work.batches]
    weight = st.EmbeddingTable(args.rows, args.dim, "static").weight
    static_gs = st.GlobalStep()
    static_opt = make_optimizer(args.optimizer, static_gs)
    table, dynamic_opt, dynamic_gs = admitted_table(args.rows, args.dim, args.optimizer)
    d_out = work.d_out

    def static_step(i):
        values, offsets = work.batches[i % len(work.batches)]
        c0 = time.process_time()
        t0 = time.perf_counter()
        F.embedding_bag(weight, values, offsets)
        t1 = time.perf_counter()
        grad = F.embedding_bag_grad(d_out, values, offsets, weight.shape[0])
        t2 = time.perf_counter()
        static_opt.apply_gradients([(grad, weight)], global_step=static_gs)
        t3 = time.perf_counter()
        return {"lookup": t1 - t0, "grad": t2 - t1, "apply": t3 - t2,
                "cpu": time.process_time() - c0}

    def dynamic_step(i):
        values, offsets = keys[i % len(keys)], work.batches[i % len(keys)][1]
        c0 = time.process_time()
        t0 = time.perf_counter()
        table.lookup(values, offsets, global_step=dynamic_gs)
        t1 = time.perf_counter()
        grad = table.lookup_grad(d_out, values, offsets)
        t2 = time.perf_counter()
        dynamic_opt.apply_gradients([(grad, table.weight)], global_step=dynamic_gs)
        t3 = time.perf_counter()
        return {"lookup": t1 - t0, "grad": t2 - t1, "apply": t3 - t2,
                "cpu": time.process_time() - c0}

    contenders = [Contender("static", static_step), Contender("dynamic", dynamic_step)]
    results = alternate(contenders, args.rounds, args.steps, args.warmup)
    ratios = [d / s for s, d in zip(contenders[0].round_ms, contenders[1].round_ms)]
    cpu_ratios = [d / s for s, d in zip(contenders[0].phase_ms["cpu"],
                                        contenders[1].phase_ms["cpu"])]
    lookup_ms = lookup_parts(table, keys, [offsets for _, offsets in work.batches],
                         static_step, args.rounds * args.steps)
    uniques_per_s, positions_per_s = map_rates(table, keys)
    total, parts = bytes_per_key(table)
    slot_row = table.memory_bytes()["slots"] // table.rows_allocated
    compulsory = 4 * args.dim + slot_row + 16 + 4 * 16
    static, dynamic = results["static"], results["dynamic"]
    print(f"W1 {args.rows}x{args.dim} {distribution} {args.optimizer} "
          f"({work.unique_rows:.0f} unique ids a step), {args.rounds} rounds x {args.steps} steps:")
    print(f"  static  {static['ms']:7.2f} ms/step   dynamic {dynamic['ms']:7.2f} ms/step   "
          f"median round ratio dynamic/static {np.median(ratios):.3f} "
          f"(min {min(ratios):.3f}, max {max(ratios):.3f})")
    print(f"  CPU time (all threads): static {static['phases_ms']['cpu']:7.2f} ms/step   dynamic "
          f"{dynamic['phases_ms']['cpu']:7.2f} ms/step   median round ratio "
          f"{np.median(cpu_ratios):.3f} (min {min(cpu_ratios):.3f}, max {max(cpu_ratios):.3f})")
    for name, result in (("static", static), ("dynamic", dynamic)):
        print(f"  {name} phases (ms): " + ", ".join(
            f"{k} {v:.2f}" for k, v in result["phases_ms"].items()))
    print("  dynamic lookup's kernel calls (ms, a static step between): " + ", ".join(
        f"{k} {v:.2f}" for k, v in lookup_ms.items()))
    print(f"  key map: {uniques_per_s / 1e6:.1f} M unique keys/s, "
          f"{positions_per_s / 1e6:.1f} M ids/s (read-only resolve, per CPU second)")
    print(f"  bytes per admitted key: {total:.0f} allocated ("
          + ", ".join(f"{k} {v:.0f}" for k, v in parts.items())
          + f"); compulsory {compulsory} (values {4 * args.dim} + slots {slot_row} "
          f"+ count and last_seen 16 + a 16-byte map record at load 1/4)")
    print(f"  others' load during the rounds: {results['others_cores']:.2f} cores; "
          f"load average {os.getloadavg()}")
    return float(np.median(ratios))


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--dim", type=int, default=64)
    parser.add_argument("--distributions", default="zipf,uniform")
    parser.add_argument("--optimizer", default="adagrad")
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--batches", type=int, default=8)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    set_threads(args.threads)
    log(f"load average at start: {os.getloadavg()}")
    return {d: run(d, args) for d in args.distributions.split(",")}


if __name__ == "__main__":
    main()
