"""sparse_train: recommender training on the CPU with row-sparse embedding
gradients applied by Numba kernels, with TF / DeepRec / PyTorch semantics."""
from . import functional, optim
from .nn import EmbeddingTable
from .ragged import Ragged
from .sparse import RowSparseGrad
from .variable import GlobalStep, Variable

__version__ = "0.1.0"

__all__ = ["Variable", "GlobalStep", "RowSparseGrad", "Ragged", "EmbeddingTable",
           "functional", "optim", "__version__"]
