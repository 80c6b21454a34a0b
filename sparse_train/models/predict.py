"""``predict``: click probabilities of a batch, without training state."""
import numpy as np

from ..data.batch import Batch
from .base import CTRModel

__all__ = ["predict", "write_predictions"]


def predict(model, batch):
    """Click probabilities of every example of ``batch``::

        p[b] = sigmoid(logit[b]) = 1 / (1 + exp(-logit[b]))

    No gradient graph is recorded and no variable changes (the forward pass
    only reads the tables), so it may run between training steps, on a
    restored checkpoint, or as the reference of an exported model.

    Args:
        model: a ``CTRModel`` (``build_model``'s).
        batch: a ``Batch`` whose features match ``model.spec``; its labels
            are not read.

    Returns:
        [B] float32 probabilities, in the batch's row order.

    >>> from sparse_train import Ragged
    >>> from sparse_train.data import DataSpec, FeatureSpec
    >>> from sparse_train.models import build_model
    >>> spec = DataSpec((FeatureSpec("user", 10),), ("age",))
    >>> model = build_model("lr", spec, scope="doc_predict")
    >>> model.linear.dense.kernel.value[...] = 0.0     # tables start at zero
    >>> model.linear.bias.value[...] = np.log(3.0)     # p = 3 / (1 + 3)
    >>> batch = Batch(np.zeros(2, np.float32), np.ones((2, 1), np.float32),
    ...               {"user": Ragged.from_dense([1, 2])})
    >>> predict(model, batch).tolist()
    [0.75, 0.75]
    """
    if not isinstance(model, CTRModel):
        raise TypeError(f"predict: model must be a CTRModel, got {type(model).__name__}")
    if not isinstance(batch, Batch):
        raise TypeError(f"predict: expected a Batch, got {type(batch).__name__}")
    return np.ascontiguousarray(model.predict(batch), dtype=np.float32).reshape(batch.size)


def write_predictions(model, batches, path):
    """Write ``predict(model, batch)`` of every row of ``batches`` to a text
    file, one probability a line, in row order (``%.9g``: nine significant
    digits read back as the same float32). Returns the number of rows.

    >>> import os, tempfile
    >>> from sparse_train.data import open_dataset
    >>> from sparse_train.models import build_model
    >>> data = open_dataset(format="synthetic", num_examples=300, seed=0, batch_size=128)
    >>> model = build_model("lr", data.spec, scope="doc_write_predictions")
    >>> path = os.path.join(tempfile.mkdtemp(), "valid.txt")
    >>> write_predictions(model, data, path), len(open(path).read().split())
    (300, 300)
    """
    rows = 0
    with open(path, "w", encoding="ascii") as out:
        for batch in batches:
            probabilities = predict(model, batch)
            out.write("".join(f"{p:.9g}\n" for p in probabilities.tolist()))
            rows += probabilities.shape[0]
    return rows
