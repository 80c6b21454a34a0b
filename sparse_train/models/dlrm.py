"""DLRM."""
from .. import autodiff as ad
from ..nn import MLP
from .base import CTRModel

__all__ = ["DLRM"]


class DLRM(CTRModel):
    """Deep Learning Recommendation Model (Naumov et al. 2019)::

        z     = bottom_MLP(dense)                 [B, D]   (ReLU on every layer)
        pairs = <v_i, v_j> for i < j over V = [z, e_1, ..., e_F]   (dot interaction)
        logit = top_MLP([z, pairs]) -> 1          (ReLU hidden layers)

    Without numeric features there is no bottom MLP: V = [e_1..e_F] and the
    top MLP reads the pairs only.

    Args (besides ``CTRModel``'s):
        bottom_mlp: hidden widths before the last bottom layer (of width D),
            default (512, 256, 64) (the DLRM Criteo Kaggle configuration,
            13-512-256-64-D).
        top_mlp: hidden widths of the top MLP, default (512, 256).
        self_interaction: include <v_i, v_i> (DLRM ``arch_interaction_itself``).

    >>> import numpy as np
    >>> from sparse_train import Ragged
    >>> from sparse_train.data import Batch, DataSpec, FeatureSpec
    >>> spec = DataSpec((FeatureSpec("user", 4), FeatureSpec("item", 3)), ("age",))
    >>> batch = Batch(np.zeros(2, np.float32), np.array([[2.0], [4.0]], np.float32),
    ...               {"user": Ragged.from_dense([1, 3]), "item": Ragged.from_dense([0, 2])})
    >>> model = DLRM(spec, embedding_dim=2, bottom_mlp=(3,), top_mlp=(4,), scope="demo_dlrm")
    >>> model.top.in_features, model.forward(batch).shape   # z (2) + 3 pairs of [z, e_1, e_2]
    (5, (2,))
    """

    name = "dlrm"

    def __init__(self, spec, embedding_dim=16, seed=0, bottom_mlp=(512, 256, 64),
                 top_mlp=(512, 256), self_interaction=False, **options):
        super().__init__(spec, embedding_dim, seed, **options)
        self.embedding = self._embeddings()
        self.bottom = (self._track(MLP(spec.num_dense, tuple(bottom_mlp) + (self.embedding_dim,),
                                       f"{self.scope}/bottom", self.seed))
                       if spec.num_dense else None)
        vectors = len(spec.sparse_features) + (1 if self.bottom is not None else 0)
        if vectors < 2:
            raise ValueError(f"DLRM needs at least two vectors to interact, got {vectors}")
        self.self_interaction = bool(self_interaction)
        pairs = vectors * (vectors + 1) // 2 if self_interaction else vectors * (vectors - 1) // 2
        width = pairs + (self.embedding_dim if self.bottom is not None else 0)
        self.top = self._track(MLP(width, top_mlp, f"{self.scope}/top", self.seed, output_units=1))
        self._declare_logit_bias(self.top.output.bias)
        self._finish_build(bottom_mlp=tuple(bottom_mlp), top_mlp=tuple(top_mlp),
                           self_interaction=self.self_interaction)

    def forward(self, batch):
        parts = [self.embedding.stacked(batch)] if self.embedding is not None else []
        if self.bottom is not None:
            z = self.bottom(self.dense_input(batch))
            parts = [ad.reshape(z, (-1, 1, self.embedding_dim))] + parts
        stacked = parts[0] if len(parts) == 1 else ad.concat(parts, axis=1)
        pairs = ad.dot_interaction(stacked, self.self_interaction)
        top_in = ad.concat([z, pairs], axis=1) if self.bottom is not None else pairs
        return ad.reshape(self.top(top_in), (-1,))
