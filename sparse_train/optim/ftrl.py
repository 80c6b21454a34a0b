"""FTRL-Proximal (TF v1 ``FtrlOptimizer``; McMahan et al. 2013, "Ad Click
Prediction: a View from the Trenches")."""
import numpy as np

from ..half import storage_bits
from ..kernels.ftrl import ftrl_apply
from ..kernels.update_half import ftrl_apply_half
from .base import (Optimizer, check_float32_positive, check_number, half_narrowing, kernel_dim,
                   row_view)

__all__ = ["Ftrl"]


class Ftrl(Optimizer):
    """FTRL-Proximal, per element of a touched row r (TF 2.21 ``ApplyFtrlV2``),
    with ``p = -learning_rate_power``::

        g_s     = g + 2 * l2_shrinkage * w            # shrinkage: linear only
        a_new   = accum + g * g                       # the plain gradient
        linear += g_s - (a_new**p - accum**p) / learning_rate * w
        quad    = (a_new**p + beta) / learning_rate + 2 * l2
        w       = (sign(linear) * l1 - linear) / quad   if |linear| > l1   else 0
        accum   = a_new

    (l1, l2, l2_shrinkage: the ``*_regularization_strength`` arguments.) As
    in TF, ``beta`` reaches the kernel folded into l2, ``l2 + beta / (2 *
    learning_rate)`` rounded to float32, and ``x**p`` is ``sqrt(x)`` when
    ``learning_rate_power`` is -0.5. Row-sparse gradients update their
    touched rows only (duplicate ids summed first); a dense gradient
    updates every row. With p = 0.5 and no regularization, FTRL from a zero
    weight takes Adagrad's steps; with p = 0, plain gradient descent's.

    Slots (TF's names): ``accum`` [V, D] float32 (starts at
    ``initial_accumulator_value``), ``linear`` [V, D] float32 (0).

    Args:
        learning_rate: > 0.
        learning_rate_power: <= 0; -0.5 is Adagrad-like, 0 a fixed rate.
        initial_accumulator_value: >= 0. Zero needs l2 or beta > 0 when
            l2_shrinkage > 0 and learning_rate_power < 0 (else an element
            whose gradient is still 0 divides by a zero ``quad``).
        l1_regularization_strength: >= 0; weights with |linear| <= l1 are 0.
        l2_regularization_strength: >= 0.
        l2_shrinkage_regularization_strength: >= 0, a pull towards 0 that
            leaves the accumulator (the learning-rate schedule) alone.
        beta: >= 0, TF's beta (the paper's beta).

    Two steps of gradient 1 on row 1 from w = 0, ``learning_rate`` 1 and
    l1 = 0.5 (a sparse model's zeros come from ``|linear| <= l1``). Step 1:
    linear = 1, w = (0.5 - 1) / sqrt(1.1) = -0.47673. Step 2:

    >>> from sparse_train import RowSparseGrad, Variable
    >>> w = Variable(np.zeros((3, 1)), "w")
    >>> opt = Ftrl(1.0, l1_regularization_strength=0.5)
    >>> for _ in range(2):
    ...     opt.apply_gradients([(RowSparseGrad([1], [[1.0]], (3, 1)), w)])
    >>> opt.get_slot(w, "accum").value[:, 0].astype(float).round(4).tolist()  # 0.1 + 1 + 1
    [0.1, 2.1, 0.1]
    >>> linear = opt.get_slot(w, "linear").value[1, 0]  # 2 + (sqrt(2.1) - sqrt(1.1)) * 0.47673
    >>> round(float(linear), 5), round(float(w.value[1, 0]), 5)  # w = (0.5 - linear) / sqrt(2.1)
    (2.19085, -1.1668)
    >>> w.value[[0, 2], 0].tolist()                                 # untouched
    [0.0, 0.0]
    """

    def __init__(self, learning_rate, learning_rate_power=-0.5, initial_accumulator_value=0.1,
                 l1_regularization_strength=0.0, l2_regularization_strength=0.0,
                 l2_shrinkage_regularization_strength=0.0, beta=0.0, name="Ftrl"):
        super().__init__(learning_rate, name)
        self._power = check_number("learning_rate_power", learning_rate_power, high=0.0)
        self._initial = check_number("initial_accumulator_value", initial_accumulator_value,
                                     low=0.0)
        self._l1 = check_number("l1_regularization_strength", l1_regularization_strength, low=0.0)
        self._l2 = check_number("l2_regularization_strength", l2_regularization_strength, low=0.0)
        self._l2_shrinkage = check_number("l2_shrinkage_regularization_strength",
                                          l2_shrinkage_regularization_strength, low=0.0)
        self._beta = check_number("beta", beta, low=0.0)
        _check_float32_finite({
            "-learning_rate_power": -self._power,
            "initial_accumulator_value": self._initial, "l1_regularization_strength": self._l1,
            "l2_regularization_strength": self._l2,
            "l2_shrinkage_regularization_strength": self._l2_shrinkage,
            "l2_regularization_strength + beta / (2 * learning_rate)": self._folded_l2()})
        if (np.float32(self._initial) == 0.0 and np.float32(self._power) != 0.0
                and np.float32(self._l2_shrinkage) != 0.0
                and np.float32(self._l2) == 0.0 and np.float32(self._beta) == 0.0):
            raise ValueError(
                "initial_accumulator_value 0 with l2_shrinkage_regularization_strength "
                f"{l2_shrinkage_regularization_strength!r} needs l2_regularization_strength or "
                "beta > 0 (else an element whose gradient is still 0 has quad = 0 and its "
                "weight becomes infinite), got both 0 in float32")
        self._slot_specs = {"accum": ("like", np.float32, self._initial),
                            "linear": ("like", np.float32, 0.0)}

    def _check_learning_rate(self, value):
        number = super()._check_learning_rate(value)
        check_float32_positive(  # the rule divides by it
            "learning_rate", check_number("learning_rate", value, low=0.0, low_open=True))
        if hasattr(self, "_beta"):  # a new rate once constructed: beta / (2 lr) stays finite
            folded = self._l2 + self._beta / (2.0 * number)
            _check_float32_finite(
                {"l2_regularization_strength + beta / (2 * learning_rate)": folded})
        return number

    def get_config(self):
        return {**super().get_config(), "learning_rate_power": self._power,
                "initial_accumulator_value": self._initial,
                "l1_regularization_strength": self._l1,
                "l2_regularization_strength": self._l2,
                "l2_shrinkage_regularization_strength": self._l2_shrinkage,
                "beta": self._beta}

    def _folded_l2(self):
        """l2 with beta folded in, as TF's Python side passes it to the
        kernel (computed in float64, then rounded to float32)."""
        return self._l2 + self._beta / (2.0 * self._learning_rate)

    def _apply(self, var, plan, dense):
        l2 = self._folded_l2()
        weight = row_view(var.value)
        scalars = (np.float32(self._learning_rate), np.float32(-self._power),
                   np.float32(self._l1), np.float32(l2), np.float32(self._l2_shrinkage))
        slots = (self._slot_rows("accum", var), self._slot_rows("linear", var))
        if var.is_half:
            ftrl_apply_half(storage_bits(weight), *slots, plan, *scalars,
                            half_narrowing(self, var), kernel_dim(weight, dense))
            return
        ftrl_apply(weight, *slots, plan, *scalars, kernel_dim(weight, dense))


def _check_float32_finite(values):
    """ValueError naming the first of ``values`` ({name: number}) that is
    inf in float32, where the rule runs (e.g. beta = 1 with a learning rate
    of 1e-40)."""
    for name, value in values.items():
        if value > float(np.finfo(np.float32).max):
            raise ValueError(f"{name} must be finite in float32 (below 3.4e38), got {value!r}")
