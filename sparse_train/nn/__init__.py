"""Layers: thin classes over tables and dense weights."""
from .cross import CrossNetwork
from .dynamic_embedding import DynamicEmbeddingTable, DynamicVariable
from .embedding import EmbeddingTable
from .embedding_bag import EmbeddingBag, EmbeddingBagCollection
from .feature_linear import FeatureLinear
from .init import glorot_uniform, layer_seed
from .linear import Linear
from .mlp import MLP

__all__ = ["EmbeddingTable", "DynamicEmbeddingTable", "DynamicVariable", "EmbeddingBag",
           "EmbeddingBagCollection", "Linear", "MLP",
           "CrossNetwork", "FeatureLinear", "glorot_uniform", "layer_seed"]
