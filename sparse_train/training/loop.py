"""``fit``: the epoch loop, in one process or on MPI; ``evaluate``.

The caller supplies how to train on one batch and how to evaluate; ``fit``
owns epochs, shuffling, progress, resuming mid-epoch, step checkpoints,
``max_steps``, per-epoch validation and the result dict, so the single-
process and the distributed runs follow the same steps. It takes plain
values and callbacks; the messages name no command-line flag (the script
names its flags, e.g. through ``check_resume``'s ``flag``).
"""
import contextlib
import json
import math
import signal
import sys
import threading
import time
from pathlib import Path

import numpy as np

from ..metrics import AUC, LogLoss
from ..progress import Progress, progress_interval
from .blas import AutoBlasThreads, check_blas_threads
from .blas import blas_threads as threads_set
from .schedule import CheckpointState

__all__ = ["fit", "evaluate", "report", "resume_point", "check_resume", "Interrupted",
           "progress_interval"]


class Interrupted(KeyboardInterrupt):
    """Training stopped by Ctrl-C or SIGTERM at a step boundary.

    Attributes:
        checkpoint: the path of the checkpoint saved at that point, or None
            (no checkpoint manager).
        global_step: the step reached.
    """

    def __init__(self, global_step, checkpoint=None):
        self.global_step, self.checkpoint = global_step, checkpoint
        where = f"; saved {checkpoint}" if checkpoint else "; nothing saved"
        super().__init__(f"interrupted at global step {global_step}{where}")

    def __str__(self):
        return self.args[0]


def resume_point(metadata):
    """``fit`` keyword arguments that continue from a checkpoint's metadata
    (what ``fit`` stores: ``epoch``, ``batches_done``, ``history``)."""
    start = {"start_epoch": int(metadata["epoch"]),
             "skip_batches": int(metadata["batches_done"]),
             "history": list(metadata.get("history", [])),
             "skipped_loss": tuple(metadata.get("loss", (0.0, 0)))}
    if metadata.get("schedules"):
        start["schedules"] = metadata["schedules"]
    return start


def fit(train_data, valid_data, step, evaluate, global_step, *, epochs, seed=0,
        start_epoch=0, skip_batches=0, history=(), skipped_loss=(0.0, 0), manager=None,
        checkpoint_every=0, run=None,
        max_steps=None, say=None, progress=sys.stderr, stop_on_signals=False,
        on_epoch_end=None, eval_every_steps=0, early_stopping=None, lr_schedule=None,
        best_state=None, schedules=None, evict=None, status=None, blas_threads=None):
    """Train for at most ``epochs`` epochs; returns the result dict.

    Args:
        train_data, valid_data: ``Dataset``s; epoch e shuffles with seed
            ``seed * 1000 + e`` (the same batches on every run and rank).
        step: ``step(batch) -> float`` mean loss of one training step.
        evaluate: ``evaluate(batches) -> {"auc", "logloss", "num_examples"}``.
        global_step: the ``GlobalStep`` ``step`` increments.
        start_epoch, skip_batches, history, skipped_loss: where a resumed
            run starts (the skipped batches of ``start_epoch`` are read, not
            trained), the per-epoch figures of the epochs before it and the
            (sum, count) of the losses of the skipped batches, so the epoch's
            train loss is the uninterrupted run's (``resume_point``).
        manager: optional checkpoint manager (``save(number, metadata)``),
            saved after each epoch, every ``checkpoint_every`` steps and
            where ``max_steps`` stops, with
            ``{"epoch", "batches_done", "history", "loss"}`` to resume from.
        run: a JSON-able dict of the options that fix the batches (data,
            batch size, seed), saved in each checkpoint as ``"run"`` so a
            resume can refuse other ones (``check_resume``).
        max_steps: stop once the global step reaches it (no evaluation of
            the unfinished epoch).
        say: message printer (None: silent); progress: stream of the bar.
        stop_on_signals: on SIGINT (Ctrl-C) or SIGTERM, finish the current
            step, save a checkpoint (with ``manager``) and raise
            ``Interrupted``; a second signal stops at once. Single-process
            runs only: a save on MPI is collective, and a launcher does not
            signal every rank at the same step.
        on_epoch_end: optional ``on_epoch_end(figures, history) -> bool``,
            called after each epoch's evaluation (``figures`` of that epoch,
            ``history`` every epoch's so far) and before its checkpoint; a
            true result stops training after this epoch (early stopping
            decides here; restoring the best weights is the callback's to
            do, and the result then holds the figures it returns in
            ``figures`` if it updates them in place). The result's
            ``stopped_at_epoch`` names the epoch it stopped after.
        eval_every_steps: also evaluate every this many global steps
            (0: per epoch only); these evaluations feed ``early_stopping``
            and ``lr_schedule`` like the epochs' (listed in the result's
            ``evaluations``), an epoch ending on such a step reuses it.
        early_stopping: an ``EarlyStopping``: the epoch count becomes a
            maximum; on each new best the state is kept (``best_state``),
            and at the end the best state is restored (unless it is the
            current one) and the result holds ITS figures, ``best_epoch``
            and ``best_step``.
        lr_schedule: a ``ReduceLROnPlateau``, updated after each evaluation.
        best_state: where the best state goes (``MemoryState`` or
            ``CheckpointState``; required with ``early_stopping``).
        schedules: the saved state of both (``resume_point`` gives it), so
            a resumed run continues them; every checkpoint's metadata holds
            it as ``"schedules"``.
        evict: optional ``evict(global_step) -> int``, called before every
            checkpoint save (DeepRec evicts at each save; e.g. the model's
            ``evict``, dropping dynamic-table keys by ``steps_to_live`` /
            ``l2_weight_threshold``), so a checkpoint never holds keys due
            for eviction; the result's ``evicted_keys`` sums what it returned.
        status: optional ``status() -> str``, appended to each epoch's line
            (e.g. the dynamic tables' admitted keys).
        blas_threads: the threads of NumPy's BLAS (the dense layers'
            matmuls) during training: None leaves them as they are, an int
            sets that count, ``"auto"`` times steps at 1 and 2 threads and
            keeps the faster (``blas.AutoBlasThreads``). The count does not
            change the bits (``training.blas``); the count before ``fit``
            is restored when it returns.

    Returns:
        The last evaluation's figures (with early stopping: the best
        one's) plus ``samples_per_second`` (rows trained per second of
        training steps, from the run's second step on: the first compiles
        the kernels on a first run; a run of one step times that step),
        ``global_step``, ``history`` (per epoch), and ``planted_auc`` /
        ``skipped_lines`` when the data report them.
    """
    blas_threads = check_blas_threads(blas_threads)
    if blas_threads == "auto":
        step = AutoBlasThreads(step)
    if early_stopping is not None and best_state is None:
        raise ValueError("fit: early_stopping needs a best_state (MemoryState or "
                         "CheckpointState)")
    if int(eval_every_steps) != eval_every_steps or eval_every_steps < 0:
        raise ValueError(f"eval_every_steps must be an integer >= 0, got {eval_every_steps!r}")
    schedules = dict(schedules or {})
    if early_stopping is not None and schedules.get("early_stopping"):
        early_stopping.load_state_dict(schedules["early_stopping"])
    if lr_schedule is not None and schedules.get("lr_schedule"):
        lr_schedule.load_state_dict(schedules["lr_schedule"])
    evaluations = list(schedules.get("evaluations", []))
    last_eval = dict(schedules.get("last_evaluation") or {"step": None, "figures": None})

    def state():
        """The schedules' state, saved in each checkpoint."""
        out = {"evaluations": evaluations, "last_evaluation": last_eval}
        if early_stopping is not None:
            out["early_stopping"] = early_stopping.state_dict()
        if lr_schedule is not None:
            out["lr_schedule"] = lr_schedule.state_dict()
        return out

    def position(*args, **kwargs):
        saved = _position(*args, run=run, **kwargs)
        if early_stopping is not None or lr_schedule is not None or eval_every_steps:
            saved["schedules"] = _strict(state())
        return saved

    evicted = [0]

    def checkpoint(number, metadata):
        """Evict (``evict``), then save: the one way ``fit`` saves."""
        if evict is not None:
            evicted[0] += int(evict(int(number)))
        return manager.save(number, metadata)

    def save(number, metadata):
        checkpoint(number, metadata)
        if early_stopping is not None and early_stopping.best_step is not None:
            best_state.prune(early_stopping.best_step)

    def scored(figures, epoch):
        """Feed one evaluation to the schedules; True to stop."""
        step_now = int(global_step)
        last_eval.update(step=step_now, figures=dict(figures))
        evaluations.append({"epoch": epoch, "step": step_now, "auc": figures["auc"],
                            "logloss": figures["logloss"]})
        stop = False
        if early_stopping is not None:
            rates = lr_schedule.learning_rates() if lr_schedule is not None else None
            if early_stopping.update(figures, epoch, step_now, rates):
                best_state.save(step_now)
            stop = early_stopping.stopped
        if lr_schedule is not None and lr_schedule.update(figures):
            say(f"step {step_now}: no improvement of {lr_schedule.metric}; learning rates "
                f"now {', '.join(f'{r:.3g}' for r in lr_schedule.learning_rates())}")
        return stop

    say = say or (lambda *a: None)
    history, examples, seconds, stopped_at = list(history), 0, 0.0, None
    first = None  # (rows, seconds) of the run's first step, which compiles the kernels
    figures = None  # the evaluation of the current state, once there is one
    stopping = _SignalFlag() if stop_on_signals else contextlib.nullcontext(None)
    stopped_early = early_stopping is not None and early_stopping.stopped
    with stopping as signalled, threads_set(blas_threads):
        for epoch in range(start_epoch, epochs):
            if stopped_early:
                break
            if max_steps and int(global_step) >= max_steps:
                say(f"global step {int(global_step)} has reached max_steps {max_steps}")
                break
            bar = Progress(train_data.num_examples, f"epoch {epoch + 1}/{epochs}", unit="ex",
                           file=progress, interval=progress_interval(progress))
            loss_sum, loss_count, batches_done, stopped = 0.0, 0, 0, False
            if skip_batches:
                loss_sum, loss_count = float(skipped_loss[0]), int(skipped_loss[1])
            trained = 0
            started = time.perf_counter()
            for batch in train_data.batches(shuffle=True, seed=seed * 1000 + epoch):
                if batches_done < skip_batches:
                    batches_done += 1
                    bar.update(batch.size)
                    continue
                figures = None
                loss = step(batch)
                if not np.isfinite(loss):
                    raise ValueError(f"the loss became {loss} at step {int(global_step)}; lower "
                                     f"the learning rates or clip the gradients")
                loss_sum, loss_count = loss_sum + loss * batch.size, loss_count + batch.size
                trained += batch.size
                if first is None:  # not timed: mostly compilation on a first run
                    first = (trained, time.perf_counter() - started)
                    trained, started = 0, time.perf_counter()
                batches_done += 1
                bar.update(batch.size, loss=loss_sum / loss_count)
                if signalled is not None and signalled.is_set():
                    bar.close()
                    path = (checkpoint(int(global_step), position(
                        epoch, batches_done, history, loss_sum, loss_count))
                        if manager else None)
                    raise Interrupted(int(global_step), path)
                stopped = bool(max_steps) and int(global_step) >= max_steps
                if eval_every_steps and int(global_step) % eval_every_steps == 0:
                    mid = evaluate(_with_progress(valid_data, "evaluating", progress))
                    say(f"step {int(global_step)}: valid auc {mid['auc']:.4f}  logloss "
                        f"{mid['logloss']:.4f}")
                    stopped_early = scored(mid, epoch + 1)
                    stopped = stopped or stopped_early
                if manager and (stopped or checkpoint_every
                                and int(global_step) % checkpoint_every == 0):
                    save(int(global_step), position(epoch, batches_done, history,
                                                    loss_sum, loss_count))
                if stopped:
                    break
            seconds += time.perf_counter() - started
            examples += trained
            if not batches_done:
                raise ValueError(f"the training data has no examples: {train_data!r}")
            skip_batches = 0
            bar.close()
            if stopped:
                say(f"stopped at global step {int(global_step)} "
                    + ("(early stopping)" if stopped_early else "(max_steps)"))
                break
            reuse = last_eval["step"] == int(global_step)
            figures = (dict(last_eval["figures"]) if reuse
                       else evaluate(_with_progress(valid_data, "evaluating", progress)))
            figures.update(epoch=epoch + 1, train_loss=loss_sum / max(loss_count, 1))
            history.append(figures)
            say(f"epoch {epoch + 1}: train loss {figures['train_loss']:.4f}  valid auc "
                f"{figures['auc']:.4f}  logloss {figures['logloss']:.4f}"
                + (f"  {status()}" if status is not None else ""))
            stop = bool(on_epoch_end(figures, history)) if on_epoch_end is not None else False
            if not reuse:
                stopped_early = scored(figures, epoch + 1)
            if manager:
                save(int(global_step), position(epoch + 1, 0, history))
            if stop:
                stopped_at = epoch + 1
                say(f"stopped after epoch {stopped_at} (on_epoch_end)")
                break
            if stopped_early:
                stopped_at = epoch + 1
                steps = (f" and {early_stopping.patience_steps} steps"
                         if early_stopping.patience_steps else "")
                say(f"stopped after epoch {stopped_at}: no improvement of "
                    f"{early_stopping.metric} in {early_stopping.patience} evaluation(s){steps}")
                break
    if early_stopping is not None and early_stopping.best_step is not None:
        if early_stopping.best_step != int(global_step):
            if lr_schedule is not None and early_stopping.best_learning_rates is not None:
                lr_schedule.set_learning_rates(early_stopping.best_learning_rates)
            best_state.restore(early_stopping.best_step)
            say(f"restored the best state: epoch {early_stopping.best_epoch}, global step "
                f"{early_stopping.best_step}, {early_stopping.metric} {early_stopping.best:.4f}")
        figures = dict(early_stopping.best_figures)
    result = (dict(figures) if figures is not None
              else evaluate(_with_progress(valid_data, "evaluating", progress)))
    if not examples and first is not None:  # one step in all: time it after all
        examples, seconds = first
    result.update(samples_per_second=examples / seconds if seconds and examples else None,
                  global_step=int(global_step), history=history)
    if stopped_at is not None:
        result["stopped_at_epoch"] = stopped_at
    if early_stopping is not None and early_stopping.best_step is not None:
        result.update(best_epoch=early_stopping.best_epoch, best_step=early_stopping.best_step,
                      early_stopped=early_stopping.stopped)
        if isinstance(best_state, CheckpointState):
            result["best_checkpoint"] = (best_state.path(early_stopping.best_step)
                                         + best_state.suffix)
    if eval_every_steps:
        result["evaluations"] = evaluations
    if evict is not None:
        result["evicted_keys"] = evicted[0]
    if lr_schedule is not None:
        result["learning_rates"] = lr_schedule.learning_rates()
    result.update(_data_notes(train_data, valid_data))
    return result


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


def _data_notes(train_data, valid_data):
    """What the data report besides the figures: the planted model's AUC
    (synthetic log) and the malformed lines skipped, with the first few."""
    notes = {}
    planted = getattr(valid_data, "planted_auc", None)
    if planted is not None:
        notes["planted_auc"] = planted
    skipped = [d for d in (train_data, valid_data) if getattr(d, "skipped_lines", 0)]
    if skipped:
        notes["skipped_lines"] = sum(d.skipped_lines for d in skipped)
        notes["bad_line_examples"] = [f"{path}:{line}: {reason}" for d in skipped
                                      for path, line, reason in d.bad_line_examples]
    return notes


def _with_progress(dataset, desc, stream):
    """``dataset.batches()``, counted on a progress bar on ``stream``."""
    bar = Progress(dataset.num_examples, desc, unit="ex", file=stream,
                   interval=progress_interval(stream))
    for batch in dataset.batches():
        yield batch
        bar.update(batch.size)
    bar.close()


def _position(epoch, batches_done, history, loss_sum=0.0, loss_count=0, run=None):
    """Checkpoint metadata to resume from (``resume_point`` reads it); the
    per-epoch figures in strict JSON, NaN (an AUC of one class) as None."""
    position = {"epoch": epoch, "batches_done": batches_done, "history": _strict(history),
                "loss": [float(loss_sum), int(loss_count)]}
    if run is not None:
        position["run"] = _strict(run)
    return position


def check_resume(metadata, run, flag=lambda key: key):
    """Refuse to resume mid-epoch with options that change the batches.

    A checkpoint saved inside an epoch resumes by skipping the batches
    already trained; with another batch size, seed or data those are other
    batches, and the run would silently train on the wrong ones. At an
    epoch boundary any change is allowed (a new schedule). Raises
    ``ValueError`` naming each differing option (``flag(key)``, e.g.
    ``--batch-size``) with both values.
    """
    saved = metadata.get("run")
    if saved is None or run is None or not metadata.get("batches_done"):
        return
    run = _strict(run)
    changed = [f"{flag(k)} {run.get(k)!r} (the checkpoint's: {saved.get(k)!r})"
               for k in sorted(set(saved) | set(run)) if saved.get(k) != run.get(k)]
    if changed:
        raise ValueError(f"cannot resume inside epoch {metadata['epoch'] + 1} (after batch "
                         f"{metadata['batches_done']}) with other batches: "
                         + "; ".join(changed) + ". Resume with the checkpoint's values")


class _SignalFlag:
    """Context: SIGINT and SIGTERM set an ``Event`` instead of killing the
    process (a second one restores the default behaviour and raises at
    once); the previous handlers come back on exit. Outside the main thread
    (where Python cannot install handlers) it does nothing."""

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __enter__(self):
        self.event = threading.Event()
        self.previous = {}
        if threading.current_thread() is threading.main_thread():
            for number in self.SIGNALS:
                self.previous[number] = signal.signal(number, self._handle)
        return self.event

    def _handle(self, number, frame):
        if self.event.is_set():  # the second signal: stop now
            raise KeyboardInterrupt
        self.event.set()
        print(f"\n{signal.Signals(number).name}: stopping after this step "
              f"(again to stop at once)", file=sys.stderr, flush=True)

    def __exit__(self, *exc):
        for number, handler in self.previous.items():
            signal.signal(number, handler)
        return False


def report(result, say, metrics_out=None, where="", warn=None):
    """Print the closing lines of a run and write ``metrics_out`` (JSON).

    ``warn`` (default ``say``) prints what must be seen even when ``say``
    is silent: the skipped malformed lines, with the first few of them."""
    warn = warn or say
    if "planted_auc" in result:
        say(f"planted model's auc on the validation data: {result['planted_auc']:.4f} "
            f"(the best any model can do)")
    if result.get("skipped_lines"):
        examples = result.get("bad_line_examples", [])
        warn(f"skipped {result['skipped_lines']} malformed line(s)"
             + (f", the first {len(examples)}:" if examples else "")
             + "".join(f"\n  {line}" for line in examples))
    if not result.get("num_examples"):
        warn("the validation data has no examples: auc and logloss are undefined (NaN)")
    elif not np.isfinite(result["auc"]):
        warn("the validation data holds one class only: auc is undefined (NaN)")
    speed = result["samples_per_second"]
    say(f"validation auc {result['auc']:.4f}, logloss {result['logloss']:.4f}, "
        + (f"{speed:,.0f} samples/s{where}" if speed else "no training this run"))
    if metrics_out:
        path = Path(metrics_out)
        path.parent.mkdir(parents=True, exist_ok=True)
        # strict JSON (jq, JavaScript): an undefined figure is null, not NaN
        path.write_text(json.dumps(_strict(result), indent=2, allow_nan=False) + "\n")


def _strict(value):
    """``value`` with NaN / inf floats as None and NumPy scalars as Python's."""
    if isinstance(value, dict):
        return {k: _strict(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_strict(v) for v in value]
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value
