"""Plain gradient descent (TF ``GradientDescentOptimizer``)."""
import numpy as np

from ..half import storage_bits
from ..kernels.sgd import sgd_apply
from ..kernels.update_half import sgd_apply_half
from .base import Optimizer, half_narrowing, kernel_dim, row_view

__all__ = ["GradientDescent"]


class GradientDescent(Optimizer):
    """``w[r] -= learning_rate * g[r]`` on the touched rows; no slots.

    Duplicate ids are summed first (in order of position), so a gradient
    with duplicates gives the same bits as its pre-summed form.

    >>> from sparse_train import Variable, RowSparseGrad
    >>> w = Variable(np.ones((3, 2)), "w")
    >>> GradientDescent(0.5).apply_gradients([(RowSparseGrad([2, 2], np.ones((2, 2)), (3, 2)), w)])
    >>> w.value[:, 0].tolist()
    [1.0, 1.0, 0.0]
    """

    def __init__(self, learning_rate, name="GradientDescent"):
        super().__init__(learning_rate, name)

    def _apply(self, var, plan, dense):
        weight = row_view(var.value)
        if var.is_half:
            sgd_apply_half(storage_bits(weight), plan, np.float32(self._learning_rate),
                           half_narrowing(self, var), kernel_dim(weight, dense))
            return
        sgd_apply(weight, plan, np.float32(self._learning_rate), kernel_dim(weight, dense))
