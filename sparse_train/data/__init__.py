"""Readers and the synthetic click-log generator; all yield ``Batch``."""
from .batch import Batch, DataSpec, FeatureSpec

__all__ = ["Batch", "DataSpec", "FeatureSpec"]
