"""The examples in the data modules' docstrings run."""
import doctest
import importlib

import pytest

MODULES = ["batch", "dataset", "delimited", "errors", "hashing", "libsvm", "readers",
           "numeric", "schema", "synthetic", "vocabulary", "_batching", "_lines"]


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples(name):
    module = importlib.import_module(f"sparse_train.data.{name}")
    result = doctest.testmod(module, optionflags=doctest.ELLIPSIS)
    assert result.failed == 0
