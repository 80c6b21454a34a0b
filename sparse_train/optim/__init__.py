"""Optimizers with TF1 names and semantics (SPEC §1-§2), one module each."""
from .adagrad import Adagrad
from .adagrad_decay import AdagradDecay
from .adam import Adam, LazyAdam
from .base import Optimizer, Prepared
from .ftrl import Ftrl
from .gradient_descent import GradientDescent
from .rowwise_adagrad import RowwiseAdagrad

__all__ = ["Optimizer", "GradientDescent", "Adagrad", "AdagradDecay", "Adam",
           "LazyAdam", "RowwiseAdagrad", "Ftrl", "OPTIMIZERS", "build_optimizer"]

#: Command-line names of the optimizers.
OPTIMIZERS = {"sgd": GradientDescent, "adagrad": Adagrad, "adagrad_decay": AdagradDecay,
              "adam": Adam, "lazy_adam": LazyAdam, "rowwise_adagrad": RowwiseAdagrad,
              "ftrl": Ftrl}


def build_optimizer(kind, learning_rate, global_step=None, **options):
    """An optimizer by command-line name ``kind`` (``OPTIMIZERS``);
    ``global_step`` is given to the rules that read it (``adagrad_decay``);
    ``options`` go to the constructor (e.g. ``name``).

    >>> build_optimizer("adagrad", 0.1).get_config()["initial_accumulator_value"]
    0.1
    """
    if kind not in OPTIMIZERS:
        raise ValueError(f"unknown optimizer {kind!r}; choose one of {sorted(OPTIMIZERS)}")
    if OPTIMIZERS[kind] is AdagradDecay:
        return AdagradDecay(learning_rate, global_step, **options)
    return OPTIMIZERS[kind](learning_rate, **options)
