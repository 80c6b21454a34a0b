"""Fixtures shared by the optimizer tests: build each optimizer, read its state."""
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
