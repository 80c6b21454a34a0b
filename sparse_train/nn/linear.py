"""``Linear``: a dense layer ``x @ kernel + bias``."""
import numpy as np

from ..autodiff import Tensor, linear
from ..collections import register_variable
from ..variable import Variable
from .init import glorot_uniform, layer_seed

__all__ = ["Linear"]


def check_positive(owner, what, value):
    """``value`` as an int, or ValueError naming ``owner`` and ``what``."""
    if isinstance(value, bool) or int(value) != value or value <= 0:
        raise ValueError(f"{owner}: {what} must be a positive integer, got {value!r}")
    return int(value)


class Linear:
    """Fully connected layer (Keras ``Dense`` without activation)::

        y = x @ kernel + bias        x [B, in], kernel [in, out], bias [out]

    ``kernel`` is Glorot-uniform (seeded by ``seed`` and ``name``), ``bias``
    zeros; both are Variables named ``"{name}/kernel"``, ``"{name}/bias"``
    and registered in the dense-variable collections.

    Args:
        in_features, out_features: sizes (> 0).
        name: unique scope of the layer's variables.
        seed: model seed (the layer's own seed is derived from it and ``name``).
        use_bias: add a bias.

    >>> layer = Linear(3, 2, "demo/dense")
    >>> layer(Tensor(np.ones((4, 3), np.float32))).shape, layer.kernel.name
    ((4, 2), 'demo/dense/kernel')
    """

    def __init__(self, in_features, out_features, name, seed=0, use_bias=True):
        self.in_features = check_positive(f"Linear {name!r}", "in_features", in_features)
        self.out_features = check_positive(f"Linear {name!r}", "out_features", out_features)
        self.name = name
        self.kernel = Variable(glorot_uniform((self.in_features, self.out_features),
                                              layer_seed(seed, f"{name}/kernel")),
                               f"{name}/kernel")
        self.bias = Variable(np.zeros(self.out_features, np.float32),
                             f"{name}/bias") if use_bias else None
        for var in self.variables():
            register_variable(var)

    def __call__(self, x, activation=None):
        """[B, in] Tensor -> [B, out] Tensor (``activation``: None or "relu",
        fused into the op)."""
        bias = None if self.bias is None else Tensor(self.bias)
        return linear(x, Tensor(self.kernel), bias, activation)

    def variables(self):
        return [self.kernel] if self.bias is None else [self.kernel, self.bias]

    def __repr__(self):
        return f"Linear({self.in_features}, {self.out_features}, name={self.name!r})"
