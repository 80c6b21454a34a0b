"""Adagrad (TF v1 ``AdagradOptimizer``, with PyTorch's epsilon as an option)."""
import numpy as np

from ..half import storage_bits
from ..kernels.adagrad import adagrad_apply
from ..kernels.update_half import adagrad_apply_half
from .base import Optimizer, check_number, half_narrowing, kernel_dim, row_view

__all__ = ["Adagrad"]


class Adagrad(Optimizer):
    """Adagrad, per touched row r (Duchi et al. 2011; TF v1 semantics)::

        a[r] += g * g
        w[r] -= learning_rate * g / (sqrt(a[r]) + epsilon)

    Slot ``accumulator`` [V, D] starts at ``initial_accumulator_value``.
    TF's defaults are 0.1 and epsilon 0. To match ``torch.optim.Adagrad``
    use ``initial_accumulator_value=0, epsilon=1e-10``.

    Args:
        learning_rate: >= 0.
        initial_accumulator_value: >= 0; > 0 when epsilon is 0.
        epsilon: >= 0, added outside the square root.

    >>> from sparse_train import RowSparseGrad, Variable
    >>> w = Variable(np.zeros((2, 1)), "w")
    >>> opt = Adagrad(1.0, initial_accumulator_value=7.0)
    >>> opt.apply_gradients([(RowSparseGrad([1, 1], [[1.0], [2.0]], (2, 1)), w)])
    >>> opt.get_slot(w, "accumulator").value[:, 0].tolist()   # 7 + (1 + 2)**2
    [7.0, 16.0]
    >>> w.value[:, 0].tolist()                                  # -3 / sqrt(16)
    [0.0, -0.75]
    """

    def __init__(self, learning_rate, initial_accumulator_value=0.1, epsilon=0.0,
                 name="Adagrad"):
        super().__init__(learning_rate, name)
        self._initial = check_number("initial_accumulator_value",
                                     initial_accumulator_value, low=0.0)
        self._epsilon = check_number("epsilon", epsilon, low=0.0)
        if np.float32(self._initial) == 0.0 and np.float32(self._epsilon) == 0.0:
            raise ValueError(
                "initial_accumulator_value must be > 0 when epsilon is 0 "
                f"(else the first update divides by zero; both are 0 in float32), "
                f"got {initial_accumulator_value!r} and epsilon {epsilon!r}")
        self._slot_specs = {"accumulator": ("like", np.float32, self._initial)}

    def get_config(self):
        return {**super().get_config(), "initial_accumulator_value": self._initial,
                "epsilon": self._epsilon}

    def _apply(self, var, plan, dense):
        weight = row_view(var.value)
        if var.is_half:
            adagrad_apply_half(storage_bits(weight), self._slot_rows("accumulator", var), plan,
                               np.float32(self._learning_rate), np.float32(self._epsilon),
                               half_narrowing(self, var), kernel_dim(weight, dense))
            return
        adagrad_apply(weight, self._slot_rows("accumulator", var), plan,
                      np.float32(self._learning_rate), np.float32(self._epsilon),
                      kernel_dim(weight, dense))
