"""``train_step``: one step of a model with a sparse and a dense optimizer."""
from ..autodiff import compute_gradients
from ..metrics import AUC, LogLoss

__all__ = ["train_step", "evaluate"]


def train_step(model, batch, sparse_optimizer, dense_optimizer=None, global_step=None,
               grad_transform=None):
    """Forward, backward and update; returns the batch's mean loss (float).

    The common recipe (tables on AdagradDecay, dense layers on Adam)::

        loss = model.loss(batch)
        grads = compute_gradients(loss, tables + dense)     # one reverse pass
        grads = grad_transform(grads)                       # e.g. clipping
        sparse_optimizer.apply_gradients(grads of tables)
        dense_optimizer.apply_gradients(grads of dense, global_step)

    ``global_step`` is passed only to the LAST ``apply_gradients`` call, so it
    is incremented exactly once per step, after every variable is updated;
    rules reading it (AdagradDecay) all see the step before the increment
    (SPEC §1). A group without gradients is skipped. Every group's
    gradients are validated before any variable is updated, so a bad
    gradient raises with the model unchanged. Passing the same optimizer
    twice (or ``dense_optimizer=None``) makes one ``apply_gradients`` call.

    Args:
        model: a ``CTRModel`` (``sparse_variables()``, ``dense_variables()``, ``loss``).
        batch: a ``Batch``.
        sparse_optimizer: updates ``model.sparse_variables()``.
        dense_optimizer: updates ``model.dense_variables()``; None: the
            sparse optimizer updates every variable.
        global_step: optional ``GlobalStep``.
        grad_transform: optional callable on the list of ``(grad, var)``
            returning such a list (clipping, scaling, logging).

    >>> import numpy as np
    >>> from sparse_train import GlobalStep, Ragged, optim
    >>> from sparse_train.data import Batch, DataSpec, FeatureSpec
    >>> from sparse_train.models import build_model
    >>> spec = DataSpec((FeatureSpec("user", 100), FeatureSpec("item", 50)), ("age",))
    >>> model = build_model("deepfm", spec, embedding_dim=8, hidden_units=(16,), scope="doc_step")
    >>> batch = Batch(np.array([1, 0], np.float32), np.array([[0.5], [1.0]], np.float32),
    ...               {"user": Ragged.from_dense([3, 7]), "item": Ragged.from_dense([1, 1])})
    >>> gs = GlobalStep()
    >>> tables, dense = optim.AdagradDecay(0.05, gs), optim.Adam(0.001)
    >>> first = train_step(model, batch, tables, dense, gs)
    >>> second = train_step(model, batch, tables, dense, gs)
    >>> int(gs), second < first
    (2, True)
    """
    loss = model.loss(batch)
    sparse_vars, dense_vars = model.sparse_variables(), model.dense_variables()
    grads_and_vars = compute_gradients(loss, sparse_vars + dense_vars)
    if grad_transform is not None:
        grads_and_vars = list(grad_transform(grads_and_vars))
    if dense_optimizer is None or dense_optimizer is sparse_optimizer:
        # One optimizer for everything: ONE apply_gradients call, so Adam's
        # beta powers advance once per step, not once per group.
        groups = [(sparse_optimizer, grads_and_vars)]
    else:
        sparse_ids = {id(v) for v in sparse_vars}
        groups = [(sparse_optimizer, [p for p in grads_and_vars if id(p[1]) in sparse_ids]),
                  (dense_optimizer, [p for p in grads_and_vars if id(p[1]) not in sparse_ids])]
    groups = [(opt, pairs) for opt, pairs in groups if any(g is not None for g, _ in pairs)]
    if not groups:
        raise ValueError("train_step: the loss depends on no variable of the model")
    # Validate every group before applying any: a bad dense gradient must not
    # leave the tables already updated (nothing changes before an error).
    for optimizer, _ in groups:  # AdagradDecay must read the counter this step moves
        if hasattr(optimizer, "check_global_step"):
            optimizer.check_global_step(global_step)
    prepared = [(opt, opt._prepare(pairs, global_step)) for opt, pairs in groups]
    for i, (optimizer, checked) in enumerate(prepared):
        optimizer._apply_prepared(checked, global_step if i == len(prepared) - 1 else None)
    return float(loss.data)


def evaluate(model, batches):
    """Validation figures of ``model`` over every batch, accumulated over the
    whole set (not averaged per batch): exact AUC and mean logloss.

    Returns:
        ``{"auc": float, "logloss": float, "num_examples": int}``.
    """
    auc, logloss = AUC(), LogLoss()
    for batch in batches:
        probs = model.predict(batch)
        auc.update(batch.labels, probs)
        logloss.update(batch.labels, probs)
    return {"auc": auc.result(), "logloss": logloss.result(),
            "num_examples": auc.num_examples}
