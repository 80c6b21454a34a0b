"""The public hooks ``DistributedModel`` and the scripts use: the declared
logit bias, ``embedding_collections``, ``loss_and_gradients``."""
import numpy as np
import pytest

from sparse_train import Ragged, collections
from sparse_train.autodiff import compute_gradients
from sparse_train.data import Batch, DataSpec, FeatureSpec
from sparse_train.models import MODELS, build_model
from sparse_train.nn import EmbeddingBagCollection

SPEC = DataSpec((FeatureSpec("user", 10), FeatureSpec("item", 5)), ("age",))
BATCH = Batch(np.array([1, 0], np.float32), np.array([[0.5], [1.0]], np.float32),
              {"user": Ragged.from_dense([3, 7]), "item": Ragged.from_dense([1, 1])})


@pytest.mark.parametrize("name", sorted(MODELS))
def test_logit_bias_is_the_bias_every_logit_moves_with(name):
    # d logit_b / d bias = 1 for every example: the declared variable is the
    # one added to every logit (checked through the gradient, not by name).
    model = build_model(name, SPEC, embedding_dim=4, scope=f"hook_{name}")
    bias = model.logit_bias()
    assert bias.value.size == 1
    logits = model.forward(BATCH)
    (grad,) = [g for g, v in compute_gradients(logits.sum(), [bias]) if v is bias]
    assert float(np.asarray(grad).reshape(())) == pytest.approx(BATCH.size)
    model.init_logit_bias(0.25)
    assert float(bias.value.reshape(())) == pytest.approx(np.log(0.25 / 0.75), rel=1e-6)


@pytest.mark.parametrize("name", sorted(MODELS))
def test_loss_and_gradients_match_the_loss_and_its_reverse_pass(name):
    model = build_model(name, SPEC, embedding_dim=4, scope=f"hook2_{name}")
    loss, pairs = model.loss_and_gradients(BATCH)
    assert loss == float(model.loss(BATCH).data)
    assert [v.name for _, v in pairs] == [v.name for v in model.variables()]
    tables = {id(v) for c in model.embedding_collections() for v in c.variables()}
    assert tables == {id(v) for v in model.sparse_variables()}


def test_replace_table_repoints_the_variable_collections():
    collections.reset_collections()
    ebc = EmbeddingBagCollection(SPEC, 2, "hook_replace/emb", seed=1)
    old = ebc.weight

    class Table:   # the least a replacement needs: a weight
        weight = type(old)(np.zeros((3, 2), np.float32), "hook_replace/emb/weight")
    ebc.replace_table(Table, lookup=None)
    held = collections.get_collection(collections.GLOBAL_VARIABLES)
    assert any(v is Table.weight for v in held) and not any(v is old for v in held)
    assert ebc.weight is Table.weight
    collections.reset_collections()
