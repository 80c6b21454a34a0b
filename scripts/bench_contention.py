"""W1 when another process takes a core: our 1- and 2-thread steps, quiet
and contended, in the same rounds (issue 15, item 4).

    python scripts/bench_contention.py                   # about a minute on 2 cores
    python scripts/bench_contention.py --tables 10Mx16 --ids zipf --optimizers sgd
    python scripts/bench_contention.py --torch-first     # torch imported before us

A "busy" process (``while True: pass``, started and stopped here; pinned to
the last core with ``--pin``) runs during the contended rounds and is
stopped (SIGSTOP) during the quiet ones, so both conditions alternate in
the same rounds: quiet 1 thread, quiet 2 threads, busy 1 thread, busy 2
threads, then the next round. The parallel kernels learn whether to run a
region alone (``kernels._jit``: when the second thread comes late); each
condition learns it in ``--warmup`` untimed steps of its own before the
rounds and resumes it round after round (``_jit.set_team_state``): the
steady state of a job that runs in that condition all along, and a quiet
round is not run alone because the busy round before it was. Figures are medians over rounds and ratios
taken within this run:

- ``busy2/busy1``: the 2-thread step against the 1-thread step, both under
  the busy process (target <= 1: a second thread never hurts);
- ``busy2/quiet2``: the 2-thread step under the busy process against itself
  quiet (target <= 1.5).

The machine's load average is printed before and after: other processes
load it too, so the quiet rounds are only as quiet as the machine.
``--torch-first`` imports torch (when installed) before ``sparse_train``,
so torch's OpenMP runtime starts first: the case where its long spin-waits
used to fight ours; without torch it is skipped with a note.
"""
import argparse
import json
import os
import signal
import subprocess
import sys
import time

if "--torch-first" in sys.argv[1:]:
    try:
        import torch  # noqa: F401  before sparse_train on purpose (see the docstring)
    except ImportError:
        torch = None

import sparse_train as st  # noqa: E402  first: sets the thread pools' spin limits
from sparse_train.kernels import _jit  # noqa: E402
import numba  # noqa: E402
import numpy as np  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import bench_w1 as w1  # noqa: E402
from bench_common import log  # noqa: E402

OPTIMIZERS = ("sgd",) + w1.OPTIMIZERS
CONDITIONS = (("quiet", 1), ("quiet", 2), ("busy", 1), ("busy", 2))


def make_optimizer(name, global_step):
    if name == "sgd":
        return st.optim.GradientDescent(w1.LEARNING_RATE)
    return w1.make_optimizer(name, global_step)


class BusyProcess:
    """A process spinning on one core, paused (SIGSTOP) when not wanted."""

    def __init__(self, pin):
        self.proc = subprocess.Popen([sys.executable, "-c", "while True: pass"])
        if pin:
            os.sched_setaffinity(self.proc.pid, {max(os.sched_getaffinity(0))})
        self.pause()

    def pause(self):
        self.proc.send_signal(signal.SIGSTOP)

    def resume(self):
        self.proc.send_signal(signal.SIGCONT)
        time.sleep(0.05)  # let the scheduler place it

    def close(self):
        self.proc.send_signal(signal.SIGCONT)
        self.proc.kill()
        self.proc.wait()


def run_config(table, distribution, optimizer, busy, rounds, steps, warmup, batches):
    num_rows, dim = w1.TABLES[table]
    work = w1.make_workload(table, num_rows, dim, distribution, batches)
    weight = st.EmbeddingTable(num_rows, dim, "w1_table", initializer="uniform", seed=0).weight
    global_step = st.GlobalStep()
    opt = make_optimizer(optimizer, global_step)
    calls = [0]

    def step():
        values, offsets = work.batches[calls[0] % len(work.batches)]
        w1.our_step(weight, opt, global_step, values, offsets, work.d_out)
        calls[0] += 1

    # each condition's own team choice (kernels._jit.team_state), learnt in
    # ``warmup`` untimed steps in that condition and carried from round to
    # round: as in a job that runs in that condition all along
    team = {c: (0, _jit.SOLO_REGIONS, 0) for c in CONDITIONS}
    times = {c: [] for c in CONDITIONS}
    for round_index in range(-1, rounds):
        for condition in CONDITIONS:
            state, threads = condition
            if state == "busy":
                busy.resume()
            numba.set_num_threads(threads)
            _jit.set_team_state(team[condition])
            if round_index < 0:
                for _ in range(warmup):
                    step()
            else:
                step()  # one untimed step: the pool settles after the change
                start = time.perf_counter()
                for _ in range(steps):
                    step()
                times[condition].append(1e3 * (time.perf_counter() - start) / steps)
            team[condition] = _jit.team_state()
            if state == "busy":
                busy.pause()
            time.sleep(0.02)
    _jit.set_team_state()
    med = {c: float(np.median(v)) for c, v in times.items()}
    row = {"table": table, "ids": distribution, "optimizer": optimizer,
           **{f"{s}{t}_ms": med[(s, t)] for s, t in CONDITIONS},
           "busy2/busy1": med[("busy", 2)] / med[("busy", 1)],
           "busy2/quiet2": med[("busy", 2)] / med[("quiet", 2)],
           "quiet2/quiet1": med[("quiet", 2)] / med[("quiet", 1)]}
    del work, weight, opt
    return row


def print_table(rows):
    head = ("config", "quiet1", "quiet2", "busy1", "busy2", "b2/b1", "b2/q2")
    print("{:<28}{:>9}{:>9}{:>9}{:>9}{:>8}{:>8}".format(*head))
    for r in rows:
        name = f"{r['table']} {r['ids']} {r['optimizer']}"
        print("{:<28}{:>9.2f}{:>9.2f}{:>9.2f}{:>9.2f}{:>8.2f}{:>8.2f}".format(
            name, r["quiet1_ms"], r["quiet2_ms"], r["busy1_ms"], r["busy2_ms"],
            r["busy2/busy1"], r["busy2/quiet2"]))


def parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--tables", default="10Mx16,1Mx64")
    p.add_argument("--ids", default="zipf,uniform")
    p.add_argument("--optimizers", default="sgd,adagrad")
    p.add_argument("--rounds", type=int, default=7)
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--warmup", type=int, default=20,
                   help="untimed steps in each condition before the rounds")
    p.add_argument("--batches", type=int, default=4)
    p.add_argument("--pin", action="store_true", help="pin the busy process to the last core")
    p.add_argument("--torch-first", action="store_true",
                   help="import torch before sparse_train (skipped without torch)")
    p.add_argument("--json", metavar="OUT.json")
    args = p.parse_args(argv)
    for name, allowed in (("tables", w1.TABLES), ("ids", w1.DISTRIBUTIONS),
                          ("optimizers", OPTIMIZERS)):
        values = getattr(args, name).split(",")
        bad = [v for v in values if v not in allowed]
        if bad:
            p.error(f"--{name}: {bad} not in {sorted(allowed)}")
        setattr(args, name, values)
    return args


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    if numba.config.NUMBA_NUM_THREADS < 2:
        log("bench_contention: needs 2 threads (NUMBA_NUM_THREADS >= 2); skipped")
        return {"skipped": "fewer than 2 threads"}
    note = None
    if args.torch_first and sys.modules.get("torch") is None:
        note = "torch is not installed: the torch-imported-first case is skipped"
        log(note)
        return {"skipped": note}
    meta = {"load_before": os.getloadavg(), "threading_layer": None,
            "torch_first": bool(args.torch_first), "pin": args.pin,
            "command": " ".join(["python", "scripts/bench_contention.py"] + list(argv))}
    busy = BusyProcess(args.pin)
    rows = []
    try:
        for table in args.tables:
            for distribution in args.ids:
                for optimizer in args.optimizers:
                    log(f"contention: {table} {distribution} {optimizer}")
                    rows.append(run_config(table, distribution, optimizer, busy, args.rounds,
                                           args.steps, args.warmup, args.batches))
    finally:
        busy.close()
        numba.set_num_threads(numba.config.NUMBA_NUM_THREADS)
    meta["load_after"] = os.getloadavg()
    meta["threading_layer"] = numba.threading_layer()
    print(f"load average before {meta['load_before'][0]:.2f}, after {meta['load_after'][0]:.2f}; "
          f"threading layer {meta['threading_layer']}; busy process "
          f"{'pinned to the last core' if args.pin else 'unpinned'}"
          f"{'; torch imported first' if args.torch_first else ''}")
    print_table(rows)
    result = {"meta": meta, "rows": rows}
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=1)
    return result


if __name__ == "__main__":
    main()
