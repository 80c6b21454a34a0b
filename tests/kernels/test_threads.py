"""The scheduling of parallel kernels (``kernels._jit``: task queues and the
team choice) changes who runs a task, never a result.

Checked against independent references: every task claimed exactly once
(a count per task), a pooled lookup and its gradient against float64 NumPy,
and the same bits with one thread, two threads, and two threads forced to
run every region alone (as under contention), after which the caller's
thread count is back.
"""
import numba
import numpy as np
import pytest

import sparse_train as st
from sparse_train import functional as F
from sparse_train.kernels import _jit
from sparse_train.kernels import adagrad, adam, clip, coalesce, dense, lookup, sgd
from sparse_train.kernels._jit import (next_task, njit_parallel, prange, task_queue, tasks_done,
                                       workers)

TWO_THREADS = numba.config.NUMBA_NUM_THREADS >= 2


@njit_parallel
def _claim_counts(counts):
    """counts[t] += 1 for each task t claimed (tasks: len(counts))."""
    num_tasks = counts.shape[0]
    queue = task_queue(num_tasks)
    for worker in prange(workers(queue)):
        task = next_task(queue, worker)
        while task < num_tasks:
            counts[task] += 1
            task = next_task(queue, worker)
    tasks_done(queue)


class _Solo:
    """Every region runs on the calling thread alone while inside."""

    def __enter__(self):
        self.saved = _jit._TEAM_STATE[0]
        _jit._TEAM_STATE[0] = 1 << 40

    def __exit__(self, *exc):
        _jit._TEAM_STATE[0] = self.saved


def _w1_step(num_rows, dim, seed):
    """Forward, gradient plan and an Adagrad update through the public API
    (every parallel kernel of a training step): (pooled, weight, accumulator)."""
    rng = np.random.default_rng(seed)
    values = rng.integers(0, num_rows, 40_000).astype(np.int64)  # above PARALLEL_MIN_IDS
    offsets = np.arange(0, 40_001, 20, dtype=np.int64)
    table = st.EmbeddingTable(num_rows, dim, "t", initializer="uniform", seed=seed)
    out = F.embedding_bag(table.weight, values, offsets)
    d_out = rng.standard_normal(out.shape).astype(np.float32)
    grad = F.embedding_bag_grad(d_out, values, offsets, num_rows)
    optimizer = st.optim.Adagrad(0.1, initial_accumulator_value=0.1)
    optimizer.apply_gradients([(grad, table.weight)])
    accumulator = optimizer.get_slot(table.weight, "accumulator")
    return values, offsets, d_out, out, table.weight.value.copy(), np.array(accumulator)


@pytest.mark.parametrize("num_tasks", [0, 1, 7, 1000])
def test_every_task_is_claimed_once(num_tasks):
    for threads in ([1, 2] if TWO_THREADS else [1]):
        numba.set_num_threads(threads)
        try:
            counts = np.zeros(num_tasks, np.int64)
            _claim_counts(counts)
            np.testing.assert_array_equal(counts, np.ones(num_tasks, np.int64))
        finally:
            numba.set_num_threads(numba.config.NUMBA_NUM_THREADS)


@pytest.mark.skipif(not TWO_THREADS, reason="needs NUMBA_NUM_THREADS >= 2")
def test_solo_regions_restore_the_thread_count_and_count_down():
    numba.set_num_threads(2)
    with _Solo():
        counts = np.zeros(50, np.int64)
        _claim_counts(counts)
        assert numba.get_num_threads() == 2
        assert _jit._TEAM_STATE[0] == (1 << 40) - 1
    np.testing.assert_array_equal(counts, 1)


def _team_rule(waited, worked, period, debt):
    """The team choice of ``kernels._jit``'s docstring, in plain Python."""
    late = waited > _jit.LATE_MIN_CYCLES and 2 * waited > worked
    if late and debt + _jit.LATE_DEBT >= _jit.SOLO_DEBT:
        return period, min(2 * period, _jit.SOLO_REGIONS_MAX), _jit.SOLO_DEBT - _jit.LATE_DEBT
    if late:
        return 0, period, debt + _jit.LATE_DEBT
    if 8 * waited < worked:
        return 0, max(_jit.SOLO_REGIONS, period - period // _jit.SOLO_SHRINK), max(debt - 1, 0)
    return 0, period, debt


def test_next_team_state_follows_the_rule_at_its_edges():
    late = _jit.LATE_MIN_CYCLES
    for period in (_jit.SOLO_REGIONS, 17, 24, 1000, _jit.SOLO_REGIONS_MAX // 2,
                   _jit.SOLO_REGIONS_MAX):
        for debt in range(_jit.SOLO_DEBT):
            for waited, worked in [(0, 0), (0, 1), (late, 1), (late + 1, 1),
                                   (late + 1, 2 * late + 1), (late + 1, 2 * late + 2),
                                   (late + 1, 10**9), (10, 80), (10, 81), (10**6, 10**6),
                                   (10**6, 8 * 10**6 + 1)]:
                want = _team_rule(waited, worked, period, debt)
                got = _jit.next_team_state(waited, worked, period, debt)
                assert got == want, (waited, worked, period, debt)


def _replay(pattern, regions, state=(0, _jit.SOLO_REGIONS, 0)):
    """Team regions of ``pattern`` (True: late), cycled, through
    ``next_team_state`` and through the Python rule; a solo period's regions
    are skipped (they run alone: no team region to judge). Returns
    (team regions run, regions run alone, final state)."""
    alone_total, team = 0, 0
    left, period, debt = state
    want_period, want_debt = period, debt
    i = 0
    while team + alone_total < regions:
        if left > 0:
            left -= 1
            alone_total += 1
            continue
        waited, worked = (10**6, 10**6) if pattern[i % len(pattern)] else (1, 10**6)
        i += 1
        team += 1
        left, period, debt = _jit.next_team_state(waited, worked, period, debt)
        want = _team_rule(waited, worked, want_period, want_debt)
        assert (left, period, debt) == want
        want_period, want_debt = want[1], want[2]
    return team, alone_total, (left, period, debt)


def test_a_late_region_now_and_then_keeps_the_team():
    # A step right after another library's work: the helper is late in
    # one region of the ~16 of a round of steps, on time in the others.
    team, alone, (left, period, debt) = _replay([True] + [False] * 15, 10_000)
    assert alone == 0 and team == 10_000 and period == _jit.SOLO_REGIONS


def test_solo_period_climbs_under_contention_and_comes_back_when_quiet():
    # A busy process on one core: the helper is late in many regions, not
    # always in a row (it waits for its turn on the core).
    team, alone, (left, period, debt) = _replay([True, False, True, False, False, True,
                                                 False, False], 200_000)
    assert period == _jit.SOLO_REGIONS_MAX
    assert alone > 0.95 * 200_000  # nearly every region runs alone
    # the helpers on time again: back to the shortest period, 1/8 a region
    steps = 0
    while period > _jit.SOLO_REGIONS:
        left, period, debt = _jit.next_team_state(1, 10**6, period, debt)
        assert left == 0
        steps += 1
    want, p = 0, _jit.SOLO_REGIONS_MAX
    while p > _jit.SOLO_REGIONS:  # brute force of p -> max(16, p - p // 8)
        p = max(_jit.SOLO_REGIONS, p - p // _jit.SOLO_SHRINK)
        want += 1
    assert steps == want and 30 < steps < 60


def test_step_matches_float64_numpy_and_is_the_same_bits_alone_or_in_a_team():
    runs = {}
    modes = [(1, False)] + ([(2, False), (2, True)] if TWO_THREADS else [])
    for threads, solo in modes:
        numba.set_num_threads(threads)
        try:
            if solo:
                with _Solo():
                    runs[(threads, solo)] = _w1_step(5000, 16, seed=3)
            else:
                runs[(threads, solo)] = _w1_step(5000, 16, seed=3)
        finally:
            numba.set_num_threads(numba.config.NUMBA_NUM_THREADS)
    values, offsets, d_out, out, weight, accumulator = runs[(1, False)]
    initial = st.EmbeddingTable(5000, 16, "t", initializer="uniform", seed=3).weight.value
    initial = initial.astype(np.float64)
    want_out = initial[values].reshape(-1, 20, 16).sum(axis=1)
    np.testing.assert_allclose(out, want_out, rtol=1e-5, atol=1e-5)
    g = np.zeros_like(initial)
    np.add.at(g, values, np.repeat(d_out.astype(np.float64), 20, axis=0))
    touched = np.unique(values)
    want_acc = 0.1 + g[touched] ** 2
    np.testing.assert_allclose(accumulator[touched], want_acc, rtol=1e-4)
    want_w = initial[touched] - 0.1 * g[touched] / np.sqrt(want_acc)
    np.testing.assert_allclose(weight[touched], want_w, rtol=1e-4, atol=1e-5)
    for mode, run in runs.items():
        for name, a, b in zip(("values", "offsets", "d_out", "out", "weight", "accumulator"),
                              run, runs[(1, False)]):
            np.testing.assert_array_equal(a, b, err_msg=f"{name}, threads/solo {mode}")


def test_parallel_kernels_run_only_their_prange_loops_in_parallel():
    """Numba empties a dict of parallel options as it reads it: every
    kernel must still see array expressions and np.zeros kept serial (each
    would be a region of its own, waking the team)."""
    kernels = [lookup.embedding_bag_forward, lookup.fuse_bags, coalesce._partition_ranges,
               coalesce._sort_ranges, coalesce.summed_grad_rows, sgd.sgd_apply, adagrad.adagrad_apply,
               clip.dense_sq_norm]
    for kernel in kernels:
        options = kernel.targetoptions["parallel"]
        assert options.prange and not options.numpy and not options.setitem, kernel
    # the dense layers' kernels are serial (docs/DESIGN.md: a third of the
    # compile time, no slower at the models' widths)
    for kernel in (dense.bias_relu, dense.relu_grad_and_bias_sums, dense.bias_sums):
        assert not kernel.targetoptions.get("parallel"), kernel


def test_serial_lazy_adam_is_the_parallel_kernel_bit_for_bit():
    """Dense gradients take ``adam.lazy_adam_apply_serial`` (cheaper to
    compile): serial, NumPy's error model as in a parallel region, and the
    same bits as ``lazy_adam_apply`` (which matches float64 NumPy in
    tests/test_optim_conformance.py), here on a sparse plan with repeats."""
    kernel = adam.lazy_adam_apply_serial
    assert not kernel.targetoptions.get("parallel")
    assert kernel.targetoptions.get("error_model") == "numpy"
    rng = np.random.default_rng(5)
    ids = rng.integers(0, 50, 300)
    grad = st.RowSparseGrad(ids, rng.standard_normal((300, 8)).astype(np.float32), (50, 8))
    plan = grad.plan()
    start = [rng.standard_normal((50, 8)).astype(np.float32),
             rng.standard_normal((50, 8)).astype(np.float32),
             rng.random((50, 8)).astype(np.float32)]
    scalars = (np.float32(0.01), np.float32(0.9), np.float32(0.999), np.float32(1e-8))
    runs = []
    for apply in (adam.lazy_adam_apply, kernel):
        arrays = [a.copy() for a in start]
        apply(*arrays, plan, *scalars, 8)
        runs.append(arrays)
    for name, a, b in zip(("weight", "m", "v"), *runs):
        np.testing.assert_array_equal(a, b, err_msg=name)
    assert not np.array_equal(runs[0][0], start[0])
