"""Early stopping, reduce-on-plateau learning-rate decay, and where the best
state is kept, for ``fit``.

Every evaluation (each epoch's, and every ``eval_every_steps`` steps) is
scored by one metric: validation AUC (higher is better) or logloss (lower
is better). An evaluation *improves* when it beats the best so far by more
than ``min_delta`` (AUC: ``value > best + min_delta``; logloss:
``value < best - min_delta``); a NaN never improves.

* ``EarlyStopping(patience, patience_steps=S)``: stop after ``patience``
  evaluations in a row without improvement once at least ``S`` global steps
  have passed since the best one (on a tiny data set an epoch is one step,
  and a few steps say nothing; on a large one ``patience`` epochs are far
  more than ``S`` steps and ``S`` changes nothing); the best state (all variables, optimizer slots and
  shared state, the global step) is kept when it is reached and restored at
  the end, and its figures are the run's.
* ``ReduceLROnPlateau(optimizers, factor, patience, min_lr)``: after more
  than ``patience`` evaluations in a row without improvement, every
  optimizer's rate becomes ``max(lr * factor, min_lr)`` and the count
  restarts (PyTorch's rule; ``patience=0`` decays at each evaluation that
  does not improve, as FuxiCTR does).

Both have ``state_dict()`` / ``load_state_dict()`` (JSON), saved by ``fit``
in every checkpoint's metadata, so a resumed run continues them exactly.
"""
import glob
import math
import os
import re

import numpy as np

__all__ = ["EarlyStopping", "ReduceLROnPlateau", "MemoryState", "CheckpointState",
           "METRICS"]

#: Metric name -> True when higher is better.
METRICS = {"auc": True, "logloss": False}


def _check_metric(metric):
    if metric not in METRICS:
        raise ValueError(f"metric must be one of {sorted(METRICS)}, got {metric!r}")
    return metric


def _check_min_delta(min_delta):
    value = float(min_delta)
    if not (math.isfinite(value) and value >= 0):
        raise ValueError(f"min_delta must be a finite number >= 0, got {min_delta!r}")
    return value


def _improves(metric, value, best, min_delta):
    if value is None or not math.isfinite(value):
        return False
    if best is None:
        return True
    return value > best + min_delta if METRICS[metric] else value < best - min_delta


class EarlyStopping:
    """Stop after ``patience`` evaluations in a row that do not improve
    ``metric`` by more than ``min_delta``, and at least ``patience_steps``
    global steps after the best evaluation (see the module)::

        stopped = bad_evaluations >= patience and step - best_step >= patience_steps

    Attributes (its state): ``best`` (the best value), ``best_epoch`` (the
    1-based epoch of the best evaluation), ``best_step`` (its global step),
    ``best_figures`` (that evaluation's figures), ``bad_evaluations`` (in a
    row since), ``stopped``.

    >>> stop = EarlyStopping(patience=2)
    >>> [stop.update({"auc": a}, epoch, epoch * 10) for epoch, a in enumerate([.7, .8, .79, .8], 1)]
    [True, True, False, False]
    >>> stop.stopped, stop.best_epoch, stop.best_step
    (True, 2, 20)
    >>> stop = EarlyStopping(patience=2, patience_steps=25)   # one step an epoch
    >>> for step, auc in enumerate([.7, .8] + [.79] * 30, 1):
    ...     _ = stop.update({"auc": auc}, step, step)
    ...     if stop.stopped:
    ...         break
    >>> step, stop.bad_evaluations   # the best at step 2, stopped 25 steps later
    (27, 25)
    """

    def __init__(self, patience, metric="auc", min_delta=0.0, patience_steps=0):
        if int(patience) != patience or patience < 1:
            raise ValueError(f"patience must be an integer >= 1, got {patience!r}")
        if int(patience_steps) != patience_steps or patience_steps < 0:
            raise ValueError(f"patience_steps must be an integer >= 0, got {patience_steps!r}")
        self.patience, self.metric = int(patience), _check_metric(metric)
        self.patience_steps = int(patience_steps)
        self.min_delta = _check_min_delta(min_delta)
        self.best = self.best_epoch = self.best_step = self.best_figures = None
        self.best_learning_rates = None
        self.bad_evaluations, self.stopped = 0, False

    def update(self, figures, epoch, step, learning_rates=None):
        """Score one evaluation; True if it is the new best (keep the state
        now). Sets ``stopped`` once patience runs out."""
        value = figures.get(self.metric)
        if _improves(self.metric, value, self.best, self.min_delta):
            self.best, self.best_epoch, self.best_step = float(value), int(epoch), int(step)
            self.best_figures = dict(figures)
            self.best_learning_rates = learning_rates
            self.bad_evaluations = 0
            return True
        self.bad_evaluations += 1
        since = int(step) - (self.best_step if self.best_step is not None else 0)
        self.stopped = self.bad_evaluations >= self.patience and since >= self.patience_steps
        return False

    def state_dict(self):
        return {"best": self.best, "best_epoch": self.best_epoch, "best_step": self.best_step,
                "best_figures": self.best_figures, "best_learning_rates": self.best_learning_rates,
                "bad_evaluations": self.bad_evaluations, "stopped": self.stopped,
                "metric": self.metric}

    def load_state_dict(self, state):
        if state.get("metric", self.metric) != self.metric:
            raise ValueError(f"early stopping: the checkpoint scored {state['metric']!r}, this "
                             f"run {self.metric!r}; resume with the same metric")
        self.best, self.best_epoch = state["best"], state["best_epoch"]
        self.best_step, self.best_figures = state["best_step"], state["best_figures"]
        self.best_learning_rates = state.get("best_learning_rates")
        self.bad_evaluations, self.stopped = int(state["bad_evaluations"]), bool(state["stopped"])


class ReduceLROnPlateau:
    """Multiply every optimizer's learning rate by ``factor`` (not below
    ``min_lr``) after more than ``patience`` evaluations in a row without
    improvement (see the module); the optimizers' ``learning_rate`` setter
    does it, so checkpoints hold the decayed rates.

    Args:
        optimizers: the optimizers to decay (e.g. the sparse and the dense one).
        factor: in (0, 1). patience: integer >= 0. min_lr: >= 0.
        metric: "auc" or "logloss". min_delta: >= 0.

    >>> from sparse_train.optim import Adagrad
    >>> opt = Adagrad(0.1)
    >>> plateau = ReduceLROnPlateau([opt], factor=0.5, patience=1, min_lr=0.03)
    >>> [plateau.update({"auc": a}) for a in (.7, .6, .6, .6, .6, .6)]
    [False, False, True, False, True, False]
    >>> opt.learning_rate    # 0.1 -> 0.05 -> max(0.025, 0.03)
    0.03
    """

    def __init__(self, optimizers, factor=0.1, patience=0, min_lr=0.0, metric="auc",
                 min_delta=0.0):
        self.optimizers = list(optimizers)
        factor = float(factor)
        if not 0.0 < factor < 1.0:
            raise ValueError(f"factor must be in (0, 1), got {factor!r}")
        if int(patience) != patience or patience < 0:
            raise ValueError(f"patience must be an integer >= 0, got {patience!r}")
        min_lr = float(min_lr)
        if not (math.isfinite(min_lr) and min_lr >= 0):
            raise ValueError(f"min_lr must be a finite number >= 0, got {min_lr!r}")
        self.factor, self.patience, self.min_lr = factor, int(patience), min_lr
        self.metric, self.min_delta = _check_metric(metric), _check_min_delta(min_delta)
        self.best, self.bad_evaluations = None, 0

    def learning_rates(self):
        return [opt.learning_rate for opt in self.optimizers]

    def set_learning_rates(self, rates):
        if len(rates) != len(self.optimizers):
            raise ValueError(f"expected {len(self.optimizers)} learning rates, got {rates!r}")
        for opt, rate in zip(self.optimizers, rates):
            opt.learning_rate = rate

    def update(self, figures):
        """Score one evaluation; True if it decayed the rates."""
        value = figures.get(self.metric)
        if _improves(self.metric, value, self.best, self.min_delta):
            self.best, self.bad_evaluations = float(value), 0
            return False
        self.bad_evaluations += 1
        if self.bad_evaluations <= self.patience:
            return False
        self.bad_evaluations = 0
        rates = [max(rate * self.factor, self.min_lr) for rate in self.learning_rates()]
        changed = rates != self.learning_rates()
        self.set_learning_rates(rates)
        return changed

    def state_dict(self):
        return {"best": self.best, "bad_evaluations": self.bad_evaluations,
                "learning_rates": self.learning_rates(), "metric": self.metric}

    def load_state_dict(self, state):
        """Continue a saved schedule: its best, its count and its rates."""
        self.best, self.bad_evaluations = state["best"], int(state["bad_evaluations"])
        self.set_learning_rates(state["learning_rates"])


class MemoryState:
    """The best state as an in-memory copy of every array: ``variables()``
    (a callable: the model's variables plus every optimizer's, whose slots
    exist once a step has run) and the global step. For runs without a
    checkpoint directory (nothing to resume); at CTR scale a copy of the
    tables costs what the tables cost. A dynamic table's weight (a variable
    with a ``.table`` that has ``state_dict``) is kept as the table's whole
    state (keys, rows, counts, every slot: ``table.state_dict()``) and put
    back with ``load_state_dict``; its optimizer slots (named under the
    table's name) come with it."""

    def __init__(self, variables, global_step):
        self._variables, self._global_step = variables, global_step
        self._saved = None

    def save(self, step):
        arrays, tables = [], {}
        variables = list(self._variables())
        for var in variables:
            table = _dynamic_table(var)
            if table is not None:
                tables.setdefault(id(table), (table, table.state_dict()))
        prefixes = tuple(table.name + "/" for table, _ in tables.values())
        for var in variables:
            if _dynamic_table(var) is None and not (prefixes and var.name.startswith(prefixes)):
                arrays.append((var, np.array(var.value, copy=True)))
        self._saved = (int(step), arrays, list(tables.values()))

    def restore(self, step):
        if self._saved is None or self._saved[0] != int(step):
            raise ValueError(f"no best state of step {step} in memory")
        for table, state in self._saved[2]:
            table.load_state_dict(state)
        for var, array in self._saved[1]:
            var.value[...] = array
        self._global_step.assign(self._saved[0])

    def prune(self, step):
        """Nothing to remove: one copy is held."""


def _dynamic_table(var):
    """The dynamic table owning ``var`` (its weight), or None."""
    table = getattr(var, "table", None)
    return table if table is not None and hasattr(table, "state_dict") else None


class CheckpointState:
    """The best state as a checkpoint file ``best-<step>`` in the run's
    checkpoint directory, written by ``save(path_prefix)`` and read by
    ``restore(path_prefix)`` (the caller's: ``Checkpoint.save`` /
    ``restore`` of ``prefix + ".ckpt"``, or the sharded ones). A resumed run
    finds it there; ``prune`` removes the other ``best-*`` files once a
    checkpoint names the new best (so a crash between the two never loses
    the best the last checkpoint refers to).

    Files are recognised by name (``best-<digits>`` then ``.ckpt`` or
    ``.shard-...`` / ``.manifest.json``): nothing else is touched."""

    PATTERN = re.compile(r"best-(\d+)(\.ckpt|\.shard-\d+-of-\d+\.ckpt|\.manifest\.json)")

    def __init__(self, directory, save, restore, lead=True, suffix=".ckpt"):
        self.directory, self._save, self._restore, self._lead = directory, save, restore, lead
        self.suffix = suffix  # of the file a user opens: path(step) + suffix

    def path(self, step):
        return os.path.join(self.directory, f"best-{int(step)}")

    def save(self, step):
        self._save(self.path(step))

    def restore(self, step):
        self._restore(self.path(step))

    def prune(self, step):
        if not self._lead:
            return
        for path in glob.glob(os.path.join(glob.escape(self.directory), "best-*")):
            match = self.PATTERN.fullmatch(os.path.basename(path))
            if match and int(match.group(1)) != int(step) and os.path.isfile(path) \
                    and not os.path.islink(path):
                os.remove(path)
