"""sparse_train: recommender training on the CPU with row-sparse embedding
gradients applied by Numba kernels, with TF / DeepRec / PyTorch semantics."""
import os

# Thread pools: OpenBLAS's workers (dense layers) and Numba's OpenMP workers
# (sparse kernels) both spin after their work, stealing the cores the other
# needs next; on 2 cores a Numba kernel right after a matmul waited up to
# 1.6 ms, and DeepFM training (BENCH W2) ran 88 ms a step instead of 70.
# Shorter spins, measured best of 1k-300k: OpenBLAS 2**4 cycles (read when
# numpy loads, so only if sparse_train is imported first; else set it in the
# environment), libgomp 10000 rounds (read when Numba starts its threads).
# Values already in the environment win.
os.environ.setdefault("OPENBLAS_THREAD_TIMEOUT", "4")
os.environ.setdefault("GOMP_SPINCOUNT", "10000")

from . import autodiff, checkpoint, clip, collections, data, functional, metrics, models, nn, optim  # noqa: E402,I001
from .autodiff import Tensor, compute_gradients, gradients, no_grad
from .checkpoint import Checkpoint, CheckpointError, CheckpointManager, CorruptCheckpointError
from .clip import clip_by_global_norm, clip_by_norm, clip_by_value, clip_gradients, global_norm
from .collections import add_to_collection, get_collection
from .metrics import AUC, LogLoss, auc, logloss
from .models import build_model, train_step
from .nn import EmbeddingTable
from .ragged import Ragged
from .sparse import RowSparseGrad
from .variable import GlobalStep, Variable

__version__ = "0.1.0"

__all__ = [
    "Variable", "GlobalStep", "RowSparseGrad", "Ragged", "EmbeddingTable", "Tensor",
    "gradients", "compute_gradients", "no_grad", "add_to_collection", "get_collection",
    "clip_by_global_norm", "clip_by_norm", "clip_by_value", "clip_gradients", "global_norm",
    "Checkpoint", "CheckpointManager", "CheckpointError", "CorruptCheckpointError",
    "AUC", "LogLoss", "auc", "logloss", "build_model", "train_step",
    "autodiff", "checkpoint", "clip", "collections", "data", "functional", "metrics", "models",
    "nn", "optim", "__version__",
]
