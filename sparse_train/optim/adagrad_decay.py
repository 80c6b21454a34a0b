"""AdagradDecay (DeepRec ``AdagradDecayOptimizer``, V2 slot shapes)."""
import numpy as np

from ..half import storage_bits
from ..kernels.adagrad_decay_finite import FLAG_ROWS, adagrad_decay_apply_finite
from ..kernels.update_half import adagrad_decay_apply_half
from ..variable import GlobalStep
from .base import (Optimizer, check_float32_positive, check_number, half_narrowing, kernel_dim,
                   row_view)

__all__ = ["AdagradDecay"]


class AdagradDecay(Optimizer):
    """Adagrad whose accumulator decays every ``accumulator_decay_step`` steps.

    With ``step = global_step + 1`` (the 1-based number of the step being
    applied, read before ``apply_gradients`` increments it), per touched row r::

        if step // accumulator_decay_step > power[r]:
            a[r] = max(a[r] * accumulator_decay_rate, initial_accumulator_value)
            power[r] += 1
        a[r] += g * g
        w[r] -= learning_rate * g / sqrt(a[r])

    Untouched rows never decay; a row that missed k periods catches up one
    period per touch (never ``rate**k`` at once); the floor applies only when
    decaying; with ``global_step=None`` nothing decays. A dense gradient
    touches every row, so the whole variable decays together.

    Slots: ``accumulator`` [V, D] float32 (starts at
    ``initial_accumulator_value``), ``accumulator_decay_power`` [V] int64 (0).

    Args:
        learning_rate: >= 0.
        global_step: the model's ``GlobalStep`` (or None: no decay).
        initial_accumulator_value: > 0; also the floor of a decay.
        accumulator_decay_step: > 0, steps per decay period.
        accumulator_decay_rate: in (0, 1).

    Row 1 is touched twice; the 2nd call (step 2 = one period of 2) decays
    its accumulator ``max((1 + 2**2) * 0.5, 1) = 2.5`` before adding ``2**2``;
    untouched rows keep the initial value and power 0:

    >>> from sparse_train import GlobalStep, RowSparseGrad, Variable
    >>> step, w = GlobalStep(), Variable(np.zeros((3, 1)), "w")
    >>> opt = AdagradDecay(1.0, step, initial_accumulator_value=1.0,
    ...                    accumulator_decay_step=2, accumulator_decay_rate=0.5)
    >>> for _ in range(2):
    ...     opt.apply_gradients([(RowSparseGrad([1], [[2.0]], (3, 1)), w)], global_step=step)
    >>> opt.get_slot(w, "accumulator").value[:, 0].tolist()
    [1.0, 6.5, 1.0]
    >>> opt.get_slot(w, "accumulator_decay_power").value.tolist(), int(step)
    ([0, 1, 0], 2)
    >>> round(float(w.value[1, 0]), 5)  # -2/sqrt(5) - 2/sqrt(6.5)
    -1.67889
    """

    def __init__(self, learning_rate, global_step, initial_accumulator_value=0.1,
                 accumulator_decay_step=100000, accumulator_decay_rate=0.9,
                 name="AdagradDecay"):
        super().__init__(learning_rate, name)
        if global_step is not None and not isinstance(global_step, GlobalStep):
            raise TypeError(f"global_step must be a GlobalStep or None, got {type(global_step).__name__}")
        self._global_step = global_step
        self._initial = check_float32_positive(  # the rule has no epsilon
            "initial_accumulator_value",
            check_number("initial_accumulator_value", initial_accumulator_value,
                         low=0.0, low_open=True))
        step = check_number("accumulator_decay_step", accumulator_decay_step, low=0.0, low_open=True)
        if step != int(step):
            raise ValueError(f"accumulator_decay_step must be an integer, got {accumulator_decay_step!r}")
        self._decay_step = int(step)
        self._decay_rate = check_number("accumulator_decay_rate", accumulator_decay_rate,
                                        low=0.0, high=1.0, low_open=True, high_open=True)
        self._slot_specs = {
            "accumulator": ("like", np.float32, self._initial),
            "accumulator_decay_power": ("rows", np.int64, 0),
        }

    @property
    def global_step(self):
        return self._global_step

    def check_global_step(self, global_step):
        """ValueError if ``global_step`` (the counter a training step
        increments) is not the one this optimizer reads: its decay would
        then follow a counter that never moves."""
        if (global_step is not None and self._global_step is not None
                and global_step is not self._global_step):
            raise ValueError(
                f"{self._name} reads {self._global_step!r} (given to its constructor) but "
                f"apply_gradients was given another counter, {global_step!r}: pass the same "
                f"GlobalStep to both")

    def get_config(self):
        return {**super().get_config(), "initial_accumulator_value": self._initial,
                "accumulator_decay_step": self._decay_step,
                "accumulator_decay_rate": self._decay_rate}

    def _apply(self, var, plan, dense):
        step = 0 if self._global_step is None else int(self._global_step) + 1
        weight = row_view(var.value)
        scalars = (np.float32(self._learning_rate), np.float32(self._initial),
                   np.float32(self._decay_rate), np.int64(step), np.int64(self._decay_step))
        slots = (self._slot_rows("accumulator", var),
                 self._slot_rows("accumulator_decay_power", var))
        if var.is_half:
            adagrad_decay_apply_half(storage_bits(weight), *slots, plan, *scalars,
                                     half_narrowing(self, var), kernel_dim(weight, dense))
            return
        # the kernel flags a row it left non-finite: the check then need not
        # gather the touched rows again (kernels.adagrad_decay_finite)
        flags = np.empty(-(-plan.rows.shape[0] // FLAG_ROWS), np.uint32)
        adagrad_decay_apply_finite(flags, weight, *slots, plan, *scalars,
                                   kernel_dim(weight, dense))
        if not flags.any():
            self._mark_finite(var)
