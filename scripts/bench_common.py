"""Shared pieces of scripts/bench.py: ids, threads, memory, A B A B timing.

BENCH.md (../shared/BENCH.md) is the spec: medians over rounds, contenders
alternating inside each round, compile time kept out of the timed rounds.
"""
import gc
import os
import resource
import sys
import time
import warnings
from dataclasses import dataclass, field
from types import SimpleNamespace

import numpy as np

try:
    import torch
except ImportError:  # the baseline is optional: `pip install -e .[bench]`
    torch = None
else:
    # torch.optim's sparse path says this once per process; it is not ours.
    warnings.filterwarnings("ignore", message="Sparse invariant checks are implicitly disabled")


def _load_fbgemm():
    """FBGEMM's CPU table-batched embedding (``fbgemm-gpu-cpu``, bench extra),
    or None with the reason it is missing."""
    if torch is None:
        return None, "torch not installed"
    try:
        with warnings.catch_warnings():
            # its CPU build says, per GPU-only (SSD) module, that it could not load it
            warnings.simplefilter("ignore", DeprecationWarning)
            import fbgemm_gpu  # noqa: F401  registers torch.ops.fbgemm
            from fbgemm_gpu.split_embedding_configs import EmbOptimType, SparseType
            from fbgemm_gpu.split_table_batched_embeddings_ops_common import (
                EmbeddingLocation, PoolingMode)
            from fbgemm_gpu.split_table_batched_embeddings_ops_training import (
                ComputeDevice, SplitTableBatchedEmbeddingBagsCodegen)
    except Exception as error:  # ImportError, or a torch it was not built for
        return None, f"fbgemm_gpu not usable: {type(error).__name__}: {error}"[:300]
    return SimpleNamespace(
        version=getattr(fbgemm_gpu, "__version__", "?"), OptimType=EmbOptimType,
        SparseType=SparseType, EmbeddingLocation=EmbeddingLocation, PoolingMode=PoolingMode,
        ComputeDevice=ComputeDevice, TBE=SplitTableBatchedEmbeddingBagsCodegen), None


#: FBGEMM's names (None where it cannot load) and why it is missing.
fbgemm, FBGEMM_MISSING = _load_fbgemm()

MB = 1 << 20


def log(message):
    """Progress goes to stderr; the figures table goes to stdout."""
    print(message, file=sys.stderr, flush=True)


# ------------------------------------------------------------------ ids
def zipf_ranks(rng, num_rows, size, exponent=1.1):
    """``size`` Zipf(exponent) ranks in [0, num_rows): the library's sampler
    (``sparse_train.data.synthetic.zipf_ranks``)."""
    from sparse_train.data.synthetic import zipf_ranks as draw
    return draw(rng, num_rows, size, exponent)


def draw_ids(rng, num_rows, size, distribution, permutation=None):
    """[size] int64 ids in [0, num_rows): "zipf" (ranks mapped through
    ``permutation``, so hot rows are spread over the table) or "uniform"."""
    if distribution == "uniform":
        return rng.integers(0, num_rows, size, dtype=np.int64)
    if distribution != "zipf":
        raise ValueError(f"distribution must be 'zipf' or 'uniform', got {distribution!r}")
    ranks = zipf_ranks(rng, num_rows, size)
    return ranks if permutation is None else permutation[ranks]


# -------------------------------------------------------------- threads
def set_threads(num_threads):
    """Numba's and torch's thread counts, in process. NUMBA_NUM_THREADS only
    caps the maximum (it defaults to the core count)."""
    import numba
    numba.set_num_threads(num_threads)
    if torch is not None:  # FBGEMM's CPU kernels run on torch's pool too
        torch.set_num_threads(num_threads)


def max_threads():
    import numba
    return numba.config.NUMBA_NUM_THREADS


# --------------------------------------------------------------- memory
def rss_mb():
    """Resident set size now, in MiB (Linux /proc/self/statm)."""
    with open("/proc/self/statm") as f:
        pages = int(f.read().split()[1])
    return pages * resource.getpagesize() / MB


def peak_rss_mb():
    """Peak resident set size of this process so far (ru_maxrss, KiB on Linux)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def free_memory():
    gc.collect()


# ---------------------------------------------------------------- noise
#: BENCH.md / issue 15: figures count as quiet only below this 1-minute load.
QUIET_LOAD = 0.3


def load_average():
    """(1, 5, 15)-minute load averages of the machine (``os.getloadavg``)."""
    return tuple(round(x, 2) for x in os.getloadavg())


def warn_if_loaded(when, threshold=QUIET_LOAD):
    """Read the load average; if the 1-minute figure is >= ``threshold``,
    say so loudly on stderr (the host is shared: the run goes on, its
    milliseconds are noisy, its same-round ratios still fair). Returns
    {"load_average": (1, 5, 15), "loaded": bool}."""
    load = load_average()
    loaded = load[0] >= threshold
    if loaded:
        bar = "!" * 78
        log(f"{bar}\nWARNING: load average {when} is {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}"
            f" (1-min >= {threshold}): other processes share the cores, the ms figures"
            f" are\nmeasured UNDER LOAD; compare only the same-round ratios.\n{bar}")
    return {"load_average": load, "loaded": loaded}


def cpu_snapshot():
    """(CPU seconds the whole machine was busy, incl. hypervisor steal;
    CPU seconds of this process, all threads; wall clock)."""
    with open("/proc/stat") as f:
        ticks = [int(x) for x in f.readline().split()[1:9]]
    busy = sum(ticks) - ticks[3] - ticks[4]  # less idle and iowait
    own = os.times()
    return busy / os.sysconf("SC_CLK_TCK"), own.user + own.system, time.perf_counter()


def others_cores(before, after):
    """Cores other processes (and the hypervisor) kept busy on average
    between two snapshots: 0 on a quiet machine; on 2 cores, 1 means half
    the machine was taken from the benchmark."""
    wall = after[2] - before[2]
    if wall <= 0:
        return 0.0
    return max(0.0, ((after[0] - before[0]) - (after[1] - before[1])) / wall)


def renice(niceness):
    """Set the scheduling niceness of every thread of this process (Linux
    niceness is per thread; threads started later inherit it from their
    creator). A negative value needs root. Returns the niceness in force."""
    if niceness:
        for tid in os.listdir("/proc/self/task"):
            try:
                os.setpriority(os.PRIO_PROCESS, int(tid), niceness)
            except (PermissionError, ProcessLookupError):
                pass
    return os.getpriority(os.PRIO_PROCESS, 0)


def wait_for_quiet(max_wait_s, threshold=0.25, window_s=0.25):
    """Wait up to ``max_wait_s`` for a ``window_s`` in which other processes
    keep less than ``threshold`` cores busy (the machine is shared).
    Returns the seconds waited."""
    start = time.perf_counter()
    while time.perf_counter() - start < max_wait_s:
        before = cpu_snapshot()
        time.sleep(window_s)
        if others_cores(before, cpu_snapshot()) < threshold:
            break
    return time.perf_counter() - start


# --------------------------------------------------------------- timing
@dataclass
class Contender:
    """One side of a comparison.

    ``step(i)`` runs step i (the caller cycles its batches by i) and returns
    a dict of phase name -> seconds (may be empty). ``rounds`` caps the
    rounds this contender joins (the NumPy reference is slow: fewer rounds).
    """
    name: str
    step: object
    rounds: int = 10 ** 9
    steps_per_round: int = 0  # 0: the comparison's default
    warmup_steps: int = -1    # -1: the comparison's default
    first_call_s: float = float("nan")
    round_ms: list = field(default_factory=list)
    phase_ms: dict = field(default_factory=dict)
    calls: int = 0

    def run(self, steps):
        totals = {}
        start = time.perf_counter()
        for _ in range(steps):
            for phase, seconds in (self.step(self.calls) or {}).items():
                totals[phase] = totals.get(phase, 0.0) + seconds
            self.calls += 1
        elapsed = time.perf_counter() - start
        self.round_ms.append(1e3 * elapsed / steps)
        for phase, seconds in totals.items():
            self.phase_ms.setdefault(phase, []).append(1e3 * seconds / steps)

    def summary(self):
        """Median ms/step over rounds, spread, and median phase times."""
        if not self.round_ms:
            return None
        ms = np.asarray(self.round_ms)
        return {
            "ms": float(np.median(ms)),
            "ms_min": float(ms.min()),
            "ms_max": float(ms.max()),
            "rounds": int(ms.size),
            "first_call_s": self.first_call_s,
            "phases_ms": {k: float(np.median(v)) for k, v in self.phase_ms.items()},
        }


def alternate(contenders, rounds, steps_per_round, warmup_steps, pause_s=0.03):
    """Warm each contender up (its first call, if not made yet, timed
    separately: compile or cache load, slot creation), then run ``rounds`` rounds, each running every contender's
    block of steps in turn (A B A B ...). A short pause between blocks lets
    the other runtime's spinning worker threads go idle (Numba and torch each
    bring their own OpenMP, whose idle workers spin for milliseconds).

    Returns {name: summary dict, "others_cores": load from other processes
    during the timed rounds (see ``others_cores``)}.
    """
    for c in contenders:
        if c.calls == 0:
            start = time.perf_counter()
            c.step(c.calls)
            c.calls += 1
            c.first_call_s = time.perf_counter() - start
        warmup = warmup_steps if c.warmup_steps < 0 else c.warmup_steps
        for _ in range(max(warmup - 1, 0)):
            c.step(c.calls)
            c.calls += 1
    before = cpu_snapshot()
    for r in range(rounds):
        for c in contenders:
            if r < c.rounds:
                time.sleep(pause_s)
                c.run(c.steps_per_round or steps_per_round)
    results = {c.name: c.summary() for c in contenders}
    results["others_cores"] = others_cores(before, cpu_snapshot())
    return results


def ratio(numerator, denominator):
    if numerator is None or denominator is None or not denominator:
        return None
    return numerator / denominator
