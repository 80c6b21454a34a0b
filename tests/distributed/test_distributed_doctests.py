"""The examples in ``sparse_train.distributed``'s docstrings run (one process)."""
import doctest

import pytest

from sparse_train.distributed import (checkpoint, comm, dynamic, exchange, faults, model,
                                      sharding)


@pytest.mark.parametrize("module", [comm, sharding, model, exchange, faults, checkpoint,
                                    dynamic],
                         ids=lambda m: m.__name__)
def test_docstring_examples(module):
    result = doctest.testmod(module, optionflags=doctest.NORMALIZE_WHITESPACE)
    assert result.failed == 0
