"""Logistic regression."""
from .base import CTRModel

__all__ = ["LR"]


class LR(CTRModel):
    """Logistic regression over one-hot / multi-hot ids and numeric features::

        logit = bias + sum_f w_f[ids_f] + dense @ v

    (``nn.FeatureLinear``; ``embedding_dim`` is unused). Variables:
    ``lr/linear/{feature}`` [V_f, 1] tables, ``lr/linear/dense/kernel``,
    ``lr/linear/bias``.
    """

    name = "lr"

    def __init__(self, spec, embedding_dim=16, seed=0, **options):
        super().__init__(spec, embedding_dim, seed, **options)
        self.linear = self._feature_linear()
        self._finish_build()

    def forward(self, batch):
        return self.linear(batch, self.dense_input(batch))
