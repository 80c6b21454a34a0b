"""What every reader yields and every model takes: ``Batch`` and ``DataSpec``."""
from dataclasses import dataclass, field

import numpy as np

__all__ = ["Batch", "FeatureSpec", "DataSpec"]


@dataclass(frozen=True)
class FeatureSpec:
    """One categorical feature: its name and the size of its id space.

    ``num_embeddings`` is the table size the ids fall in (vocabulary size
    including the out-of-vocabulary and missing ids, or hash buckets).
    ``multi_hot`` features may hold several ids per example; ``weighted``
    ones carry per-id weights (libsvm / libffm values).
    """
    name: str
    num_embeddings: int
    multi_hot: bool = False
    weighted: bool = False


@dataclass(frozen=True)
class DataSpec:
    """The shape of a data set: its categorical features (in order) and the
    names of its numeric features."""
    sparse_features: tuple
    dense_features: tuple = ()

    @property
    def num_dense(self):
        return len(self.dense_features)

    def feature(self, name):
        for spec in self.sparse_features:
            if spec.name == name:
                return spec
        raise KeyError(f"no sparse feature {name!r}; features are "
                       f"{[s.name for s in self.sparse_features]}")


@dataclass
class Batch:
    """A batch of B examples.

    Attributes:
        labels: [B] float32 (0/1 for click logs).
        dense: [B, num_dense] float32 numeric features (num_dense may be 0).
        sparse: feature name -> ``Ragged`` ids (B bags each), in the order of
            ``DataSpec.sparse_features``.
    """
    labels: np.ndarray
    dense: np.ndarray
    sparse: dict = field(default_factory=dict)
    #: What layers derive from this batch and may reuse within it (e.g. an
    #: ``EmbeddingBagCollection``'s fused ids, built once for the exchange and
    #: the forward of a distributed step): kept on the batch, so it lives and
    #: dies with it; not part of equality or the constructor.
    derived: dict = field(default_factory=dict, init=False, repr=False, compare=False)

    @property
    def size(self):
        return int(self.labels.shape[0])

    def __len__(self):
        return self.size
