"""W1 of BENCH.md: one table, pooled lookup + backward + update.

Four contenders run in the same process and the same rounds:

- ours: ``functional.embedding_bag`` -> ``functional.embedding_bag_grad`` ->
  ``optimizer.apply_gradients`` (the public API only);
- fbgemm: FBGEMM's CPU table-batched embedding
  (``SplitTableBatchedEmbeddingBagsCodegen``, ``ComputeDevice.CPU``,
  ``EmbeddingLocation.HOST``, fp32 weights) with the optimizer fused into its
  backward, the peer torchrec runs: ``EXACT_SGD``, ``EXACT_ADAGRAD`` and
  ``EXACT_ROWWISE_ADAGRAD`` (AdagradDecay has no twin; FBGEMM refuses Adam on
  CPU). Before a config is timed, both sides run the same first steps from
  the same weights and must agree to ``CHECK_RTOL``, else the config's
  FBGEMM figures are refused (``FbgemmCheck``);
- torch: ``nn.EmbeddingBag(mode="sum", sparse=True)`` forward + backward +
  ``optim.Adagrad`` step (``SparseAdam`` for LazyAdam, ``SGD`` for SGD;
  AdagradDecay and row-wise Adagrad have no torch twin and are compared to
  torch Adagrad);
- numpy: a plain NumPy reference (``np.unique`` + ``np.add.at``, float32),
  written from SPEC.md, slow, run on fewer rounds.

Effective bandwidth counts the compulsory traffic of one step: every unique
row of the table and of its optimizer slots read once and written once, plus
the ids (int64) read once:

    bytes = 2 * U * (table row + slot bytes of one row) + 8 * N

``run_phases`` breaks one step of ours into lookup, grouping of duplicate
ids, gradient summation and update (``PHASE_BYTES`` gives each phase's
compulsory bytes, for its GB/s).
"""
import time
from dataclasses import dataclass

import numpy as np

import sparse_train as st
from sparse_train import functional as F
from sparse_train.sparse import GradPlan, RowSparseGrad

from bench_common import (Contender, alternate, draw_ids, fbgemm, free_memory, ratio,
                          rss_mb, torch)

TABLES = {"1Mx64": (1_000_000, 64), "10Mx16": (10_000_000, 16)}
DISTRIBUTIONS = ("zipf", "uniform")
OPTIMIZERS = ("sgd", "adagrad", "adagrad_decay", "lazy_adam", "rowwise_adagrad")
NUM_BAGS, BAG_SIZE = 4096, 26

LEARNING_RATE = 0.01       # the Adagrad family
ADAM_LEARNING_RATE = 0.001
TORCH_TWIN = {"sgd": "SGD", "adagrad": "Adagrad", "adagrad_decay": "Adagrad",
              "lazy_adam": "SparseAdam", "rowwise_adagrad": "Adagrad"}
#: FBGEMM's fused optimizer (``EmbOptimType`` name) with the same rule as ours.
FBGEMM_TWIN = {"sgd": "EXACT_SGD", "adagrad": "EXACT_ADAGRAD",
               "rowwise_adagrad": "EXACT_ROWWISE_ADAGRAD"}
#: Epsilon, added outside the square root on both sides. Adagrad: torch's
#: default (ours and FBGEMM's accumulator both start at 0 here, FBGEMM's
#: only choice); row-wise Adagrad: ours' and FBGEMM's default.
EPSILON = {"adagrad": 1e-10, "rowwise_adagrad": 1e-8}
#: Steps both sides run from the same weights before timing, and the
#: largest |ours - FBGEMM| / max|FBGEMM| allowed over the touched rows.
CHECK_STEPS, CHECK_RTOL = 3, 1e-6

#: Random-access limits of BENCH.md for Adagrad (weight + accumulator
#: read-modify-write) on 1M x 64, 2 threads; 1 thread scales by the measured
#: row RMW costs, 93 ns / 47 ns.
FLOOR_MS_2_THREADS = {("1Mx64", "uniform"): 7.0, ("1Mx64", "zipf"): 1.8}
ONE_THREAD_FACTOR = 93.0 / 47.0


def slot_bytes_per_row(optimizer, dim):
    """Bytes of optimizer state one table row owns (ours; torch's twin is the
    same for Adagrad / SparseAdam)."""
    return {"sgd": 0, "adagrad": 4 * dim, "adagrad_decay": 4 * dim + 8,
            "lazy_adam": 8 * dim, "rowwise_adagrad": 4}[optimizer]


def floor_ms(table, distribution, optimizer, threads):
    """BENCH.md's random-access limit for this config, or None if it gives none."""
    base = FLOOR_MS_2_THREADS.get((table, distribution))
    if base is None or optimizer != "adagrad":
        return None
    return base if threads >= 2 else base * ONE_THREAD_FACTOR


# ---------------------------------------------------------------- data
@dataclass
class Workload:
    """A pool of batches of one table size and id distribution, and the
    fixed upstream gradient. Step i uses batch i mod len(batches), so the
    caches see fresh rows every step, as in training."""
    table: str
    num_rows: int
    dim: int
    distribution: str
    batches: list            # [(values [N] int64, offsets [B+1] int64)]
    d_out: np.ndarray        # [B, D] float32
    unique_rows: float       # mean unique ids a batch
    torch_batches: list = None  # the same batches as torch tensors (offsets without the end)
    torch_d_out: object = None
    fbgemm_batches: list = None  # as torch tensors, offsets with the end (B + 1)

    @property
    def num_ids(self):
        return int(self.batches[0][0].shape[0])


def make_workload(table, num_rows, dim, distribution, num_batches, seed=0,
                  num_bags=NUM_BAGS, bag_size=BAG_SIZE):
    rng = np.random.default_rng(seed)
    permutation = rng.permutation(num_rows) if distribution == "zipf" else None
    offsets = np.arange(0, num_bags * bag_size + 1, bag_size, dtype=np.int64)
    batches, unique = [], []
    for _ in range(num_batches):
        values = draw_ids(rng, num_rows, num_bags * bag_size, distribution, permutation)
        batches.append((values, offsets))
        unique.append(np.unique(values).shape[0])
    del permutation
    d_out = (0.1 * rng.standard_normal((num_bags, dim))).astype(np.float32)
    work = Workload(table, num_rows, dim, distribution, batches, d_out, float(np.mean(unique)))
    if torch is not None:
        work.torch_batches = [(torch.from_numpy(v), torch.from_numpy(o[:-1]))
                              for v, o in batches]
        work.torch_d_out = torch.from_numpy(d_out)
        work.fbgemm_batches = [(torch.from_numpy(v), torch.from_numpy(o)) for v, o in batches]
    return work


# ------------------------------------------------------------------ ours
def make_optimizer(name, global_step, accumulator_decay_step=100000):
    """Our optimizer ``name``, set up like its torch and FBGEMM twins where
    they exist (Adagrad: accumulator from 0, epsilon 1e-10, as torch's
    defaults and FBGEMM's ``EXACT_ADAGRAD`` given that epsilon)."""
    if name == "sgd":
        return st.optim.GradientDescent(LEARNING_RATE)
    if name == "adagrad":
        return st.optim.Adagrad(LEARNING_RATE, initial_accumulator_value=0.0,
                                epsilon=EPSILON["adagrad"])
    if name == "adagrad_decay":  # DeepRec's defaults
        return st.optim.AdagradDecay(LEARNING_RATE, global_step,
                                     accumulator_decay_step=accumulator_decay_step)
    if name == "lazy_adam":
        return st.optim.LazyAdam(ADAM_LEARNING_RATE)
    if name == "rowwise_adagrad":
        return st.optim.RowwiseAdagrad(LEARNING_RATE, epsilon=EPSILON["rowwise_adagrad"])
    raise ValueError(f"optimizer must be one of {OPTIMIZERS}, got {name!r}")


def our_step(weight, optimizer, global_step, values, offsets, d_out):
    """One step through the public API; returns its phase times (s)."""
    t0 = time.perf_counter()
    F.embedding_bag(weight, values, offsets, combiner="sum")
    t1 = time.perf_counter()
    grad = F.embedding_bag_grad(d_out, values, offsets, weight.shape[0])
    t2 = time.perf_counter()
    optimizer.apply_gradients([(grad, weight)], global_step=global_step)
    t3 = time.perf_counter()
    return {"lookup": t1 - t0, "grad": t2 - t1, "apply": t3 - t2}


# ----------------------------------------------------------------- torch
def make_torch_table(initial):
    """``nn.EmbeddingBag(mode="sum", sparse=True)`` holding a copy of ``initial``."""
    weight = torch.from_numpy(np.array(initial, copy=True))
    return torch.nn.EmbeddingBag(initial.shape[0], initial.shape[1], mode="sum",
                                 sparse=True, _weight=weight)


def make_torch_optimizer(name, table):
    if TORCH_TWIN[name] == "SGD":
        return torch.optim.SGD(table.parameters(), lr=LEARNING_RATE)
    if TORCH_TWIN[name] == "SparseAdam":
        return torch.optim.SparseAdam(table.parameters(), lr=ADAM_LEARNING_RATE)
    return torch.optim.Adagrad(table.parameters(), lr=LEARNING_RATE)


def torch_step(table, optimizer, values, offsets, d_out):
    t0 = time.perf_counter()
    out = table(values, offsets)
    t1 = time.perf_counter()
    out.backward(d_out)
    t2 = time.perf_counter()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    t3 = time.perf_counter()
    return {"forward": t1 - t0, "backward": t2 - t1, "step": t3 - t2}


# ---------------------------------------------------------------- fbgemm
class FbgemmCheck(RuntimeError):
    """FBGEMM and ours disagreed after the same first steps: that config's
    FBGEMM figures are refused (not the same computation)."""


def make_fbgemm_table(name, initial):
    """FBGEMM's CPU TBE (one table, sum pooling, fp32, host memory) with the
    fused twin of our optimizer ``name``, holding a copy of ``initial``
    [V, D] float32. Its optimizer state starts at 0 (FBGEMM's only choice)."""
    num_rows, dim = initial.shape
    tbe = fbgemm.TBE(
        embedding_specs=[(num_rows, dim, fbgemm.EmbeddingLocation.HOST,
                          fbgemm.ComputeDevice.CPU)],
        optimizer=getattr(fbgemm.OptimType, FBGEMM_TWIN[name]),
        learning_rate=LEARNING_RATE, eps=EPSILON.get(name, 1e-8),
        weights_precision=fbgemm.SparseType.FP32, output_dtype=fbgemm.SparseType.FP32,
        pooling_mode=fbgemm.PoolingMode.SUM)
    with torch.no_grad():
        fbgemm_weight(tbe).copy_(torch.from_numpy(initial))
    return tbe


def fbgemm_weight(tbe):
    """[V, D] torch view of the TBE's only table."""
    return tbe.split_embedding_weights()[0]


def fbgemm_step(tbe, values, offsets, d_out):
    """FBGEMM's forward, then its backward with the update fused in."""
    t0 = time.perf_counter()
    out = tbe(values, offsets)
    t1 = time.perf_counter()
    out.backward(d_out)
    t2 = time.perf_counter()
    return {"forward": t1 - t0, "backward+update": t2 - t1}


def compare_weights(ours, theirs, initial, rows):
    """How far ``ours`` and ``theirs`` ([V, D]) are apart on ``rows``, given
    the weights both started from: ``rel`` = max|ours - theirs| / max|theirs|
    (what ``CHECK_RTOL`` bounds), ``rel_update`` the same over the updates
    (w - initial), the stricter one, and ``moved`` = max|update| (> 0, so the
    check compared moved rows)."""
    a, b, w0 = ours[rows].astype(np.float64), theirs[rows].astype(np.float64), initial
    difference = np.abs(a - b).max()
    moved = np.abs(b - w0).max()
    return {"rel": float(difference / max(np.abs(b).max(), 1e-30)),
            "rel_update": float(difference / max(moved, 1e-30)),
            "max_abs": float(difference), "moved": float(moved),
            "bitwise_equal": bool(np.array_equal(ours[rows], theirs[rows])),
            "rows": int(rows.shape[0])}


# ----------------------------------------------------------------- numpy
def numpy_forward(weight, values, offsets):
    """[B, D]: sum of each bag's rows (empty bags give zeros)."""
    lengths = np.diff(offsets)
    out = np.zeros((lengths.shape[0], weight.shape[1]), np.float32)
    nonempty = lengths > 0
    if nonempty.any():
        out[nonempty] = np.add.reduceat(weight[values], offsets[:-1][nonempty], axis=0)
    return out


def numpy_grad(d_out, values, offsets):
    """(rows [U] int64 sorted, g [U, D] float32): duplicates summed in
    order of position (``np.add.at`` adds in index order)."""
    bag = np.repeat(np.arange(offsets.shape[0] - 1), np.diff(offsets))
    rows, inverse = np.unique(values, return_inverse=True)
    g = np.zeros((rows.shape[0], d_out.shape[1]), np.float32)
    np.add.at(g, inverse, d_out[bag])
    return rows, g


class NumpyOptimizer:
    """SPEC.md section 2 in float32 NumPy on the touched rows. ``slots``
    are named as ours; ``step`` counts applies (our global step)."""

    def __init__(self, name, shape, accumulator_decay_step=100000):
        num_rows, dim = shape
        self.name, self.step = name, 0
        self.decay_step = accumulator_decay_step
        if name == "sgd":
            self.slots = {}
        elif name == "adagrad":
            self.slots = {"accumulator": np.zeros(shape, np.float32)}
        elif name == "adagrad_decay":
            self.slots = {"accumulator": np.full(shape, 0.1, np.float32),
                          "accumulator_decay_power": np.zeros(num_rows, np.int64)}
        elif name == "lazy_adam":
            self.slots = {"m": np.zeros(shape, np.float32), "v": np.zeros(shape, np.float32)}
            self.beta_powers = [np.float32(0.9), np.float32(0.999)]
        elif name == "rowwise_adagrad":
            self.slots = {"accumulator": np.zeros(num_rows, np.float32)}
        else:
            raise ValueError(f"optimizer must be one of {OPTIMIZERS}, got {name!r}")

    def apply(self, weight, rows, g):
        getattr(self, "_" + self.name)(weight, rows, g)
        self.step += 1

    def _sgd(self, weight, rows, g):
        weight[rows] -= np.float32(LEARNING_RATE) * g

    def _adagrad(self, weight, rows, g):
        accumulator = self.slots["accumulator"][rows] + g * g
        self.slots["accumulator"][rows] = accumulator
        weight[rows] -= np.float32(LEARNING_RATE) * g / (np.sqrt(accumulator)
                                                         + np.float32(EPSILON["adagrad"]))

    def _adagrad_decay(self, weight, rows, g):
        accumulator = self.slots["accumulator"][rows]
        power = self.slots["accumulator_decay_power"]
        decay = (self.step + 1) // self.decay_step > power[rows]
        initial = np.float32(0.1)
        accumulator[decay] = np.maximum(accumulator[decay] * np.float32(0.9), initial)
        power[rows[decay]] += 1
        accumulator += g * g
        self.slots["accumulator"][rows] = accumulator
        weight[rows] -= np.float32(LEARNING_RATE) * g / np.sqrt(accumulator)

    def _lazy_adam(self, weight, rows, g):
        beta1, beta2, one = np.float32(0.9), np.float32(0.999), np.float32(1.0)
        power1, power2 = self.beta_powers
        lr_t = np.float32(ADAM_LEARNING_RATE * np.sqrt(1.0 - float(power2)) / (1.0 - float(power1)))
        m = beta1 * self.slots["m"][rows] + (one - beta1) * g
        v = beta2 * self.slots["v"][rows] + (one - beta2) * (g * g)
        self.slots["m"][rows], self.slots["v"][rows] = m, v
        weight[rows] -= lr_t * m / (np.sqrt(v) + np.float32(1e-8))
        self.beta_powers = [power1 * beta1, power2 * beta2]

    def _rowwise_adagrad(self, weight, rows, g):
        accumulator = self.slots["accumulator"]
        accumulator[rows] += (g * g).sum(axis=1, dtype=np.float32) / np.float32(g.shape[1])
        denominator = np.sqrt(accumulator[rows]) + np.float32(EPSILON["rowwise_adagrad"])
        weight[rows] -= np.float32(LEARNING_RATE) * g / denominator[:, None]


def numpy_step(weight, optimizer, values, offsets, d_out):
    t0 = time.perf_counter()
    numpy_forward(weight, values, offsets)
    t1 = time.perf_counter()
    rows, g = numpy_grad(d_out, values, offsets)
    t2 = time.perf_counter()
    optimizer.apply(weight, rows, g)
    t3 = time.perf_counter()
    return {"lookup": t1 - t0, "grad": t2 - t1, "apply": t3 - t2}


# ---------------------------------------------------------------- phases
def phase_bytes(num_ids, unique, num_bags, dim, slot_bytes):
    """Compulsory bytes of each phase of one step (for its GB/s): every
    unique row read (and written) once, ids read once, the [B, D] upstream
    gradient and output once. N ids, U unique rows, B bags, D columns."""
    row, ids, bags = 4 * dim, 8 * num_ids, 4 * num_bags * dim
    return {
        "lookup": unique * row + ids + bags,              # gather rows, write [B, D]
        "grouping": 2 * ids + 8 * unique,                 # read ids, write order + rows
        "gradient sum": ids + bags + unique * row,        # read order + dy, write [U, D]
        "update": unique * row + 2 * unique * (row + slot_bytes),  # g in, w + slots RMW
        "apply (fused)": ids + bags + 2 * unique * (row + slot_bytes),
    }


def our_phase_step(weight, optimizer, global_step, values, offsets, d_out):
    """One step of ours cut where the public path fuses: ``embedding_bag``
    (lookup), ``embedding_bag_grad`` (grouping: the sort of ids into unique
    rows; its values stay lazy), reading ``grad.values`` (gradient sum: each
    unique row's rows of d_out added, in order of position), then the update
    alone from those summed rows (a one-source-row-per-row plan, as a
    pre-summed gradient). Same results as ``our_step``."""
    t0 = time.perf_counter()
    F.embedding_bag(weight, values, offsets, combiner="sum")
    t1 = time.perf_counter()
    grad = F.embedding_bag_grad(d_out, values, offsets, weight.shape[0])
    t2 = time.perf_counter()
    summed = np.ascontiguousarray(grad.values)
    count = summed.shape[0]
    presummed = RowSparseGrad._from_plan(GradPlan(
        grad.indices, np.arange(count + 1, dtype=np.int64), np.arange(count, dtype=np.int64),
        np.ones(count, np.float32), summed, np.float32(1.0)), grad.dense_shape)
    t3 = time.perf_counter()
    optimizer.apply_gradients([(presummed, weight)], global_step=global_step)
    t4 = time.perf_counter()
    return {"lookup": t1 - t0, "grouping": t2 - t1, "gradient sum": t3 - t2, "update": t4 - t3}


# -------------------------------------------------------------- a table
@dataclass
class Tables:
    """The copies of one table (ours, torch's, NumPy's), kept across the
    optimizer configs of that table; optimizer state is per config. FBGEMM's
    copy is made per config (its optimizer is part of the module), from ours'
    weights at that moment."""
    ours: st.Variable
    torch: object = None
    numpy: np.ndarray = None
    rss_table_mb: float = 0.0
    with_fbgemm: bool = False


def make_tables(num_rows, dim, with_torch, with_numpy, seed=0, with_fbgemm=False):
    before = rss_mb()
    weight = st.EmbeddingTable(num_rows, dim, "w1_table", initializer="uniform", seed=seed).weight
    tables = Tables(weight, rss_table_mb=rss_mb() - before,
                    with_fbgemm=with_fbgemm and fbgemm is not None)
    if with_torch and torch is not None:
        tables.torch = make_torch_table(weight.value)
    if with_numpy:
        tables.numpy = weight.value.copy()
    return tables


def check_fbgemm(ours_c, fbgemm_c, tables, optimizer, tbe, work, initial_rows, rows):
    """Run both sides to ``CHECK_STEPS`` steps (the same batches, from the
    same weights) and compare the touched rows, and the accumulators where
    there are. Raises FbgemmCheck beyond ``CHECK_RTOL``; returns the
    comparison (``compare_weights``, plus ``accumulator_rel``)."""
    for c in (ours_c, fbgemm_c):
        while c.calls < CHECK_STEPS:
            c.step(c.calls)
            c.calls += 1
    with torch.no_grad():
        theirs = fbgemm_weight(tbe).numpy()
        states = tbe.split_optimizer_states()
    check = compare_weights(tables.ours.value, theirs, initial_rows, rows)
    check["steps"], check["accumulator_rel"] = CHECK_STEPS, None
    if states and states[0] and "accumulator" in optimizer.get_slot_names():
        mine = optimizer.get_slot(tables.ours, "accumulator").value
        fb = states[0][0].numpy().reshape(mine.shape)
        check["accumulator_rel"] = float(
            np.abs(mine[rows].astype(np.float64) - fb[rows]).max()
            / max(float(np.abs(fb[rows]).max()), 1e-30))
    worst = max(check["rel"], check["accumulator_rel"] or 0.0)
    if not worst <= CHECK_RTOL or not check["moved"] > 0:
        raise FbgemmCheck(f"{work.table} {work.distribution}: ours and FBGEMM differ after "
                          f"{CHECK_STEPS} steps: {check}")
    return check


def run_config(tables, work, optimizer, threads, rounds, steps, warmup, numpy_rounds,
               phase_rounds=0):
    """One W1 config: ours vs FBGEMM vs torch (vs numpy), A B A B; with
    ``phase_rounds``, ours cut into phases (``our_phase_step``) joins that
    many rounds. Returns a flat dict; ``fbgemm_check`` says whether FBGEMM
    matched (a mismatch drops FBGEMM from the timing, ``fbgemm_error``)."""
    num_rows, dim = tables.ours.shape
    global_step = st.GlobalStep()
    ours = make_optimizer(optimizer, global_step)
    batches = work.batches

    def ours_fn(i):
        values, offsets = batches[i % len(batches)]
        return our_step(tables.ours, ours, global_step, values, offsets, work.d_out)

    contenders = [Contender("ours", ours_fn)]
    tbe, check, error = None, None, None
    if tables.with_fbgemm and optimizer in FBGEMM_TWIN:
        # both from ours' weights now; the rows the check steps touch
        rows = np.unique(np.concatenate([batches[i % len(batches)][0]
                                         for i in range(CHECK_STEPS)]))
        initial_rows = tables.ours.value[rows].astype(np.float64)
        tbe = make_fbgemm_table(optimizer, tables.ours.value)

        def fbgemm_fn(i):
            values, offsets = work.fbgemm_batches[i % len(batches)]
            return fbgemm_step(tbe, values, offsets, work.torch_d_out)
        contenders.append(Contender("fbgemm", fbgemm_fn))
    if tables.torch is not None:
        torch_opt = make_torch_optimizer(optimizer, tables.torch)

        def torch_fn(i):
            values, offsets = work.torch_batches[i % len(batches)]
            return torch_step(tables.torch, torch_opt, values, offsets, work.torch_d_out)
        contenders.append(Contender("torch", torch_fn))
    if tables.numpy is not None and numpy_rounds > 0:
        reference = NumpyOptimizer(optimizer, (num_rows, dim))

        def numpy_fn(i):
            values, offsets = batches[i % len(batches)]
            return numpy_step(tables.numpy, reference, values, offsets, work.d_out)
        contenders.append(Contender("numpy", numpy_fn, rounds=numpy_rounds,
                                    steps_per_round=max(1, steps // 4), warmup_steps=1))
    if phase_rounds > 0:
        def phases_fn(i):
            values, offsets = batches[i % len(batches)]
            return our_phase_step(tables.ours, ours, global_step, values, offsets, work.d_out)
        contenders.append(Contender("ours_phases", phases_fn, rounds=phase_rounds))
    # Warm each side and read its RSS growth (slots + working set) before
    # the next side allocates: ours first. FBGEMM is checked against ours
    # before any other side runs a step on ours' table.
    free_memory()
    memory = {}
    for c in list(contenders):
        start = rss_mb()
        t0 = time.perf_counter()
        c.step(c.calls)
        c.calls += 1
        c.first_call_s = time.perf_counter() - t0
        memory[c.name] = rss_mb() - start
        if c.name == "fbgemm":
            try:
                check = check_fbgemm(contenders[0], c, tables, ours, tbe, work,
                                     initial_rows, rows)
            except FbgemmCheck as mismatch:
                error = str(mismatch)
                contenders.remove(c)
    results = alternate(contenders, rounds, steps, warmup_steps=warmup)
    row = summarize(work, optimizer, threads, results, memory)
    row["fbgemm_check"], row["fbgemm_error"] = check, error
    if tbe is not None:
        row["fbgemm_twin"] = FBGEMM_TWIN[optimizer]
    del contenders, ours, tbe
    if tables.torch is not None:
        del torch_opt
    free_memory()
    return row


def summarize(work, optimizer, threads, results, memory):
    ours, baseline, reference = (results.get(k) for k in ("ours", "torch", "numpy"))
    peer, phased = results.get("fbgemm"), results.get("ours_phases")
    dim, unique = work.dim, work.unique_rows
    slot_bytes = slot_bytes_per_row(optimizer, dim)
    bytes_per_step = 2 * unique * (4 * dim + slot_bytes) + 8 * work.num_ids
    floor = floor_ms(work.table, work.distribution, optimizer, threads)
    expected_slots = work.num_rows * slot_bytes / (1 << 20)
    ms = ours["ms"]
    phase_table = None
    if phased:
        nbytes = phase_bytes(work.num_ids, unique, work.d_out.shape[0], dim, slot_bytes)
        times = dict(phased["phases_ms"], **{"apply (fused)": ours["phases_ms"]["apply"]})
        phase_table = {name: {"ms": t, "bytes": nbytes[name],
                              "gbps": nbytes[name] / (t * 1e-3) / 1e9 if t > 0 else None}
                       for name, t in times.items()}
    return {
        "workload": "W1", "table": work.table, "num_rows": work.num_rows, "dim": dim,
        "ids": work.distribution, "optimizer": optimizer, "threads": threads,
        "torch_twin": TORCH_TWIN[optimizer] if baseline else None,
        "num_ids": work.num_ids, "unique_rows": unique,
        "ours_ms": ms, "torch_ms": baseline and baseline["ms"],
        "numpy_ms": reference and reference["ms"],
        "fbgemm_ms": peer and peer["ms"],
        "speedup_vs_torch": ratio(baseline and baseline["ms"], ms),
        "speedup_vs_torch_best": ratio(baseline and baseline["ms_min"], ours["ms_min"]),
        "speedup_vs_fbgemm": ratio(peer and peer["ms"], ms),
        "speedup_vs_fbgemm_best": ratio(peer and peer["ms_min"], ours["ms_min"]),
        "others_cores": results["others_cores"],
        "speedup_vs_numpy": ratio(reference and reference["ms"], ms),
        "unique_rows_per_s": unique / (ms * 1e-3),
        "ns_per_unique_row": ms * 1e6 / unique,
        "bytes_per_step": bytes_per_step,
        "effective_gbps": bytes_per_step / (ms * 1e-3) / 1e9,
        "floor_ms": floor, "x_floor": ratio(ms, floor),
        "ours": ours, "torch": baseline, "numpy": reference, "fbgemm": peer,
        "phases": phase_table,
        "memory_mb": {
            "table_expected": work.num_rows * dim * 4 / (1 << 20),
            "slots_expected": expected_slots,
            "ours_rss_growth": memory.get("ours"),
            "torch_rss_growth": memory.get("torch"),
            "numpy_rss_growth": memory.get("numpy"),
            "fbgemm_rss_growth": memory.get("fbgemm"),
        },
    }


def run_forward(tables, work, threads, rounds, steps, warmup):
    """Our ``embedding_bag`` vs torch's ``F.embedding_bag`` forward alone."""
    batches = work.batches

    def ours_fn(i):
        values, offsets = batches[i % len(batches)]
        F.embedding_bag(tables.ours, values, offsets, combiner="sum")

    contenders = [Contender("ours", ours_fn)]
    if tables.torch is not None:
        weight = tables.torch.weight.detach()

        def torch_fn(i):
            values, offsets = work.torch_batches[i % len(batches)]
            with torch.no_grad():
                torch.nn.functional.embedding_bag(values, weight, offsets, mode="sum")
        contenders.append(Contender("torch", torch_fn))
    results = alternate(contenders, rounds, steps, warmup_steps=warmup)
    ours, baseline = results["ours"], results.get("torch")
    return {
        "workload": "W1-forward", "table": work.table, "ids": work.distribution,
        "threads": threads, "ours_ms": ours["ms"], "torch_ms": baseline and baseline["ms"],
        "speedup_vs_torch": ratio(baseline and baseline["ms"], ours["ms"]),
        "speedup_vs_torch_best": ratio(baseline and baseline["ms_min"], ours["ms_min"]),
        "others_cores": results["others_cores"], "ours": ours, "torch": baseline,
    }
