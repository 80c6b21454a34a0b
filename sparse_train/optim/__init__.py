"""Optimizers with TF1 names and semantics (SPEC §1-§2), one module each."""
from .adagrad import Adagrad
from .adagrad_decay import AdagradDecay
from .adam import Adam, LazyAdam
from .base import Optimizer
from .gradient_descent import GradientDescent
from .rowwise_adagrad import RowwiseAdagrad

__all__ = ["Optimizer", "GradientDescent", "Adagrad", "AdagradDecay", "Adam",
           "LazyAdam", "RowwiseAdagrad"]
