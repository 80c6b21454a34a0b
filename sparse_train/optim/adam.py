"""Adam (TF v1 ``AdamOptimizer``) and LazyAdam (TF contrib ``LazyAdamOptimizer``)."""
import math

import numpy as np

from ..half import storage_bits
from ..kernels.adam import adam_apply, lazy_adam_apply, lazy_adam_apply_serial
from ..kernels.multi import MAX_VARIABLES, adam_apply_dense_multi
from ..kernels.update_half import adam_apply_half, lazy_adam_apply_half
from ..variable import Variable
from .base import (Optimizer, check_float32_positive, check_number, half_narrowing, kernel_dim,
                   row_view)

__all__ = ["Adam", "LazyAdam"]

_EMPTY = np.empty(0, np.float32)


class Adam(Optimizer):
    """Adam with TF v1 semantics (Kingma & Ba 2015), per row::

        lr_t = learning_rate * sqrt(1 - beta2_power) / (1 - beta1_power)
        m = beta1 * m + (1 - beta1) * g
        v = beta2 * v + (1 - beta2) * g * g
        w -= lr_t * m / (sqrt(v) + epsilon)

    For a ``RowSparseGrad`` EVERY row moves, untouched rows with g = 0 (as TF
    does): m and v of all rows decay and all weights take a step. Use
    ``LazyAdam`` to update only the touched rows. ``beta1_power`` and
    ``beta2_power`` start at beta1 and beta2 and are multiplied by them once
    per ``apply_gradients``, after all variables.

    Slots ``m``, ``v`` [V, D] float32 (0).

    Args:
        learning_rate: >= 0; beta1, beta2: in [0, 1); epsilon: > 0.

    Row 0 is touched by the first call only, yet the second call moves it
    (its m decays to ``0.9 * 0.1``); row 1, never touched, stays put:

    >>> from sparse_train import RowSparseGrad, Variable
    >>> w, opt = Variable(np.zeros((3, 1)), "w"), Adam(0.1)
    >>> opt.apply_gradients([(RowSparseGrad([0], [[1.0]], (3, 1)), w)])
    >>> [round(x, 4) for x in w.value[:, 0].tolist()]  # lr_t = .1 sqrt(1 - .999) / (1 - .9)
    [-0.1, 0.0, 0.0]
    >>> opt.apply_gradients([(RowSparseGrad([2], [[1.0]], (3, 1)), w)])
    >>> [round(x, 4) for x in w.value[:, 0].tolist()]
    [-0.167, 0.0, -0.0744]
    >>> round(float(opt.get_slot(w, "m").value[0, 0]), 6)
    0.09
    >>> round(float(opt.beta1_power.value), 6)   # 0.9 * 0.9 * 0.9: once per call
    0.729
    """

    def __init__(self, learning_rate=0.001, beta1=0.9, beta2=0.999, epsilon=1e-8,
                 name="Adam"):
        super().__init__(learning_rate, name)
        self._beta1 = check_number("beta1", beta1, low=0.0, high=1.0, high_open=True)
        self._beta2 = check_number("beta2", beta2, low=0.0, high=1.0, high_open=True)
        # epsilon = 0 makes m / (sqrt(v) + epsilon) = 0 / 0 = NaN on any row
        # with v = 0: under Adam, every row a sparse gradient never touched.
        self._epsilon = check_float32_positive(
            "epsilon", check_number("epsilon", epsilon, low=0.0, low_open=True))
        self._slot_specs = {"m": ("like", np.float32, 0.0), "v": ("like", np.float32, 0.0)}
        self._non_slot = {
            "beta1_power": Variable(np.float32(self._beta1), f"{name}/beta1_power", trainable=False),
            "beta2_power": Variable(np.float32(self._beta2), f"{name}/beta2_power", trainable=False),
        }
        self._row_slot = {}

    @property
    def beta1_power(self):
        return self._non_slot["beta1_power"]

    @property
    def beta2_power(self):
        return self._non_slot["beta2_power"]

    def get_config(self):
        return {**super().get_config(), "beta1": self._beta1, "beta2": self._beta2,
                "epsilon": self._epsilon}

    def _scalars(self):
        beta1_power = float(self.beta1_power.value)
        beta2_power = float(self.beta2_power.value)
        lr_t = self._learning_rate * math.sqrt(1.0 - beta2_power) / (1.0 - beta1_power)
        return (np.float32(lr_t), np.float32(self._beta1), np.float32(self._beta2),
                np.float32(self._epsilon))

    def _apply(self, var, plan, dense):
        weight, m, v = row_view(var.value), self._slot_rows("m", var), self._slot_rows("v", var)
        if dense:  # every row is touched: the lazy kernel moves them all
            LazyAdam._apply(self, var, plan, dense)
            return
        row_slot = self._row_slot.get(var.name)
        if row_slot is None or row_slot.shape[0] != weight.shape[0]:
            row_slot = self._row_slot[var.name] = np.full(weight.shape[0], -1, np.int64)
        if var.is_half:
            adam_apply_half(storage_bits(weight), m, v, row_slot, plan, *self._scalars(),
                            half_narrowing(self, var), kernel_dim(weight, dense))
            return
        adam_apply(weight, m, v, row_slot, plan, *self._scalars(), kernel_dim(weight, dense))

    def _apply_updates(self, updates):
        """Dense float32 gradients ``MAX_VARIABLES`` to a kernel call
        (``kernels.multi.adam_apply_dense_multi``: the bits of one
        ``lazy_adam_apply_serial`` call each, without its per-call cost, and
        a flag a variable left non-finite, read by ``verified_finite``:
        the main job's 8 dense variables 110 -> 56 us a step, median of
        2000 applies at load 3.4); any other
        update by ``_apply``. Variables are independent: the order does not
        matter."""
        flats, flat_vars = [], []
        for update in updates:
            flat = self._dense_flat(update)
            if flat is None:
                self._apply(update.var, update.plan, update.dense)
            else:
                flats.append(flat)
                flat_vars.append(update.var)
        scalars = self._scalars() if flats else None
        flags = np.zeros(MAX_VARIABLES, np.uint32)
        finite = set()
        for start in range(0, len(flats), MAX_VARIABLES):
            group = flats[start:start + MAX_VARIABLES]
            group += [(_EMPTY,) * 4] * (MAX_VARIABLES - len(group))
            adam_apply_dense_multi(flags, *(tuple(f[k] for f in group) for k in range(4)),
                                   *scalars)
            finite.update(id(var) for var, flag in zip(flat_vars[start:], flags) if not flag)
        # the kernel saw every value it stored: these need no second read
        self._verified_finite = (updates, finite)

    def _dense_flat(self, update):
        """(weight, m, v, gradient) of a dense float32 update as flat views,
        or None (a sparse or 16-bit update, or an array that is not
        C-contiguous: a flat copy would not write back)."""
        var, plan = update.var, update.plan
        if not update.dense or var.is_half:
            return None
        arrays = (var.value, self._slots["m"][var.name].value,
                  self._slots["v"][var.name].value, plan.src)
        if not all(a.flags.c_contiguous and a.dtype == np.float32 for a in arrays):
            return None
        if plan.src.size != var.value.size or plan.scale != 1:
            return None
        return tuple(a.reshape(-1) for a in arrays)

    def _finish(self):
        self.beta1_power.value *= np.float32(self._beta1)
        self.beta2_power.value *= np.float32(self._beta2)


class LazyAdam(Adam):
    """Adam restricted to the touched rows (TF contrib ``LazyAdamOptimizer``).

    Same formulas as ``Adam``; rows absent from a gradient keep their weight,
    m and v. The bias correction still uses the optimizer's shared beta
    powers (unlike ``torch.optim.SparseAdam``, which counts steps per
    parameter).

    The example of ``Adam``: row 0, absent from the second call, keeps its
    weight and moments:

    >>> from sparse_train import RowSparseGrad, Variable
    >>> w, opt = Variable(np.zeros((3, 1)), "w"), LazyAdam(0.1)
    >>> opt.apply_gradients([(RowSparseGrad([0], [[1.0]], (3, 1)), w)])
    >>> opt.apply_gradients([(RowSparseGrad([2], [[1.0]], (3, 1)), w)])
    >>> [round(x, 4) for x in w.value[:, 0].tolist()]
    [-0.1, 0.0, -0.0744]
    >>> round(float(opt.get_slot(w, "m").value[0, 0]), 6)
    0.1
    """

    def __init__(self, learning_rate=0.001, beta1=0.9, beta2=0.999, epsilon=1e-8,
                 name="LazyAdam"):
        super().__init__(learning_rate, beta1, beta2, epsilon, name)

    def _apply(self, var, plan, dense):
        weight = row_view(var.value)
        if var.is_half:
            lazy_adam_apply_half(storage_bits(weight), self._slot_rows("m", var),
                                 self._slot_rows("v", var), plan, *self._scalars(),
                                 half_narrowing(self, var), kernel_dim(weight, dense))
            return
        # A dense gradient's rows are contiguous: one thread keeps up with
        # memory (512 x 256: 87 us on 2 threads, 90 us on one; 2048 x 2048
        # 4.8 vs 4.5 ms), and the serial kernel compiles in 0.6 s, not 2 s.
        kernel = lazy_adam_apply_serial if dense else lazy_adam_apply
        kernel(weight, self._slot_rows("m", var), self._slot_rows("v", var), plan,
               *self._scalars(), kernel_dim(weight, dense))
