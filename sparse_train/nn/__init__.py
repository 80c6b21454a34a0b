"""Layers: thin classes over tables and dense weights."""
from .embedding import EmbeddingTable

__all__ = ["EmbeddingTable"]
