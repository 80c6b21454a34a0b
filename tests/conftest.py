"""Fixtures shared by the optimizer tests (build each optimizer, read its
state), and the main job of tests/test_train_script.py, run in the background."""
import numpy as np
import pytest

from sparse_train import optim


# Non-default hyperparameters chosen so every term of each rule shows
# (AdagradDecay decays every 2 steps). Tests build the reference from these.
HYPER = {
    "GradientDescent": dict(learning_rate=0.3),
    "Adagrad": dict(learning_rate=0.3, initial_accumulator_value=0.2, epsilon=1e-3),
    "AdagradDecay": dict(learning_rate=0.3, initial_accumulator_value=0.2,
                         accumulator_decay_step=2, accumulator_decay_rate=0.5),
    "Adam": dict(learning_rate=0.05, beta1=0.8, beta2=0.95, epsilon=1e-6),
    "LazyAdam": dict(learning_rate=0.05, beta1=0.8, beta2=0.95, epsilon=1e-6),
    "RowwiseAdagrad": dict(learning_rate=0.3, epsilon=1e-3),
    "Ftrl": dict(learning_rate=0.3, initial_accumulator_value=0.2, l1_regularization_strength=0.01,
                 l2_regularization_strength=0.05, l2_shrinkage_regularization_strength=0.02,
                 beta=0.1),
}


def _make_optimizer(kind, global_step=None):
    """An optimizer of class ``kind`` built from ``HYPER[kind]``."""
    if kind == "AdagradDecay":
        return optim.AdagradDecay(global_step=global_step, **HYPER[kind])
    return getattr(optim, kind)(**HYPER[kind])


def _slots_of(opt, var):
    """{slot name: copy of its array} of ``var`` (missing slots left out)."""
    slots = {}
    for name in opt.get_slot_names():
        slot = opt.get_slot(var, name)
        if slot is not None:
            slots[name] = slot.value.copy()
    return slots


def _beta_powers(opt):
    """(beta1_power, beta2_power) of an Adam-family optimizer, as floats."""
    found = {}
    for var in opt.variables():
        for key in ("beta1_power", "beta2_power"):
            if var.name.endswith(key):
                found[key] = float(np.asarray(var.value))
    return found["beta1_power"], found["beta2_power"]


@pytest.fixture(scope="session")
def make_optimizer():
    return _make_optimizer


@pytest.fixture(scope="session")
def hyper():
    return HYPER


@pytest.fixture(scope="session")
def slots_of():
    return _slots_of


@pytest.fixture(scope="session")
def beta_powers():
    return _beta_powers


# ------------------------------------------------ the main job, in the background
# tests/test_train_script.py's main job (``python scripts/train.py`` with no
# arguments) trains for the longest of any test: half a minute on 2 cores.
# It starts once its test is collected, as a process of one Numba thread (the
# results do not depend on the thread count), so it trains on the core the
# rest of the suite (mostly one Python thread) leaves idle; its test waits.
MAIN_JOB_TEST = ("test_train_script.py",
                 "test_the_main_job_comes_within_001_auc_of_the_planted_model")
_MAIN_JOB = pytest.StashKey()


def _start_main_job():
    import os
    import subprocess
    import sys
    import tempfile
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    out = Path(tempfile.mkdtemp(prefix="sparse_train_main_job_"))
    env = {**os.environ, "NUMBA_NUM_THREADS": "1",
           "PYTHONPATH": os.pathsep.join(p for p in (str(root), os.environ.get("PYTHONPATH")) if p)}
    with open(out / "stderr.txt", "w") as stderr:
        process = subprocess.Popen(
            [sys.executable, str(root / "scripts" / "train.py"), "--quiet",
             "--metrics-out", str(out / "metrics.json")],
            cwd=out, env=env, stdout=subprocess.DEVNULL, stderr=stderr, start_new_session=True)
    return process, out


def pytest_collection_finish(session):
    if not session.config.option.collectonly and any(
            (item.path.name, item.name) == MAIN_JOB_TEST for item in session.items):
        session.config.stash[_MAIN_JOB] = _start_main_job()


def pytest_sessionfinish(session):
    import shutil
    started = session.config.stash.get(_MAIN_JOB, None)
    if started is not None:
        started[0].kill()
        started[0].wait()
        shutil.rmtree(started[1], ignore_errors=True)


@pytest.fixture
def main_job(request):
    """Waits for the main job (started at collection, else now): (exit code,
    metrics dict or None, the tail of its stderr)."""
    import json

    def wait(timeout=1200):
        if _MAIN_JOB not in request.config.stash:
            request.config.stash[_MAIN_JOB] = _start_main_job()
        process, out = request.config.stash[_MAIN_JOB]
        code = process.wait(timeout=timeout)
        metrics = out / "metrics.json"
        return (code, json.loads(metrics.read_text()) if metrics.exists() else None,
                (out / "stderr.txt").read_text()[-3000:])
    return wait
