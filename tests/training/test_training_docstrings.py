"""The docstring examples of sparse_train.training run."""
import doctest
import importlib

import pytest


@pytest.mark.parametrize("name", ["sparse_train.training.step", "sparse_train.training.schedule"])
def test_docstring_examples(name):
    result = doctest.testmod(importlib.import_module(name))
    assert result.attempted > 0 and result.failed == 0, result
