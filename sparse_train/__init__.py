"""sparse_train: recommender training on the CPU with row-sparse embedding
gradients applied by Numba kernels, with TF / DeepRec / PyTorch semantics."""
from . import _process

# Before numpy and Numba load: see _process (thread spinning, malloc reuse);
# SPARSE_TRAIN_TUNE=0 in the environment skips it.
_process.tune_process()

from . import autodiff, checkpoint, clip, collections, data, functional, metrics, models, nn, optim, training  # noqa: E402,I001
from .autodiff import Tensor, compute_gradients, gradients, no_grad
from .checkpoint import Checkpoint, CheckpointError, CheckpointManager, CorruptCheckpointError
from .clip import clip_by_global_norm, clip_by_norm, clip_by_value, clip_gradients, global_norm
from .collections import add_to_collection, get_collection
from .export import export_onnx
from .metrics import AUC, LogLoss, auc, logloss
from .models import build_model
from .nn import DynamicEmbeddingTable, DynamicVariable, EmbeddingTable
from .ragged import Ragged
from .sparse import RowSparseGrad
from .training import train_step
from .variable import GlobalStep, Variable

__version__ = "0.1.0"

__all__ = [
    "Variable", "GlobalStep", "RowSparseGrad", "Ragged", "EmbeddingTable", "Tensor",
    "DynamicEmbeddingTable", "DynamicVariable",
    "gradients", "compute_gradients", "no_grad", "add_to_collection", "get_collection",
    "clip_by_global_norm", "clip_by_norm", "clip_by_value", "clip_gradients", "global_norm",
    "Checkpoint", "CheckpointManager", "CheckpointError", "CorruptCheckpointError",
    "AUC", "LogLoss", "auc", "logloss", "build_model", "train_step", "export_onnx",
    "autodiff", "checkpoint", "clip", "collections", "data", "functional", "metrics", "models",
    "nn", "optim", "training", "__version__",
]
