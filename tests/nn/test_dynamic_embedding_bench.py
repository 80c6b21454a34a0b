"""Smoke test of scripts/bench_dynamic.py at toy sizes (it times nothing
worth asserting): main() runs both contenders and returns their ratios."""
import os
import sys

import numba
import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(
    os.path.abspath(__file__)))), "scripts"))

import bench_dynamic  # noqa: E402


def test_bench_dynamic_runs_at_toy_size(capsys):
    threads = numba.get_num_threads()
    try:
        ratios = bench_dynamic.main(["--rows", "3000", "--dim", "8", "--rounds", "1",
                                     "--steps", "1", "--warmup", "1", "--batches", "2",
                                     "--threads", "1", "--distributions", "uniform"])
    finally:
        numba.set_num_threads(threads)
    assert set(ratios) == {"uniform"} and np.isfinite(ratios["uniform"])
    out = capsys.readouterr().out
    assert "bytes per admitted key" in out and "M ids/s" in out


def test_scrambled_keys_are_distinct_and_spread():
    keys = bench_dynamic.scrambled(np.arange(10000))
    assert np.unique(keys).shape[0] == 10000 and (keys < 0).any() and (keys > 2**40).any()
