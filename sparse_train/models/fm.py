"""Factorization machine."""
from .. import autodiff as ad
from .base import CTRModel

__all__ = ["FM"]


class FM(CTRModel):
    """Factorization machine (Rendle 2010) over the categorical fields::

        logit = bias + sum_f w_f[ids_f] + dense @ v + sum_{f < f'} <e_f, e_f'>

    with ``e_f`` the field's pooled embedding (``autodiff.fm_interaction``).
    Numeric features enter the linear term.
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
