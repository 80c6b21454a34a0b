"""scripts/bench_contention.py: each condition times its own steady state.

The parallel kernels learn to run regions alone when the second thread
comes late (``kernels._jit``'s team choice). The benchmark alternates
quiet and busy conditions in one process, so a quiet 2-thread round must
not inherit the choice a busy round just made (it would run alone, at
1-thread speed, and flatter the busy / quiet ratio). Checked at toy sizes
with a stand-in step that plays the busy rounds' effect: it makes the
kernels go alone whenever the busy process runs beside 2 threads.
"""
import os
import sys

import numba
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.join(ROOT, "scripts"))

import bench_contention as bc  # noqa: E402
from sparse_train.kernels import _jit  # noqa: E402


class _FakeBusy:
    """Stands for the busy process: only says whether it runs."""

    running = False

    def resume(self):
        self.running = True

    def pause(self):
        self.running = False


def test_quiet_rounds_do_not_inherit_the_busy_rounds_team_choice(monkeypatch):
    busy = _FakeBusy()
    seen = {}  # (busy?, threads) -> team states each step started from

    def step(weight, optimizer, global_step, values, offsets, d_out):
        condition = (busy.running, numba.get_num_threads())
        seen.setdefault(condition, []).append(_jit.team_state())
        if condition == (True, 2):  # a late helper: the next regions go alone
            regions, period, debt = _jit.team_state()
            _jit.set_team_state((regions + 100, min(2 * period, _jit.SOLO_REGIONS_MAX), debt))

    monkeypatch.setattr(bc.w1, "TABLES", {"toy": (1000, 8)})
    monkeypatch.setattr(bc.w1, "our_step", step)
    threads_before = numba.get_num_threads()
    try:
        row = bc.run_config("toy", "zipf", "sgd", busy, rounds=3, steps=2, warmup=2, batches=2)
    finally:
        numba.set_num_threads(threads_before)
    assert set(row) >= {"quiet1_ms", "quiet2_ms", "busy1_ms", "busy2_ms", "busy2/busy1",
                        "busy2/quiet2"}
    if numba.config.NUMBA_NUM_THREADS < 2:
        pytest.skip("needs NUMBA_NUM_THREADS >= 2 to tell the 2-thread conditions apart")
    # quiet 2 threads: always the fresh choice (the full team), never busy's
    assert seen[(False, 2)] and all(s == (0, _jit.SOLO_REGIONS, 0) for s in seen[(False, 2)])
    # busy 2 threads: carries its own choice from step to step and round to round
    busy_states = seen[(True, 2)]
    assert [s[0] for s in busy_states] == [100 * k for k in range(len(busy_states))]
    # and the process is left with a fresh choice afterwards
    assert _jit.team_state() == (0, _jit.SOLO_REGIONS, 0)


def test_set_team_state_refuses_what_the_kernels_cannot_hold():
    _jit.set_team_state((5, 64, 1))
    try:
        for bad in [(-1, 16), (0, _jit.SOLO_REGIONS - 1), (0, _jit.SOLO_REGIONS_MAX + 1),
                    (0, 16, -1), (0, 16, _jit.SOLO_DEBT), (0, 16), (0, 16, 0, 0)]:
            with pytest.raises(ValueError, match="team state"):
                _jit.set_team_state(bad)
            assert _jit.team_state() == (5, 64, 1)  # a refusal changes nothing
        _jit.set_team_state((7, 32, 0))
        assert _jit.team_state() == (7, 32, 0)
    finally:
        _jit.set_team_state()
