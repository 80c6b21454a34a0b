"""Moved to ``sparse_train.training`` (re-exported here so old imports work)."""
from ..training.loop import evaluate
from ..training.step import train_step

__all__ = ["train_step", "evaluate"]
