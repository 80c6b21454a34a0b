"""``models.predict``: probabilities equal sigmoid of the forward logits (an
independent float64 sigmoid), and nothing in the model changes."""
import doctest

import numpy as np
import pytest

import importlib
from sparse_train.models import build_model, predict

from _models_common import SMALL, SPEC, make_batch


@pytest.mark.parametrize("name", sorted(SMALL))
def test_predict_is_sigmoid_of_logits_and_mutates_nothing(name):
    model = build_model(name, SPEC, embedding_dim=4, seed=3, scope=f"predict_{name}",
                        **SMALL[name])
    for var in model.variables():  # no zero tables: every term shows up
        var.value[...] = np.random.default_rng(7).uniform(-0.5, 0.5, var.shape)
    before = [v.value.copy() for v in model.variables()]
    batch = make_batch(seed=1, size=9)
    probs = predict(model, batch)
    logits = model.forward(batch).data.astype(np.float64)
    assert probs.dtype == np.float32 and probs.shape == (9,)
    np.testing.assert_allclose(probs, 1.0 / (1.0 + np.exp(-logits)), rtol=1e-6, atol=1e-7)
    for var, old in zip(model.variables(), before):
        np.testing.assert_array_equal(var.value, old)


def test_predict_rejects_what_is_not_a_model_or_batch():
    model = build_model("lr", SPEC, scope="predict_bad")
    with pytest.raises(TypeError, match="CTRModel"):
        predict(object(), make_batch())
    with pytest.raises(TypeError, match="Batch"):
        predict(model, {"user": None})


def test_predict_docstring_example_runs():
    result = doctest.testmod(importlib.import_module("sparse_train.models.predict"))
    assert result.attempted > 0 and result.failed == 0


def test_write_predictions_one_line_a_row_in_order(tmp_path):
    from sparse_train.models import write_predictions
    model = build_model("fm", SPEC, embedding_dim=4, scope="predict_write")
    batches = [make_batch(seed=s, size=n) for s, n in ((1, 5), (2, 7))]
    rows = write_predictions(model, batches, tmp_path / "p.txt")
    lines = (tmp_path / "p.txt").read_text().splitlines()
    expected = np.concatenate([predict(model, b) for b in batches])
    assert rows == len(lines) == 12
    np.testing.assert_array_equal(np.array(lines, np.float64).astype(np.float32), expected)
