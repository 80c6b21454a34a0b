"""``training.blas``: NumPy's BLAS thread count (set, restored, chosen by
timing) and the claim it rests on: the count does not change the bits."""
import os
import time

import numpy as np
import pytest

from sparse_train import GlobalStep
from sparse_train.training import fit
from sparse_train.training.blas import (AutoBlasThreads, blas_threads, check_blas_threads,
                                        get_blas_threads, set_blas_threads)

from _fakes import Data  # noqa: E402

needs_blas = pytest.mark.skipif(get_blas_threads() is None, reason="no OpenBLAS found")
needs_two = pytest.mark.skipif((os.cpu_count() or 1) < 2, reason="needs 2 cores")


@needs_blas
def test_the_setting_round_trips_and_the_block_restores_it():
    before = get_blas_threads()
    try:
        assert set_blas_threads(1) == before and get_blas_threads() == 1
        with blas_threads(2 if (os.cpu_count() or 1) >= 2 else 1):
            assert get_blas_threads() == min(2, os.cpu_count() or 1)
        assert get_blas_threads() == 1
        with blas_threads("auto"):  # left as it is, restored after
            set_blas_threads(1 if (os.cpu_count() or 1) < 2 else 2)
        assert get_blas_threads() == 1
    finally:
        set_blas_threads(before)
    assert get_blas_threads() == before


@pytest.mark.parametrize("bad", [0, -1, 1.5, True, "two", "1"])
def test_bad_counts_are_refused(bad):
    with pytest.raises(ValueError, match="blas_threads must be an integer >= 1, 'auto' or None"):
        check_blas_threads(bad)
    with pytest.raises(ValueError, match="blas_threads"):
        fit(Data(1), Data(1), lambda b: 0.0, lambda b: {}, GlobalStep(), epochs=1,
            progress=None, blas_threads=bad)


def _sleeping_step(slow_at, seen):
    """A step that records its batch and the thread count, and takes 30 ms
    at ``slow_at`` threads (none at the others)."""
    def step(batch):
        count = get_blas_threads()
        seen.append((batch, count))
        if count == slow_at:
            time.sleep(0.03)
        return 0.0
    return step


@needs_blas
@needs_two
@pytest.mark.parametrize("slow_at, expected", [(2, 1), (1, 2)])
def test_auto_alternates_the_candidates_then_keeps_the_faster(slow_at, expected):
    before, seen = get_blas_threads(), []
    try:
        auto = AutoBlasThreads(_sleeping_step(slow_at, seen), candidates=(1, 2), trials=3,
                               skip=1, every=0)
        for batch in range(12):
            auto(batch)
        assert auto.chosen == expected
        assert [b for b, _ in seen] == list(range(12))   # every batch once, in order
        assert [c for _, c in seen[1:7]] == [1, 2, 1, 2, 1, 2]
        assert {c for _, c in seen[7:]} == {expected}
    finally:
        set_blas_threads(before)


@needs_blas
@needs_two
def test_auto_times_again_every_n_steps():
    before, seen = get_blas_threads(), []
    try:
        auto = AutoBlasThreads(_sleeping_step(2, seen), candidates=(1, 2), trials=1,
                               skip=0, every=3)
        for batch in range(10):
            auto(batch)
        # 1, 2 timed; 1 chosen for 3 calls; then 1, 2 again; ...
        assert [c for _, c in seen] == [1, 2, 1, 1, 1, 1, 2, 1, 1, 1]
    finally:
        set_blas_threads(before)


def test_auto_with_one_candidate_never_times():
    calls = []
    auto = AutoBlasThreads(lambda b: calls.append(b) or 1.0, candidates=(1,))
    assert auto.chosen == 1 and [auto(b) for b in range(3)] == [1.0] * 3 and calls == [0, 1, 2]


@needs_blas
@needs_two
def test_auto_with_one_candidate_still_sets_it():
    # a one-core host (candidates (1,)) where OpenBLAS was left at 2 threads
    # (OPENBLAS_NUM_THREADS, or a container's view of the host's cores): the
    # steps after the skipped ones run at the one count
    before = get_blas_threads()
    try:
        set_blas_threads(2)
        seen = []
        auto = AutoBlasThreads(lambda b: seen.append(get_blas_threads()), candidates=(1,), skip=1)
        for b in range(4):
            auto(b)
        assert seen == [2, 1, 1, 1]
    finally:
        set_blas_threads(before)


@needs_blas
def test_fit_sets_the_count_while_training_and_restores_it():
    before, seen = get_blas_threads(), []
    gs = GlobalStep()

    def step(batch):
        seen.append(get_blas_threads())
        gs.increment()
        return 0.5
    try:
        set_blas_threads(min(2, os.cpu_count() or 1))
        outside = get_blas_threads()
        fit(Data(3), Data(1), step, lambda b: {"auc": 0.5, "logloss": 0.7, "num_examples": 2},
            gs, epochs=1, progress=None, blas_threads=1)
        assert seen == [1, 1, 1] and get_blas_threads() == outside
        seen.clear()
        fit(Data(8), Data(1), step, lambda b: {"auc": 0.5, "logloss": 0.7, "num_examples": 2},
            gs, epochs=1, progress=None, blas_threads="auto")
        assert len(seen) == 8 and set(seen) <= {1, 2} and get_blas_threads() == outside
    finally:
        set_blas_threads(before)


#: (M, K, N) of the main job's products (DeepFM, batch 512, 10 fields x 16
#: + 4 numeric = 164 inputs, hidden 256, 128, 1; last batches of 64 and 39 rows).
MAIN_JOB = [(rows, k, n) for rows in (512, 64, 39)
            for k, n in ((164, 256), (256, 128), (128, 1), (4, 1))]


@needs_blas
@needs_two
@pytest.mark.parametrize("m, k, n", MAIN_JOB)
def test_products_equal_float64_and_are_the_same_bits_at_1_and_2_threads(m, k, n):
    """The forward ``x @ W``, and the backward ``p @ W.T`` and ``x.T @ p``."""
    rng = np.random.default_rng(m * 1000 + k)
    x = rng.standard_normal((m, k)).astype(np.float32)
    w = rng.standard_normal((k, n)).astype(np.float32)
    p = rng.standard_normal((m, n)).astype(np.float32)
    before = get_blas_threads()
    results = {}
    try:
        for count in (1, 2):
            set_blas_threads(count)
            results[count] = (x @ w, p @ w.T, x.T @ p)
    finally:
        set_blas_threads(before)
    references = (x.astype(np.float64) @ w, p.astype(np.float64) @ w.T.astype(np.float64),
                  x.T.astype(np.float64) @ p)
    for one, two, reference, length in zip(results[1], results[2], references, (k, n, m)):
        np.testing.assert_array_equal(one.view(np.uint32), two.view(np.uint32))
        # float32 rounding of a sum of L products of unit normals (each
        # about sqrt(L) in size): at most about L * eps * sqrt(L)
        bound = 2 * np.finfo(np.float32).eps * length ** 1.5
        np.testing.assert_allclose(one, reference, rtol=np.finfo(np.float32).eps, atol=bound)
