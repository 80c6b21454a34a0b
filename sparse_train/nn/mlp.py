"""``MLP``: a stack of ``Linear`` layers with an activation between them."""
from .. import autodiff as ad
from .linear import Linear, check_positive

__all__ = ["MLP", "ACTIVATIONS"]

ACTIVATIONS = {"relu": ad.relu, "tanh": ad.tanh, "sigmoid": ad.sigmoid}


class MLP:
    """Multi-layer perceptron::

        h_0 = x,   h_{l+1} = act(h_l @ W_l + b_l)   for each of hidden_units
        out = h_L @ W_out + b_out                   if output_units, else h_L

    Layers are ``Linear`` named ``"{name}/dense_{l}"`` (and
    ``"{name}/output"``), each Glorot-uniform with its own derived seed.

    Args:
        in_features: width of the input.
        hidden_units: widths of the hidden layers, e.g. ``(400, 400, 400)``.
        name: scope of the variables.
        seed: model seed.
        activation: ``"relu"`` (default), ``"tanh"`` or ``"sigmoid"``.
        output_units: optional width of a last layer without activation.

    >>> import numpy as np
    >>> mlp = MLP(8, (16, 4), "demo/mlp", output_units=1)
    >>> mlp(ad.Tensor(np.ones((2, 8), np.float32))).shape, mlp.out_features
    ((2, 1), 1)
    """

    def __init__(self, in_features, hidden_units, name, seed=0, activation="relu",
                 output_units=None):
        if activation not in ACTIVATIONS:
            raise ValueError(f"MLP {name!r}: activation must be one of {sorted(ACTIVATIONS)}, "
                             f"got {activation!r}")
        hidden_units = tuple(check_positive(f"MLP {name!r}", "hidden_units entry", h)
                             for h in hidden_units)
        self.name = name
        self.activation = activation
        widths = (in_features,) + hidden_units
        self.hidden = [Linear(widths[i], widths[i + 1], f"{name}/dense_{i}", seed)
                       for i in range(len(hidden_units))]
        self.output = (None if output_units is None else
                       Linear(widths[-1], output_units, f"{name}/output", seed))
        self.in_features = int(in_features)
        self.out_features = widths[-1] if output_units is None else int(output_units)

    def __call__(self, x):
        """[B, in_features] Tensor -> [B, out_features] Tensor."""
        act = ACTIVATIONS[self.activation]
        for layer in self.hidden:
            x = layer(x, "relu") if self.activation == "relu" else act(layer(x))
        return x if self.output is None else self.output(x)

    def layers(self):
        return self.hidden + ([] if self.output is None else [self.output])

    def variables(self):
        return [var for layer in self.layers() for var in layer.variables()]

    def __repr__(self):
        widths = [self.in_features] + [layer.out_features for layer in self.layers()]
        return f"MLP({'-'.join(map(str, widths))}, name={self.name!r})"
