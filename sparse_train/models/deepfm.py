"""DeepFM."""
from .. import autodiff as ad
from ..nn import MLP
from .base import CTRModel

__all__ = ["DeepFM"]


class DeepFM(CTRModel):
    """DeepFM (Guo et al. 2017): an FM and an MLP sharing the embeddings::

        E     = [e_1, ..., e_F]                                [B, F, D]
        fm    = bias + sum_f w_f[ids_f] + dense @ v + sum_{f<f'} <e_f, e_f'>
        deep  = MLP([flatten(E), dense]) -> 1                   (ReLU hidden layers)
        logit = fm + deep

    Args (besides ``CTRModel``'s):
        hidden_units: the MLP's hidden widths, default (400, 400, 400) (the paper's).

    >>> from sparse_train.data import DataSpec, FeatureSpec
    >>> model = DeepFM(DataSpec((FeatureSpec("a", 10), FeatureSpec("b", 10)), ("x",)),
    ...                embedding_dim=4, hidden_units=(8,), scope="demo_deepfm")
    >>> [v.name for v in model.sparse_variables()]  # each the rows of all its tables
    ['demo_deepfm/linear/weight', 'demo_deepfm/embedding/weight']
    """

    name = "deepfm"

    def __init__(self, spec, embedding_dim=16, seed=0, hidden_units=(400, 400, 400), **options):
        super().__init__(spec, embedding_dim, seed, **options)
        self.linear = self._feature_linear()
        self.embedding = self._embeddings()
        self.num_fields = len(spec.sparse_features)
        width = self.num_fields * self.embedding_dim + spec.num_dense
        self.deep = self._track(MLP(width, hidden_units, f"{self.scope}/deep", self.seed,
                                    output_units=1))
        self._finish_build(hidden_units=tuple(hidden_units))

    def forward(self, batch):
        dense = self.dense_input(batch)
        # the embeddings' lookup first: the linear term's (all sum) then
        # reuses its fused ids (``fused_ragged``); the graph is the same
        stacked = None if self.embedding is None else self.embedding.stacked(batch)
        logit = self.linear(batch, dense)
        deep_in = [dense]
        if self.embedding is not None:
            logit = ad.add(logit, ad.fm_interaction(stacked))
            flat = ad.reshape(stacked, (batch.size, self.num_fields * self.embedding_dim))
            deep_in = [flat, dense] if self.spec.num_dense else [flat]
        deep = ad.reshape(self.deep(ad.concat(deep_in, axis=1)), (-1,))
        return ad.add(logit, deep)
