"""Factorization machine."""
from .. import autodiff as ad
from .base import CTRModel

__all__ = ["FM"]


class FM(CTRModel):
    """Factorization machine (Rendle 2010) over the categorical fields::

        logit = bias + sum_f w_f[ids_f] + dense @ v + sum_{f < f'} <e_f, e_f'>

    with ``e_f`` the field's pooled embedding (``autodiff.fm_interaction``).
    Numeric features enter the linear term.

    >>> import numpy as np
    >>> from sparse_train import Ragged
    >>> from sparse_train.data import Batch, DataSpec, FeatureSpec
    >>> spec = DataSpec((FeatureSpec("user", 4), FeatureSpec("item", 3)), ("age",))
    >>> batch = Batch(np.zeros(2, np.float32), np.array([[2.0], [4.0]], np.float32),
    ...               {"user": Ragged.from_dense([1, 3]), "item": Ragged.from_dense([0, 2])})
    >>> model = FM(spec, embedding_dim=2, scope="demo_fm")
    >>> model.linear.dense.kernel.value[...] = 0.0    # linear term: zero tables, bias, kernel
    >>> e = model.embedding.stacked(batch).data          # [B, F, D] = [2, 2, 2]
    >>> bool(np.allclose(model.forward(batch).data, (e[:, 0] * e[:, 1]).sum(axis=1)))
    True
    """

    name = "fm"

    def __init__(self, spec, embedding_dim=16, seed=0, **options):
        super().__init__(spec, embedding_dim, seed, **options)
        self.linear = self._feature_linear()
        self.embedding = self._embeddings()
        self._finish_build()

    def forward(self, batch):
        logit = self.linear(batch, self.dense_input(batch))
        if self.embedding is None:
            return logit
        return ad.add(logit, ad.fm_interaction(self.embedding.stacked(batch)))
