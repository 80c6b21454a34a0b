"""Logistic regression."""
from .base import CTRModel

__all__ = ["LR"]


class LR(CTRModel):
    """Logistic regression over one-hot / multi-hot ids and numeric features::

        logit = bias + sum_f w_f[ids_f] + dense @ v

    (``nn.FeatureLinear``; ``embedding_dim`` is unused). All weights start
    at zero, as TF's ``LinearClassifier`` (the logit bias then takes the
    data's log-odds, ``init_logit_bias``). Variables: the
    features' [V_f, 1] tables stacked in ``lr/linear/weight`` (row ranges,
    feature after feature), ``lr/linear/dense/kernel``, ``lr/linear/bias``.

    >>> import numpy as np
    >>> from sparse_train import Ragged
    >>> from sparse_train.data import Batch, DataSpec, FeatureSpec
    >>> spec = DataSpec((FeatureSpec("user", 4), FeatureSpec("item", 3)), ("age",))
    >>> batch = Batch(np.zeros(2, np.float32), np.array([[2.0], [4.0]], np.float32),
    ...               {"user": Ragged.from_dense([1, 3]), "item": Ragged.from_dense([0, 2])})
    >>> model = LR(spec, scope="demo_lr")
    >>> [v.name for v in model.variables()]
    ['demo_lr/linear/weight', 'demo_lr/linear/dense/kernel', 'demo_lr/linear/bias']
    >>> model.linear.weights.weight.value[:, 0] = np.arange(7)  # user rows 0-3, item 4-6
    >>> model.linear.dense.kernel.value[...] = 0.5
    >>> model.linear.bias.value[...] = -1.0
    >>> model.forward(batch).data.tolist()  # -1 + w[user] + w[4 + item] + 0.5 * age
    [5.0, 10.0]
    """

    name = "lr"

    def __init__(self, spec, embedding_dim=16, seed=0, **options):
        super().__init__(spec, embedding_dim, seed, **options)
        self.linear = self._feature_linear()
        self._finish_build()

    def forward(self, batch):
        return self.linear(batch, self.dense_input(batch))
