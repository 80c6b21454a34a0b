"""``fit``: the epoch loop of ``scripts/train.py``, in one process or on MPI.

The caller supplies how to train on one batch and how to evaluate; ``fit``
owns epochs, shuffling, progress, resuming mid-epoch, step checkpoints,
``max_steps``, per-epoch validation and the result dict, so the single-
process and the distributed runs follow the same steps.
"""
import json
import sys
import time
from pathlib import Path

import numpy as np

from ..progress import Progress

__all__ = ["fit", "report"]


def fit(train_data, valid_data, step, evaluate, global_step, *, epochs, seed=0,
        start_epoch=0, skip_batches=0, manager=None, checkpoint_every=0, max_steps=None,
        say=None, progress=sys.stderr):
    """Train for ``epochs`` epochs; returns the result dict.

    Args:
        train_data, valid_data: ``Dataset``s; epoch e shuffles with seed
            ``seed * 1000 + e`` (the same batches on every run and rank).
        step: ``step(batch) -> float`` mean loss of one training step.
        evaluate: ``evaluate(batches) -> {"auc", "logloss", "num_examples"}``.
        global_step: the ``GlobalStep`` ``step`` increments.
        start_epoch, skip_batches: where a resumed run starts (the skipped
            batches of ``start_epoch`` are read, not trained).
        manager: optional checkpoint manager (``save(number, metadata)``),
            saved after each epoch and every ``checkpoint_every`` steps with
            ``{"epoch", "batches_done"}`` to resume from.
        max_steps: stop once the global step reaches it (no evaluation of
            the unfinished epoch).
        say: message printer (None: silent); progress: stream of the bar.

    Returns:
        The last evaluation's figures plus ``samples_per_second``,
        ``global_step``, ``history`` (per epoch), and ``planted_auc`` /
        ``skipped_lines`` when the data report them.
    """
    say = say or (lambda *a: None)
    history, examples, seconds = [], 0, 0.0
    for epoch in range(start_epoch, epochs):
        bar = Progress(train_data.num_examples, f"epoch {epoch + 1}/{epochs}", unit="ex",
                       file=progress)
        loss_sum, loss_count, batches_done, stopped = 0.0, 0, 0, False
        started = time.perf_counter()
        for batch in train_data.batches(shuffle=True, seed=seed * 1000 + epoch):
            if batches_done < skip_batches:
                batches_done += 1
                bar.update(batch.size)
                continue
            loss = step(batch)
            if not np.isfinite(loss):
                raise ValueError(f"the loss became {loss} at step {int(global_step)}; lower the "
                                 f"learning rates or set --clip-norm")
            loss_sum, loss_count = loss_sum + loss * batch.size, loss_count + batch.size
            batches_done += 1
            bar.update(batch.size, loss=loss_sum / loss_count)
            if manager and checkpoint_every and int(global_step) % checkpoint_every == 0:
                manager.save(int(global_step), {"epoch": epoch, "batches_done": batches_done})
            if max_steps and int(global_step) >= max_steps:
                stopped = True
                break
        seconds += time.perf_counter() - started
        examples += loss_count
        skip_batches = 0
        bar.close()
        if stopped:
            say(f"stopped at global step {int(global_step)} (max_steps)")
            break
        figures = evaluate(valid_data.batches())
        figures.update(epoch=epoch + 1, train_loss=loss_sum / max(loss_count, 1))
        history.append(figures)
        say(f"epoch {epoch + 1}: train loss {figures['train_loss']:.4f}  valid auc "
            f"{figures['auc']:.4f}  logloss {figures['logloss']:.4f}")
        if manager:
            manager.save(int(global_step), {"epoch": epoch + 1, "batches_done": 0})
    result = dict(history[-1]) if history else evaluate(valid_data.batches())
    result.update(samples_per_second=examples / seconds if seconds else None,
                  global_step=int(global_step), history=history)
    planted = getattr(valid_data, "planted_auc", None)
    if planted is not None:
        result["planted_auc"] = planted
    skipped = sum(getattr(d, "skipped_lines", 0) or 0 for d in (train_data, valid_data))
    if skipped:
        result["skipped_lines"] = skipped
    return result


def report(result, say, metrics_out=None, where=""):
    """Print the closing lines of a run and write ``metrics_out`` (JSON)."""
    if "planted_auc" in result:
        say(f"planted model's auc on the validation data: {result['planted_auc']:.4f} "
            f"(the best any model can do)")
    if result.get("skipped_lines"):
        say(f"skipped {result['skipped_lines']} malformed line(s)")
    speed = result["samples_per_second"]
    say(f"validation auc {result['auc']:.4f}, logloss {result['logloss']:.4f}, "
        + (f"{speed:,.0f} samples/s{where}" if speed else "no training this run"))
    if metrics_out:
        path = Path(metrics_out)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(result, indent=2, default=float) + "\n")
