"""W1 step on a 16-bit table against the float32 step (issue 15, item 3).

One table of W1 (default 1M x 64, uniform ids, 4096 bags x 26), the same
batches and upstream gradient for every contender; one step is the public
path: ``embedding_bag`` -> ``embedding_bag_grad`` -> ``apply_gradients``.
Contenders (float32, bfloat16, float16, each with nearest or stochastic
rounding as asked) run in alternating rounds (A B C A B C ...); a round is
``--steps`` steps, timed in wall time and in process CPU time
(``time.process_time``, every thread of the process). Figures are medians
over rounds, per step; the ratios float32 / 16-bit come from the same run.
The load average is printed before and after: compare ratios only.

Each step is also split in phases (wall time, medians over rounds): lookup
(``embedding_bag``), grad (``embedding_bag_grad``), grouping (the optimizer's
``prepare_gradients``: the summed-gradient plan) and update
(``apply_prepared``: the kernel), with the bytes each moves per second: the
lookup reads every id's row, the update reads and writes each touched row of
the table and of its slots (GB/s = those bytes / phase time).

    PYTHONPATH=. python scripts/bench_half.py --optimizers sgd adagrad rowwise_adagrad
"""
import argparse
import os
import sys
import time

import numba
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import sparse_train as st  # noqa: E402
from sparse_train import functional as F  # noqa: E402

from bench_w1 import BAG_SIZE, NUM_BAGS, make_optimizer  # noqa: E402


def make_batches(num_rows, dim, num_batches, seed=0):
    rng = np.random.default_rng(seed)
    offsets = np.arange(0, NUM_BAGS * BAG_SIZE + 1, BAG_SIZE, dtype=np.int64)
    batches = [(rng.integers(0, num_rows, NUM_BAGS * BAG_SIZE, dtype=np.int64), offsets)
               for _ in range(num_batches)]
    d_out = (0.1 * rng.standard_normal((NUM_BAGS, dim))).astype(np.float32)
    return batches, d_out


PHASES = ("lookup", "grad", "grouping", "update")


class Contender:
    """One table (dtype, rounding) and its optimizer, stepping through the batches."""

    def __init__(self, dtype, rounding, optimizer, num_rows, dim, batches, d_out):
        self.name = dtype if dtype == "float32" else f"{dtype}/{rounding}"
        table = st.EmbeddingTable(num_rows, dim, f"t_{dtype}_{rounding}", initializer="uniform",
                                  seed=0, dtype=dtype, rounding=rounding)
        self.weight = table.weight
        self.global_step = st.GlobalStep()
        self.optimizer = make_optimizer(optimizer, self.global_step)
        self.batches, self.d_out = batches, d_out
        self.calls = 0
        self.wall, self.cpu = [], []
        self.phases = {name: [] for name in PHASES}
        self._sums = dict.fromkeys(PHASES, 0.0)

    def step(self):
        values, offsets = self.batches[self.calls % len(self.batches)]
        self.calls += 1
        t0 = time.perf_counter()
        F.embedding_bag(self.weight, values, offsets, combiner="sum")
        t1 = time.perf_counter()
        grad = F.embedding_bag_grad(self.d_out, values, offsets, self.weight.shape[0])
        t2 = time.perf_counter()
        prepared = self.optimizer.prepare_gradients([(grad, self.weight)], self.global_step)
        t3 = time.perf_counter()
        self.optimizer.apply_prepared(prepared, self.global_step)
        t4 = time.perf_counter()
        for name, seconds in zip(PHASES, (t1 - t0, t2 - t1, t3 - t2, t4 - t3)):
            self._sums[name] += seconds

    def run(self, steps):
        self._sums = dict.fromkeys(PHASES, 0.0)
        wall, cpu = time.perf_counter(), time.process_time()
        for _ in range(steps):
            self.step()
        self.wall.append((time.perf_counter() - wall) / steps)
        self.cpu.append((time.process_time() - cpu) / steps)
        for name in PHASES:
            self.phases[name].append(self._sums[name] / steps)

    def phase_bytes(self):
        """Bytes per step of the lookup (rows read) and of the update (touched
        rows of the table and its slots, read and written), averaged over
        the batches."""
        row = self.weight.value.itemsize * self.weight.shape[1]
        slot = sum(self.optimizer.get_slot(self.weight, name).value.nbytes
                   for name in self.optimizer.get_slot_names()) // self.weight.shape[0]
        ids = np.mean([values.shape[0] for values, _ in self.batches])
        touched = np.mean([np.unique(values).shape[0] for values, _ in self.batches])
        return {"lookup": ids * row, "update": 2 * touched * (row + slot)}


def load():
    return "load average %.2f %.2f %.2f" % os.getloadavg()


def run(optimizer, threads, args, batches, d_out):
    numba.set_num_threads(threads)
    contenders = [Contender("float32", "nearest", optimizer, args.rows, args.dim,
                            batches, d_out)]
    for dtype in args.dtypes:
        for rounding in args.roundings:
            contenders.append(Contender(dtype, rounding, optimizer, args.rows, args.dim,
                                        batches, d_out))
    for c in contenders:
        for _ in range(args.warmup):
            c.step()
    for _ in range(args.rounds):
        for c in contenders:
            time.sleep(0.02)
            c.run(args.steps)
    base = contenders[0]
    base_wall, base_cpu = np.median(base.wall), np.median(base.cpu)
    print(f"{optimizer} {threads} thread(s), {load()}")
    rows = []
    for c in contenders:
        wall, cpu = np.median(c.wall), np.median(c.cpu)
        print(f"  {c.name:22s} wall {1e3 * wall:7.2f} ms  cpu {1e3 * cpu:7.2f} ms   "
              f"float32/this: wall {base_wall / wall:5.2f}x  cpu {base_cpu / cpu:5.2f}x")
        phases = {name: 1e3 * np.median(c.phases[name]) for name in PHASES}
        rates = {name: nbytes / (1e6 * phases[name]) for name, nbytes in c.phase_bytes().items()}
        print("  " + " " * 22 + "  ".join(
            f"{name} {phases[name]:.2f} ms" + (f" ({rates[name]:.1f} GB/s)" if name in rates else "")
            for name in PHASES))
        rows.append({"optimizer": optimizer, "threads": threads, "table": c.name,
                     "wall_ms": 1e3 * wall, "cpu_ms": 1e3 * cpu,
                     "float32/this wall": base_wall / wall, "float32/this cpu": base_cpu / cpu,
                     "phases_ms": phases, "phases_gb_s": rates})
    sys.stdout.flush()
    return rows


def main(argv=None):
    """Run the contenders; returns ``{"meta": {...}, "rows": [...]}`` (one row
    per optimizer, thread count and table format, with the float32 ratios)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--dim", type=int, default=64)
    parser.add_argument("--optimizers", nargs="+", default=["sgd", "adagrad", "rowwise_adagrad"])
    parser.add_argument("--dtypes", nargs="+", default=["bfloat16", "float16"])
    parser.add_argument("--roundings", nargs="+", default=["nearest", "stochastic"])
    parser.add_argument("--threads", nargs="+", type=int, default=[1, 2])
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--batches", type=int, default=8)
    args = parser.parse_args(argv)
    load_before = os.getloadavg()
    print(load())
    batches, d_out = make_batches(args.rows, args.dim, args.batches)
    rows = []
    for optimizer in args.optimizers:
        for threads in args.threads:
            rows += run(optimizer, threads, args, batches, d_out)
    numba.set_num_threads(numba.config.NUMBA_NUM_THREADS)
    print(load())
    return {"meta": {"load_before": load_before, "load_after": os.getloadavg(),
                     "table": f"{args.rows // 1_000_000}Mx{args.dim}" if args.rows % 1_000_000 == 0
                     else f"{args.rows}x{args.dim}", "ids": "uniform",
                     "command": "python scripts/bench_half.py " + " ".join(argv or [])},
            "rows": rows}


if __name__ == "__main__":
    main()
