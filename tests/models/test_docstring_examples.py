"""The docstring examples of autodiff, nn, models and collections run."""
import doctest
import importlib

import pytest

from sparse_train import collections

MODULES = ["sparse_train.autodiff.engine", "sparse_train.autodiff.ops",
           "sparse_train.autodiff.embedding", "sparse_train.autodiff.interaction",
           "sparse_train.autodiff.losses", "sparse_train.collections", "sparse_train.nn.init",
           "sparse_train.nn.linear", "sparse_train.nn.mlp", "sparse_train.nn.cross",
           "sparse_train.nn.embedding_bag", "sparse_train.nn.feature_linear",
           "sparse_train.models", "sparse_train.models.deepfm", "sparse_train.training.step",
           "sparse_train.models.lr", "sparse_train.models.fm", "sparse_train.models.wide_deep",
           "sparse_train.models.dcn", "sparse_train.models.dlrm"]


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples(name):
    module = importlib.import_module(name)
    try:
        result = doctest.testmod(module, optionflags=doctest.NORMALIZE_WHITESPACE)
    finally:
        collections.reset_collections()
    assert result.attempted > 0 and result.failed == 0, result
