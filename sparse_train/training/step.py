"""``train_step``: one step of a model with a sparse and a dense optimizer,
the same for one process and for ``DistributedModel``."""
__all__ = ["train_step", "apply_groups"]


def train_step(model, batch, sparse_optimizer, dense_optimizer=None, global_step=None,
               grad_transform=None):
    """Forward, backward and update; returns the batch's mean loss (float).

    The common recipe (tables on AdagradDecay, dense layers on Adam)::

        loss, grads = model.loss_and_gradients(batch)      # one reverse pass
        grads = grad_transform(grads)                       # e.g. clipping
        sparse_optimizer.apply_gradients(grads of tables)
        dense_optimizer.apply_gradients(grads of dense, global_step)

    ``global_step`` is passed only to the LAST apply, so it is incremented
    exactly once per step, after every variable is updated; rules reading
    it (AdagradDecay) all see the step before the increment (SPEC §1). A
    group without gradients is skipped. Every group's gradients are
    validated before any variable is updated (``apply_groups``), so a bad
    gradient raises with the model unchanged. Passing the same optimizer
    twice (or ``dense_optimizer=None``) makes one apply.

    A ``DistributedModel`` is trained by the same function: its
    ``loss_and_gradients`` exchanges the lookups, allreduces the dense
    gradients and returns the global batch's mean loss; its clipping
    transform uses the global norm of all ranks.

    Args:
        model: a ``CTRModel`` or a ``DistributedModel``: anything with
            ``sparse_variables()`` and either ``loss_and_gradients(batch) ->
            (float, [(grad, var)])`` or ``loss(batch) -> Tensor`` and
            ``dense_variables()``.
        batch: a ``Batch``.
        sparse_optimizer: updates ``model.sparse_variables()``.
        dense_optimizer: updates every other variable; None: the sparse
            optimizer updates every variable.
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
    loss, grads_and_vars = _loss_and_gradients(model, batch)
    if grad_transform is not None:
        grads_and_vars = list(grad_transform(grads_and_vars))
    if dense_optimizer is None or dense_optimizer is sparse_optimizer:
        # One optimizer for everything: ONE apply, so Adam's beta powers
        # advance once per step, not once per group.
        groups = [(sparse_optimizer, grads_and_vars)]
    else:
        sparse_ids = {id(v) for v in model.sparse_variables()}
        groups = [(sparse_optimizer, [p for p in grads_and_vars if id(p[1]) in sparse_ids]),
                  (dense_optimizer, [p for p in grads_and_vars if id(p[1]) not in sparse_ids])]
    apply_groups(groups, global_step)
    return loss


def _loss_and_gradients(model, batch):
    """``model.loss_and_gradients(batch)``, or for a model with just a
    ``loss``: its value and the gradients of every variable, tables first."""
    if hasattr(model, "loss_and_gradients"):
        return model.loss_and_gradients(batch)
    from ..autodiff import compute_gradients
    loss = model.loss(batch)
    grads = compute_gradients(loss, model.sparse_variables() + model.dense_variables())
    return float(loss.data), grads


def apply_groups(groups, global_step=None):
    """Apply ``[(optimizer, [(grad, var)])]`` as one step: every group is
    validated (``Optimizer.prepare_gradients``) before any is applied, so a
    bad dense gradient cannot leave the tables updated; ``global_step`` is
    incremented once, by the last apply. Groups without any gradient are
    skipped; ValueError if no group has one."""
    groups = [(opt, pairs) for opt, pairs in groups if any(g is not None for g, _ in pairs)]
    if not groups:
        raise ValueError("train_step: the loss depends on no variable of the model")
    prepared = [opt.prepare_gradients(pairs, global_step) for opt, pairs in groups]
    for i, checked in enumerate(prepared):
        checked.optimizer.apply_prepared(checked, global_step if i == len(prepared) - 1 else None)
