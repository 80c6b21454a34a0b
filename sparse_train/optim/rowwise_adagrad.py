"""Row-wise Adagrad (FBGEMM / torchrec ``EXACT_ROWWISE_ADAGRAD``)."""
import numpy as np

from ..half import storage_bits
from ..kernels.rowwise_adagrad import rowwise_adagrad_apply
from ..kernels.update_half import rowwise_adagrad_apply_half
from .base import (Optimizer, check_float32_positive, check_number, half_narrowing, kernel_dim,
                   row_view)

__all__ = ["RowwiseAdagrad"]


class RowwiseAdagrad(Optimizer):
    """Adagrad with one accumulator per row, per touched row r::

        a[r] += mean_j(g_j ** 2)
        w[r] -= learning_rate * g / (sqrt(a[r]) + epsilon)

    Slot ``accumulator`` [V] float32 starts at 0: D times less optimizer
    memory than Adagrad. A variable is seen as rows ``[V, prod(rest)]``.

    Args:
        learning_rate: >= 0.
        epsilon: > 0 (the accumulator starts at 0).

    >>> from sparse_train import RowSparseGrad, Variable
    >>> w, opt = Variable(np.zeros((2, 2)), "w"), RowwiseAdagrad(1.0)
    >>> opt.apply_gradients([(RowSparseGrad([1], [[1.0, 7.0]], (2, 2)), w)])
    >>> opt.get_slot(w, "accumulator").value.tolist()   # mean(1, 49) = 25
    [0.0, 25.0]
    >>> [round(x, 6) for x in w.value[1].tolist()], w.value[0].tolist()   # -g / sqrt(25)
    ([-0.2, -1.4], [0.0, 0.0])
    """

    def __init__(self, learning_rate, epsilon=1e-8, name="RowwiseAdagrad"):
        super().__init__(learning_rate, name)
        self._epsilon = check_float32_positive(
            "epsilon", check_number("epsilon", epsilon, low=0.0, low_open=True))
        self._slot_specs = {"accumulator": ("rows", np.float32, 0.0)}

    def get_config(self):
        return {**super().get_config(), "epsilon": self._epsilon}

    def _apply(self, var, plan, dense):
        weight = row_view(var.value)
        if var.is_half:
            rowwise_adagrad_apply_half(
                storage_bits(weight), self._slot_rows("accumulator", var), plan,
                np.float32(self._learning_rate), np.float32(self._epsilon),
                half_narrowing(self, var), kernel_dim(weight, dense))
            return
        rowwise_adagrad_apply(weight, self._slot_rows("accumulator", var), plan,
                              np.float32(self._learning_rate), np.float32(self._epsilon),
                              kernel_dim(weight, dense))
