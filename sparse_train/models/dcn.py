"""Deep & Cross Network."""
from .. import autodiff as ad
from ..nn import MLP, CrossNetwork, Linear
from .base import CTRModel

__all__ = ["DCN"]


class DCN(CTRModel):
    """Deep & Cross Network (Wang et al. 2017)::

        x0    = [e_1, ..., e_F, dense]                             [B, K]
        cross = CrossNetwork(x0)   (x_{l+1} = x0 (x_l . w_l) + b_l + x_l)
        deep  = MLP(x0)            (ReLU hidden layers)
        logit = [cross, deep] @ w_out + b_out

    Args (besides ``CTRModel``'s):
        num_cross_layers: default 3.
        hidden_units: the deep part's widths, default (400, 400, 400).

    >>> import numpy as np
    >>> from sparse_train import Ragged
    >>> from sparse_train.data import Batch, DataSpec, FeatureSpec
    >>> spec = DataSpec((FeatureSpec("user", 4), FeatureSpec("item", 3)), ("age",))
    >>> batch = Batch(np.zeros(2, np.float32), np.array([[2.0], [4.0]], np.float32),
    ...               {"user": Ragged.from_dense([1, 3]), "item": Ragged.from_dense([0, 2])})
    >>> model = DCN(spec, embedding_dim=2, num_cross_layers=2, hidden_units=(3,),
    ...             scope="demo_dcn")
    >>> model.cross.in_features, model.output.in_features, model.forward(batch).shape
    (5, 8, (2,))
    """

    name = "dcn"

    def __init__(self, spec, embedding_dim=16, seed=0, num_cross_layers=3,
                 hidden_units=(400, 400, 400), **options):
        super().__init__(spec, embedding_dim, seed, **options)
        self.embedding = self._embeddings()
        width = len(spec.sparse_features) * self.embedding_dim + spec.num_dense
        self.cross = self._track(CrossNetwork(width, num_cross_layers, f"{self.scope}/cross",
                                              self.seed))
        self.deep = self._track(MLP(width, hidden_units, f"{self.scope}/deep", self.seed))
        self.output = self._track(Linear(width + self.deep.out_features, 1,
                                         f"{self.scope}/output", self.seed))
        self._declare_logit_bias(self.output.bias)
        self._finish_build(num_cross_layers=num_cross_layers, hidden_units=tuple(hidden_units))

    def forward(self, batch):
        parts = [self.embedding.flat(batch)] if self.embedding is not None else []
        if self.spec.num_dense:
            parts.append(self.dense_input(batch))
        x0 = ad.concat(parts, axis=1)
        both = ad.concat([self.cross(x0), self.deep(x0)], axis=1)
        return ad.reshape(self.output(both), (-1,))
