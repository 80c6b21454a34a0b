"""Wide & Deep."""
from .. import autodiff as ad
from ..nn import MLP
from .base import CTRModel

__all__ = ["WideDeep"]


class WideDeep(CTRModel):
    """Wide & Deep (Cheng et al. 2016)::

        wide  = bias + sum_f w_f[ids_f] + dense @ v          (nn.FeatureLinear)
        deep  = MLP([e_1, ..., e_F, dense]) -> 1              (ReLU hidden layers)
        logit = wide + deep

    Args (besides ``CTRModel``'s):
        hidden_units: the deep part's hidden widths, default (400, 400, 400).

    >>> import numpy as np
    >>> from sparse_train import Ragged
    >>> from sparse_train.data import Batch, DataSpec, FeatureSpec
    >>> spec = DataSpec((FeatureSpec("user", 4), FeatureSpec("item", 3)), ("age",))
    >>> batch = Batch(np.zeros(2, np.float32), np.array([[2.0], [4.0]], np.float32),
    ...               {"user": Ragged.from_dense([1, 3]), "item": Ragged.from_dense([0, 2])})
    >>> model = WideDeep(spec, embedding_dim=2, hidden_units=(4,), scope="demo_wd")
    >>> model.deep.in_features, model.forward(batch).shape   # 2 fields x 2 + 1 numeric
    (5, (2,))
    >>> logit = model.deep(ad.concat([model.embedding.flat(batch), model.dense_input(batch)],
    ...                              axis=1)).data[:, 0] + model.wide(batch).data
    >>> bool(np.allclose(model.forward(batch).data, logit))
    True
    """

    name = "wide_deep"

    def __init__(self, spec, embedding_dim=16, seed=0, hidden_units=(400, 400, 400), **options):
        super().__init__(spec, embedding_dim, seed, **options)
        self.wide = self._feature_linear("wide")
        self.embedding = self._embeddings()
        width = len(spec.sparse_features) * self.embedding_dim + spec.num_dense
        self.deep = self._track(MLP(width, hidden_units, f"{self.scope}/deep", self.seed,
                                    output_units=1))
        self._finish_build(hidden_units=tuple(hidden_units))

    def forward(self, batch):
        dense = self.dense_input(batch)
        deep_in = ([self.embedding.flat(batch)] if self.embedding is not None else []) + [dense]
        deep = ad.reshape(self.deep(ad.concat(deep_in, axis=1)), (-1,))
        return ad.add(self.wide(batch, dense), deep)
