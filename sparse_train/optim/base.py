"""The TF1-style optimizer base: validation, slots, apply, global step.

``apply_gradients`` runs in three phases so that bad input never leaves a
model half-updated: (1) check every (gradient, variable) pair and build each
gradient's summed-gradient plan; (2) create missing slots; (3) call the update
kernel of each variable, then ``_finish`` (Adam's beta powers), then increment
the global step.
"""
import math
from typing import NamedTuple

import numpy as np

from .._aligned import aligned_full
from ..kernels.checks import (NON_FINITE_BITS, first_id_out_of_range,
                              first_non_finite, max_abs_bits)
from ..kernels._jit import row_dim, table_dim
from ..kernels.coalesce import GradPlan, summed_grad_rows
from ..sparse import RowSparseGrad, identity_plan_parts
from ..variable import GlobalStep, Variable

__all__ = ["Optimizer", "Prepared", "Update"]


class Update(NamedTuple):
    """One variable's validated update: ``plan`` is its summed-gradient
    plan (``sparse.GradPlan``); ``dense`` tells that the gradient was a
    dense array (the plan then touches every row)."""
    var: Variable
    plan: GradPlan
    dense: bool


class Prepared(NamedTuple):
    """What ``Optimizer.prepare_gradients`` returns and ``apply_prepared``
    of the same optimizer consumes: the validated updates of one call, and
    the global step they are applied at (None without one; the step seeds
    the stochastic rounding of 16-bit tables)."""
    optimizer: object
    updates: tuple
    step: object = None


def check_number(name, value, low=None, high=None, low_open=False, high_open=False):
    """``value`` as a float, or ValueError("learning_rate must be > 0, got -1")."""
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a number, got {value!r}") from None
    if not math.isfinite(number):
        raise ValueError(f"{name} must be finite, got {value!r}")
    if low is not None and (number < low or (low_open and number == low)):
        raise ValueError(f"{name} must be {'>' if low_open else '>='} {low}, got {value!r}")
    if high is not None and (number > high or (high_open and number == high)):
        raise ValueError(f"{name} must be {'<' if high_open else '<='} {high}, got {value!r}")
    return number


def check_float32_positive(name, value):
    """``value`` (a positive number) as given, or ValueError if float32, in
    which the rules run, rounds it to 0 (e.g. an epsilon of 1e-50)."""
    if np.float32(value) == 0.0:
        raise ValueError(f"{name} must be > 0 in float32 (at least 1.4e-45), got {value!r}")
    return value


def kernel_dim(weight, dense):
    """The ``dim`` argument of an update kernel for the [V, D] ``weight``: a
    compile-time constant (``kernels._jit.table_dim``) for a large table's
    sparse gradient, a plain int for a dense one or a small table (dense
    layers of every width then share one compiled variant; their rows are
    contiguous anyway)."""
    return weight.shape[1] if dense else table_dim(weight.shape[1], weight.shape[0])


def row_view(array):
    """The [V, D] view of a variable or slot: ``[V, ...] -> [V, prod(...)]``;
    a scalar is one row of one value."""
    shape = array.shape
    if len(shape) == 2:  # the common case, without np.prod (called ~70 times a step)
        return array.reshape(shape)
    if not shape:
        return array.reshape(1, 1)
    width = 1
    for size in shape[1:]:
        width *= int(size)
    return array.reshape(shape[0], width)


class Optimizer:
    """Base class. Subclasses set ``_slot_specs`` and implement ``_apply``.

    ``_slot_specs`` maps a slot name to ``(kind, dtype, initial value)`` where
    kind is ``"like"`` (shape of the variable) or ``"rows"`` (one per row).
    """

    _slot_specs = {}

    def __init__(self, learning_rate, name):
        self._learning_rate = self._check_learning_rate(learning_rate)
        self._name = name
        self._slots = {}
        self._non_slot = {}

    # ----------------------------------------------------------------- state
    @property
    def name(self):
        return self._name

    @property
    def learning_rate(self):
        """The learning rate the next apply uses (float). Settable, e.g. by a
        schedule (``training.ReduceLROnPlateau``); a new value is checked as
        the constructor checks it (ValueError, nothing changed) and is what
        ``get_config()`` (hence a checkpoint) reports from then on.

        >>> from sparse_train.optim import Adagrad
        >>> opt = Adagrad(0.1)
        >>> opt.learning_rate = 0.05
        >>> opt.get_config()["learning_rate"]
        0.05
        """
        return self._learning_rate

    @learning_rate.setter
    def learning_rate(self, value):
        self._learning_rate = self._check_learning_rate(value)

    def _check_learning_rate(self, value):
        """``value`` as a float if it is a valid learning rate for this rule,
        else ValueError; subclasses with stricter rules (FTRL divides by it)
        extend it."""
        number = check_number("learning_rate", value, low=0.0)
        if number > float(np.finfo(np.float32).max):  # kernels take float32
            raise ValueError(f"learning_rate must be finite in float32, got {value!r}")
        return number

    def get_slot_names(self):
        """Names of the slots this optimizer keeps per variable, sorted (TF)."""
        return sorted(self._slot_specs)

    def get_slot(self, var, name):
        """The slot ``name`` of ``var`` (a ``Variable``), or None if it has not
        been created yet (slots are created on the first apply)."""
        if name not in self._slot_specs:
            raise ValueError(
                f"{self._name} has no slot {name!r}; its slots are {self.get_slot_names()}")
        return self._slots.get(name, {}).get(_var_name(var))

    def variables(self):
        """Every ``Variable`` holding this optimizer's state: its non-slot
        variables (e.g. Adam's beta powers) then every slot, by name."""
        return ([var for _, var in self.non_slot_variables()]
                + [var for _, _, var in self.slot_variables()])

    def get_config(self):
        """Hyperparameters, as given to the constructor (saved in checkpoints)."""
        return {"name": self._name, "learning_rate": self._learning_rate}

    def non_slot_variables(self):
        """``[(key, Variable)]`` of state shared by all variables (Adam's
        ``beta1_power`` and ``beta2_power``), by key."""
        return sorted(self._non_slot.items())

    def slot_variables(self):
        """``[(variable name, slot name, slot Variable)]`` of every slot
        created so far, by slot then variable name."""
        return [(var_name, slot, self._slots[slot][var_name])
                for slot in sorted(self._slots) for var_name in sorted(self._slots[slot])]

    def slot_shape(self, var, slot):
        """(shape, dtype) the slot ``slot`` of ``var`` has or will have."""
        if slot not in self._slot_specs:
            raise ValueError(
                f"{self._name} has no slot {slot!r}; its slots are {self.get_slot_names()}")
        kind, dtype, _ = self._slot_specs[slot]
        if kind == "like":
            shape = var.shape
        else:  # one per row of the [V, D] view (a scalar is one row)
            shape = (var.shape[0] if len(var.shape) else 1,)
        return tuple(shape), np.dtype(dtype)

    def create_slots(self, var_list):
        """Create the missing slots of each variable (normally done by the
        first ``apply_gradients``; a checkpoint restore needs them earlier)."""
        for var in var_list:
            self._create_slots(var)

    def remove_slot(self, var_name, slot):
        """Forget the slot ``slot`` of the variable named ``var_name``."""
        del self._slots[slot][var_name]

    # ----------------------------------------------------------------- apply
    def compute_gradients(self, loss, var_list=None):
        """``[(gradient, variable)]`` of ``loss`` by reverse-mode autodiff.

        ``var_list`` defaults to every trainable variable ``loss`` depends on.
        Table gradients are ``RowSparseGrad``; dense ones are arrays.
        """
        from ..autodiff import compute_gradients
        return compute_gradients(loss, var_list)

    def minimize(self, loss, var_list=None, global_step=None):
        """``compute_gradients`` then ``apply_gradients``.

        >>> from sparse_train import GlobalStep, Tensor
        >>> from sparse_train.optim import GradientDescent
        >>> w, step = Variable(np.array([3.0]), "w"), GlobalStep()
        >>> loss = (Tensor(w) * Tensor(w)).sum()          # d loss / dw = 2 w = 6
        >>> GradientDescent(0.25).minimize(loss, global_step=step)
        >>> w.value.tolist(), int(step)                   # 3 - 0.25 * 6
        ([1.5], 1)
        """
        return self.apply_gradients(self.compute_gradients(loss, var_list),
                                    global_step=global_step)

    def apply_gradients(self, grads_and_vars, global_step=None):
        """Update each variable with its gradient; then ``global_step += 1``.

        Args:
            grads_and_vars: iterable of ``(gradient, Variable)``; a gradient is
                a dense array of the variable's shape, a ``RowSparseGrad``, or
                None (skipped). Duplicate ids of a ``RowSparseGrad`` are summed
                before the update, in order of position.
            global_step: optional ``GlobalStep``, incremented once after every
                variable of this call is updated. Rules that read the step
                read it before the increment.

        Every pair is validated before anything is mutated: a bad gradient
        raises ValueError naming its variable, and no table or slot changes.
        """
        self.apply_prepared(self.prepare_gradients(grads_and_vars, global_step), global_step)

    def check_global_step(self, global_step):
        """ValueError if this optimizer cannot be stepped with ``global_step``
        (the counter the training step increments). The base class accepts
        any; ``AdagradDecay`` refuses a counter other than the one it reads.
        ``prepare_gradients`` calls it."""

    def prepare_gradients(self, grads_and_vars, global_step=None):
        """Phase 1 of ``apply_gradients``: check every (gradient, variable)
        pair and ``global_step`` (``check_global_step``) and build each
        gradient's summed-gradient plan; nothing is mutated.

        A training step with two optimizers (tables, dense layers) prepares
        both groups before applying either, so a bad dense gradient cannot
        leave the tables updated (``training.train_step``).

        Args:
            grads_and_vars: as ``apply_gradients``.
            global_step: the ``GlobalStep`` the step will increment, or None.

        Returns:
            a ``Prepared`` for ``apply_prepared`` of this optimizer.
        """
        if global_step is not None and not isinstance(global_step, GlobalStep):
            raise TypeError(f"global_step must be a GlobalStep, got {type(global_step).__name__}")
        self.check_global_step(global_step)
        pairs = list(grads_and_vars)
        updates, seen = [], set()
        for pair in pairs:
            if not isinstance(pair, (tuple, list)) or len(pair) != 2:
                raise ValueError(f"{self._name}: expected (gradient, variable) pairs, got {pair!r}")
            grad, var = pair
            if not isinstance(var, Variable):
                raise TypeError(f"{self._name}: expected a Variable, got {type(var).__name__}")
            if var.dtype != np.float32 and not var.is_half:
                raise ValueError(
                    f"{self._name} cannot update variable {var.name!r}: its dtype is "
                    f"{var.dtype}, not float32")
            if grad is None:
                continue
            if var.name in seen:
                raise ValueError(f"{self._name}: variable {var.name!r} appears twice in one apply_gradients call")
            seen.add(var.name)
            self._check_existing_slots(var)
            _check_rounding_step(var, global_step, self._name)
            updates.append(Update(var, _plan_for(grad, var), not isinstance(grad, RowSparseGrad)))
        if not updates:
            names = [p[1].name for p in pairs if isinstance(p[1], Variable)]
            raise ValueError(f"{self._name}: no gradients provided for any variable: {names}")
        return Prepared(self, tuple(updates), None if global_step is None else int(global_step))

    def apply_prepared(self, prepared, global_step=None):
        """Phases 2 and 3 of ``apply_gradients`` for the output of
        ``prepare_gradients``: create missing slots, run each variable's
        update kernel, ``_finish`` (Adam's beta powers), then increment
        ``global_step`` if given (pass it to the LAST apply of a step only).
        """
        if not isinstance(prepared, Prepared) or prepared.optimizer is not self:
            raise ValueError(f"{self._name}: apply_prepared takes what this optimizer's "
                             f"prepare_gradients returned")
        for update in prepared.updates:
            self._create_slots(update.var)
        self._rounding_step = prepared.step  # read by half_narrowing (16-bit tables)
        self._apply_updates(prepared.updates)
        self._finish()
        if global_step is not None:
            global_step.increment()

    def _check_existing_slots(self, var):
        """Slots are keyed by variable name: a slot made for another variable
        of that name (a rebuilt model, a name reused) must not be handed to
        a kernel, which would index it out of bounds."""
        for slot in self._slot_specs:
            existing = self._slots.get(slot, {}).get(var.name)
            if existing is None:
                continue
            shape, dtype = self.slot_shape(var, slot)
            if existing.shape != shape or existing.dtype != dtype:
                raise ValueError(
                    f"{self._name}: variable {var.name!r} has shape {var.shape}, but its "
                    f"slot {slot!r} has shape {existing.shape} {existing.dtype} (expected "
                    f"{shape} {dtype}): was another variable named {var.name!r} "
                    f"updated by this optimizer?")

    # --------------------------------------------------------- for subclasses
    def _create_slots(self, var):
        for slot, (kind, dtype, initial) in self._slot_specs.items():
            slots = self._slots.setdefault(slot, {})
            if var.name in slots:
                continue
            shape, _ = self.slot_shape(var, slot)
            slots[var.name] = Variable(
                aligned_full(shape, initial, dtype), f"{var.name}/{self._name}/{slot}",
                trainable=False)
            attach = getattr(var, "attach_slot", None)
            if attach is not None:  # a dynamic table's weight: its slots grow with its rows
                attach(self, slot, slots[var.name], kind, initial)

    def _slot_rows(self, slot, var):
        """The [V, D] (or [V]) array of ``var``'s slot, for a kernel."""
        value = self._slots[slot][var.name].value
        return row_view(value) if self._slot_specs[slot][0] == "like" else value

    def _apply(self, var, plan, dense):
        """Update ``var`` from its summed-gradient plan; ``dense`` tells that
        the gradient was a dense array (the plan then touches every row)."""
        raise NotImplementedError

    def _apply_updates(self, updates):
        """``_apply`` each ``Update`` (variables are independent, so a rule
        may group several in one kernel call: ``Adam``'s dense ones)."""
        self._verified_finite = (updates, set())
        for update in updates:
            self._apply(update.var, update.plan, update.dense)

    def _mark_finite(self, var):
        """Record that ``_apply`` of ``var`` tested every value it stored
        (weight and slots) and found them finite (``verified_finite``)."""
        self._verified_finite[1].add(id(var))

    def _finish(self):
        """Work after all variables of one ``apply_gradients`` call."""

    def verified_finite(self, updates):
        """ids of the variables of ``updates`` whose update kernel tested
        every value it stored (weight and slots) and found them finite:
        ``training.check_finite_state`` does not read them again. Set by
        the last ``_apply_updates`` (``_mark_finite``) if ``updates`` is
        what it applied, else none."""
        verified = getattr(self, "_verified_finite", None)
        return verified[1] if verified is not None and verified[0] is updates else frozenset()


def half_narrowing(optimizer, var):
    """The ``kernels.half.Narrowing`` of the 16-bit ``var`` for the apply
    in progress: its format and rounding, seeded by its ``rounding_seed``
    and the global step of the apply (``Prepared.step``)."""
    from ..kernels.half import BFLOAT16, FLOAT16, Narrowing
    step = getattr(optimizer, "_rounding_step", None)
    stride, offset = getattr(var, "global_rows", (1, 0))  # a shard: ``ShardedTable``
    return Narrowing(BFLOAT16 if var.storage == "bfloat16" else FLOAT16,
                     int(var.rounding == "stochastic"), int(var.rounding_seed),
                     0 if step is None else int(step), int(stride), int(offset))


def _check_rounding_step(var, global_step, name):
    """Stochastic rounding draws its bits from the global step: refuse an
    apply without one (every step would draw the same bits)."""
    if var.is_half and var.rounding == "stochastic" and global_step is None:
        raise ValueError(
            f"{name}: variable {var.name!r} is a {var.storage} table with stochastic "
            f"rounding, seeded by the global step: pass global_step to apply_gradients "
            f"(or use rounding='nearest')")


def _var_name(var):
    if isinstance(var, Variable):
        return var.name
    raise TypeError(f"expected a Variable, got {type(var).__name__}")


def _plan_for(grad, var):
    """The summed-gradient plan of ``grad`` for ``var``, after checking its
    shape, dtype and finiteness."""
    rows_of_var = row_view(var.value).shape[0]
    if isinstance(grad, RowSparseGrad):
        if grad.dense_shape != var.shape and not (
                getattr(var, "grows", False) and grad.dense_shape[1:] == var.shape[1:]
                and grad.dense_shape[0] <= var.shape[0]):  # rows of a dynamic table only grow
            raise ValueError(
                f"gradient for variable {var.name!r} has dense_shape {grad.dense_shape}, "
                f"but the variable has shape {var.shape}")
        plan = grad.plan()
        bad = first_id_out_of_range(plan.rows, rows_of_var)
        if bad >= 0:  # the kernels do not check bounds: never let one through
            raise ValueError(
                f"gradient for variable {var.name!r} has row id {plan.rows[bad]} outside "
                f"[0, {rows_of_var})")
        src_bits = max_abs_bits(plan.src.reshape(-1))
        if src_bits >= NON_FINITE_BITS:
            _check_finite(plan.src, var, "gradient source")
        coef_bits = max_abs_bits(plan.src_coef)
        if coef_bits >= NON_FINITE_BITS:
            _check_finite(plan.src_coef.reshape(-1, 1), var, "gradient coefficient")
        if not np.isfinite(plan.scale):
            raise ValueError(f"gradient for variable {var.name!r} has a non-finite scale {plan.scale}")
        _check_summed_finite(plan, var, _bits_to_float(src_bits), _bits_to_float(coef_bits))
        return plan
    dense = np.asarray(grad)
    if dense.dtype.kind not in "fiu" or dense.dtype == np.bool_:
        raise ValueError(
            f"{type(grad).__name__} is not a gradient the optimizer can apply to variable "
            f"{var.name!r} (dtype {dense.dtype}); expected a float array or RowSparseGrad")
    if dense.shape != var.shape:
        raise ValueError(
            f"gradient for variable {var.name!r} has shape {dense.shape}, but the "
            f"variable has shape {var.shape}")
    src = row_view(np.ascontiguousarray(dense, dtype=np.float32))
    _check_finite(src, var, "gradient")
    rows, starts, src_index, src_coef = identity_plan_parts(rows_of_var)
    return GradPlan(rows, starts, src_index, src_coef, src, np.float32(1.0))


def _bits_to_float(bits):
    """The float32 whose bit pattern is ``bits`` (a uint32), as a float (in
    numpy: a kernel of its own cost a compile for one conversion)."""
    return float(np.array(bits, np.uint32).view(np.float32))


#: A summed row whose bound stays below this cannot overflow float32, even
#: with the rounding of millions of additions (each at most 2**-24 relative).
_SAFE_BOUND = 0.25 * float(np.finfo(np.float32).max)


def _check_summed_finite(plan, var, src_max_abs, coef_max_abs):
    """Finite values can still sum (duplicate ids) or scale (clipping) to
    inf in float32. Bound every summed row by ``max|src| * max|coef| *
    (number of contributions) * |scale|``; only when the bound is not safe
    are the summed rows computed and scanned (never in normal training).
    The maxima come from the finiteness screen (``max_abs_bits``): no
    further pass."""
    rows, _, _, coef, src, scale = plan
    if rows.shape[0] == 0 or src.size == 0:
        return
    bound = src_max_abs * coef_max_abs * float(coef.shape[0]) * abs(float(scale))
    if bound < _SAFE_BOUND:
        return
    summed = np.empty((rows.shape[0], src.shape[1]), np.float32)
    summed_grad_rows(summed, plan, row_dim(summed.shape[1]))
    bad = first_non_finite(summed.reshape(-1))
    if bad >= 0:
        row, col = divmod(int(bad), max(summed.shape[1], 1))
        raise ValueError(
            f"non-finite gradient for variable {var.name!r}: row {rows[row]}, column {col} "
            f"sums to {summed.reshape(-1)[bad]} in float32 (finite values of duplicate ids, "
            f"times the gradient's scale {scale}, overflow)")


def _check_finite(src, var, what):
    bad = first_non_finite(src.reshape(-1))
    if bad >= 0:
        row, col = divmod(int(bad), max(src.shape[1], 1))
        raise ValueError(
            f"non-finite gradient for variable {var.name!r}: {what} "
            f"[{row}, {col}] is {src.reshape(-1)[bad]}")
