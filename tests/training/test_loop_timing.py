"""``fit``'s samples/s leave out the run's first step (on a first run, the
kernels compile there), on a fake clock: no timing assertion."""
import types

from sparse_train import GlobalStep
from sparse_train.training import fit, loop

from _fakes import Batch, Data  # noqa: E402,F401


def _run(monkeypatch, batches, epochs):
    """fit on a clock that a step advances: 100 s for the first (compiling),
    1 s for every other."""
    now, gs = [0.0], GlobalStep()
    monkeypatch.setattr(loop, "time", types.SimpleNamespace(perf_counter=lambda: now[0]))

    def step(batch):
        now[0] += 100.0 if int(gs) == 0 else 1.0
        gs.increment()
        return 0.5
    return fit(Data(batches), Data(1), step,
               lambda b: (list(b), {"auc": 0.5, "logloss": 0.7, "num_examples": 2})[1], gs,
               epochs=epochs, progress=None)


def test_samples_per_second_from_the_second_step_on(monkeypatch):
    result = _run(monkeypatch, batches=3, epochs=2)
    assert result["global_step"] == 6
    assert result["samples_per_second"] == (5 * 2) / (5 * 1.0)  # not 12 rows / 105 s


def test_a_run_of_one_step_times_that_step(monkeypatch):
    result = _run(monkeypatch, batches=1, epochs=1)
    assert result["samples_per_second"] == 2 / 100.0
