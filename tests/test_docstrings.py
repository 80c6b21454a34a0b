"""The docstring examples of the core modules run (STYLE: public functions
carry a runnable example). autodiff, nn, models and collections: see
tests/models/test_docstring_examples.py; clip, checkpoint, metrics: their
own test files."""
import doctest
import importlib

import pytest

MODULES = ["sparse_train.variable", "sparse_train.sparse", "sparse_train.functional",
           "sparse_train.nn.embedding", "sparse_train.optim", "sparse_train.optim.base",
           "sparse_train.optim.gradient_descent", "sparse_train.optim.adagrad",
           "sparse_train.optim.adagrad_decay", "sparse_train.optim.adam",
           "sparse_train.optim.rowwise_adagrad"]


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples(name):
    result = doctest.testmod(importlib.import_module(name))
    assert result.attempted > 0 and result.failed == 0, result
