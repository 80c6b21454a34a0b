"""``train_step``: one step of a model with a sparse and a dense optimizer,
the same for one process and for ``DistributedModel``; the L2 penalty
(``l2_regularize``) and the check that a step left its state finite
(``check_finite_state``)."""
import contextlib

import numpy as np

from ..optim.base import row_view
from ..kernels.checks import first_non_finite
from ..kernels.coalesce import GradPlan
from ..sparse import RowSparseGrad

__all__ = ["train_step", "apply_groups", "l2_regularize", "check_finite_state",
           "NonFiniteError"]


class NonFiniteError(ValueError):
    """A training step left a NaN or infinity in a weight or an optimizer
    slot (e.g. an update overflowing float32). ``variable`` names it,
    ``global_step`` is the step reached."""

    def __init__(self, message, variable, global_step):
        super().__init__(message)
        self.variable, self.global_step = variable, global_step


def train_step(model, batch, sparse_optimizer, dense_optimizer=None, global_step=None,
               grad_transform=None, l2_embedding=0.0, l2_dense=0.0, check_finite=True):
    """Forward, backward and update; returns the batch's mean loss (float).

    The common recipe (tables on AdagradDecay, dense layers on Adam)::

        loss, grads = model.loss_and_gradients(batch)      # one reverse pass
        grads = l2_regularize(grads, ...)                   # if l2_* > 0
        grads = grad_transform(grads)                       # e.g. clipping
        sparse_optimizer.apply_gradients(grads of tables)
        dense_optimizer.apply_gradients(grads of dense, global_step)
        check_finite_state(...)                             # touched rows, slots

    A model with ``training_lookups(global_step)`` (``CTRModel``) runs its
    forward and backward in that context: its dynamic tables count, admit
    and stamp the keys of this batch at ``int(global_step)``, the step
    before its increment (DeepRec's GlobalStepEvict reads the same).

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
            returning such a list (clipping, scaling, logging); it sees the
            L2 term already added (the penalty is part of the loss).
        l2_embedding, l2_dense: >= 0, the L2 penalty on the table rows the
            step touches and on the dense kernels (``l2_regularize``).
        check_finite: after the update, raise ``NonFiniteError`` naming the
            variable or slot if a touched row of a table, its optimizer
            slots, a dense variable or an optimizer's shared state is not
            finite (``check_finite_state``). The model is then damaged: a
            caller must not save it (``fit`` does not).

    >>> import contextlib

import numpy as np
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
    l2_embedding, l2_dense = _l2_strength("l2_embedding", l2_embedding), _l2_strength(
        "l2_dense", l2_dense)
    # dynamic tables count and admit keys in this forward only (SPEC section 6)
    lookups = getattr(model, "training_lookups", None)
    with (lookups(global_step) if lookups is not None else contextlib.nullcontext()):
        loss, grads_and_vars = _loss_and_gradients(model, batch)
    if l2_embedding or l2_dense:
        grads_and_vars = l2_regularize(grads_and_vars, l2_embedding, l2_dense,
                                       model.sparse_variables())
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
    prepared = apply_groups(groups, global_step)
    if check_finite:
        check_finite_state(prepared, global_step)
    return loss


def _l2_strength(name, value):
    number = float(value)
    if not (np.isfinite(number) and number >= 0.0):
        raise ValueError(f"{name} must be a finite number >= 0, got {value!r}")
    return number


def l2_regularize(grads_and_vars, l2_embedding=0.0, l2_dense=0.0, sparse_variables=()):
    """The gradients of the loss plus an L2 penalty on the rows used and on
    the dense kernels (Keras ``kernel_regularizer``, DeepCTR's
    ``l2_reg_embedding``, FuxiCTR's ``embedding_regularizer``)::

        penalty = 0.5 * l2_embedding * sum_{r in U} ||W[r]||^2
                + 0.5 * l2_dense     * sum_{K kernel} ||K||^2
        g[r]   += l2_embedding * W[r]      for each r in U
        g_K    += l2_dense * K

    U is the set of UNIQUE rows of a table that the step's gradient touches:
    a row looked up several times in a batch is penalised once per step (its
    summed gradient gets one ``l2 * W[r]``), unlike DeepCTR/FuxiCTR, which
    penalise each looked-up embedding and so weigh frequent ids more; once
    per row is cheaper (O(U D), never O(table)) and does not depend on how
    the batch repeats an id. Under ``DistributedModel`` each shard owner
    adds the term to its own unique rows: the same U as in one process.
    Kernels are the dense variables whose name does not end in ``bias``
    (biases are not penalised, as Keras does). The terms are added in
    float32 to the summed gradients, before any ``grad_transform``
    (clipping sees the regularised gradient). A table's gradient comes back
    coalesced (rows increasing); a dense gradient of a table penalises every
    row.

    Args:
        grads_and_vars: ``[(grad, Variable)]`` (grad: array, RowSparseGrad or None).
        l2_embedding, l2_dense: >= 0 (0: that group unchanged).
        sparse_variables: the tables (``model.sparse_variables()``).

    Returns:
        a new ``[(grad, Variable)]`` list, in the same order.

    >>> from sparse_train import RowSparseGrad, Variable
    >>> table = Variable(np.array([[1.0], [2.0], [3.0]]), "t")
    >>> g = RowSparseGrad([2, 0, 2], np.ones((3, 1)), (3, 1))   # row 2 twice
    >>> (out, _), = l2_regularize([(g, table)], l2_embedding=0.5, sparse_variables=[table])
    >>> out.indices.tolist(), out.values[:, 0].tolist()   # 1 + .5 * 1, 2 + .5 * 3
    ([0, 2], [1.5, 3.5])
    """
    l2_embedding = np.float32(_l2_strength("l2_embedding", l2_embedding))
    l2_dense = np.float32(_l2_strength("l2_dense", l2_dense))
    tables = {id(v) for v in sparse_variables}
    out = []
    for grad, var in grads_and_vars:
        if grad is not None:
            if id(var) in tables:
                if l2_embedding:
                    grad = _l2_rows(grad, var, l2_embedding)
            elif l2_dense and not var.name.endswith("bias"):
                grad = (np.asarray(grad, np.float32)
                        + l2_dense * np.asarray(var.value, np.float32)).astype(np.float32)
        out.append((grad, var))
    return out


def _l2_rows(grad, var, l2):
    """``grad`` (of table ``var``) plus ``l2 * W[r]`` on each unique touched row."""
    if not isinstance(grad, RowSparseGrad):
        return (np.asarray(grad, np.float32) + l2 * var.widened()).astype(np.float32)
    coalesced = grad.coalesce()
    rows = coalesced.indices
    summed = coalesced.values.reshape(rows.shape[0], -1)
    values = summed + l2 * row_view(var.widened(rows))      # float32, [U, D]
    count = rows.shape[0]
    plan = GradPlan(np.ascontiguousarray(rows), np.arange(count + 1, dtype=np.int64),
                    np.arange(count, dtype=np.int64), np.ones(count, np.float32),
                    np.ascontiguousarray(values, np.float32), np.float32(1.0))
    return RowSparseGrad._from_plan(plan, grad.dense_shape)


def check_finite_state(prepared, global_step=None):
    """Raise ``NonFiniteError`` if an update left a NaN or infinity behind.

    Checked, for each ``Prepared`` of a step (``apply_groups``' result):
    the rows each gradient touched of its variable and of every slot of
    that variable (a dense gradient: the whole variable), then the
    optimizer's shared state (Adam's beta powers). Untouched rows are not
    read (O(touched rows), never O(table)): a finite row that an update
    did not reach stays finite (Adam's decay of every row only shrinks).
    A variable whose update kernel tested every value it stored, weight and
    slots (``optimizer.verified_finite``: Adam's dense variables) is not
    read again: those kernels flag a variable they left non-finite, and a
    flagged one is read here as any other (dense group of the main job:
    about 100 us -> 7 us a step). The message names the variable or slot and
    the global step.
    """
    step = None if global_step is None else int(global_step)
    where = f"after step {step}" if step is not None else "after the update"
    for checked in prepared:
        opt = checked.optimizer
        slots = opt.get_slot_names()
        verified = opt.verified_finite(checked.updates) if hasattr(opt, "verified_finite") \
            else ()
        for update in checked.updates:
            var = update.var
            if id(var) in verified:  # its update kernel saw every value stored
                continue
            rows = None if update.dense else update.plan.rows
            _check_rows((var.name,), var, rows, where, step)  # 16-bit rows are widened
            for slot in slots:
                slot_var = opt.get_slot(var, slot)
                if slot_var is not None:
                    _check_rows((var.name, "slot", slot, opt.name), slot_var.value, rows,
                                where, step)
        for key, var in opt.non_slot_variables():
            _check_rows((var.name, "state", key, opt.name), var.value, None, where, step)


def _checked_name(parts):
    """The name of what ``_check_rows`` read, from ``(variable,)`` or
    ``(variable, "slot" or "state", key, optimizer)`` (built only to
    report a failure)."""
    if len(parts) == 1:
        return parts[0]
    var_name, kind, key, opt_name = parts
    return f"{var_name} ({kind} {key!r} of optimizer {opt_name!r})"


def _check_rows(name_parts, array, rows, where, step):
    if getattr(array, "is_half", False):  # a 16-bit Variable: widen the rows read
        picked = array.widened(rows)
    else:
        values = np.asarray(getattr(array, "value", array))
        if values.dtype.kind in "iub":  # integer slots (decay powers): always finite
            return
        if values.ndim == 0:
            values = values.reshape(1)
        picked = values if rows is None else values[rows]
    flat = picked.reshape(-1) if (picked.dtype == np.float32 and picked.flags.c_contiguous) \
        else np.ascontiguousarray(picked, np.float32).reshape(-1)
    bad = first_non_finite(flat)
    if bad >= 0:
        width = max(int(np.prod(picked.shape[1:], dtype=np.int64)), 1)
        row = int(bad) // width
        row_id = row if rows is None else int(rows[row])
        name = _checked_name(name_parts)
        raise NonFiniteError(
            f"{where}: {name} holds {flat[bad]} (row {row_id}): the update overflowed; lower "
            f"the learning rates or clip the gradients. Nothing was saved from this step",
            name, step)


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
    skipped; ValueError if no group has one. Returns the ``Prepared`` list
    (what ``check_finite_state`` reads)."""
    groups = [(opt, pairs) for opt, pairs in groups if any(g is not None for g, _ in pairs)]
    if not groups:
        raise ValueError("train_step: the loss depends on no variable of the model")
    prepared = [opt.prepare_gradients(pairs, global_step) for opt, pairs in groups]
    for i, checked in enumerate(prepared):
        checked.optimizer.apply_prepared(checked, global_step if i == len(prepared) - 1 else None)
    return prepared
