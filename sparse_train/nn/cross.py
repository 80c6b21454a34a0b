"""``CrossNetwork``: the cross layers of DCN (Wang et al. 2017)."""
import numpy as np

from .. import autodiff as ad
from ..collections import register_variable
from ..variable import Variable
from .init import glorot_uniform, layer_seed
from .linear import check_positive

__all__ = ["CrossNetwork"]


class CrossNetwork:
    """Deep & Cross Network cross layers (Wang et al. 2017, eq. 1)::

        x_{l+1} = x_0 * (x_l @ w_l) + b_l + x_l      w_l [K, 1], b_l [K]

    each layer adds one degree of explicit feature crossing at O(K) cost.
    ``w_l`` is Glorot-uniform (Variable ``"{name}/layer_{l}/kernel"``),
    ``b_l`` zeros (``"{name}/layer_{l}/bias"``).

    Args:
        in_features: K, width of x_0.
        num_layers: number of cross layers (> 0).
        name: scope of the variables; seed: model seed.

    >>> cross = CrossNetwork(4, 2, "demo/cross")
    >>> cross(ad.Tensor(np.ones((3, 4), np.float32))).shape
    (3, 4)
    """

    def __init__(self, in_features, num_layers, name, seed=0):
        self.in_features = check_positive(f"CrossNetwork {name!r}", "in_features", in_features)
        self.num_layers = check_positive(f"CrossNetwork {name!r}", "num_layers", num_layers)
        self.name = name
        self.kernels, self.biases = [], []
        for layer in range(self.num_layers):
            scope = f"{name}/layer_{layer}"
            self.kernels.append(Variable(glorot_uniform(
                (self.in_features, 1), layer_seed(seed, f"{scope}/kernel")), f"{scope}/kernel"))
            self.biases.append(Variable(np.zeros(self.in_features, np.float32), f"{scope}/bias"))
        for var in self.variables():
            register_variable(var)

    @property
    def out_features(self):
        return self.in_features

    def __call__(self, x0):
        """[B, K] Tensor -> [B, K] Tensor."""
        x = x0
        for kernel, bias in zip(self.kernels, self.biases):
            x = ad.add(ad.mul(x0, ad.linear(x, ad.Tensor(kernel))), ad.bias_add(x, ad.Tensor(bias)))
        return x

    def variables(self):
        return [v for pair in zip(self.kernels, self.biases) for v in pair]

    def __repr__(self):
        return f"CrossNetwork({self.in_features}, num_layers={self.num_layers}, name={self.name!r})"
