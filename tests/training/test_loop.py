"""``training.fit``: the epoch loop's hooks and messages (plain values and
callbacks, no command-line flag named)."""
import math

import pytest

from sparse_train import GlobalStep
from sparse_train.training import fit

from _fakes import Batch, Data  # noqa: E402,F401


def _step(global_step, losses):
    def step(batch):
        global_step.increment()
        return losses[int(global_step) - 1]
    return step


def test_on_epoch_end_stops_after_the_epoch_it_returns_true():
    gs, seen = GlobalStep(), []
    aucs = iter([0.6, 0.7, 0.65, 0.8])

    def evaluate(batches):
        list(batches)
        return {"auc": next(aucs), "logloss": 0.5, "num_examples": 2}

    def on_epoch_end(figures, history):
        seen.append((figures["epoch"], len(history)))
        return figures["auc"] < max(h["auc"] for h in history)   # worse than the best

    result = fit(Data(3), Data(1), _step(gs, [1.0] * 12), evaluate, gs, epochs=4,
                 progress=None, on_epoch_end=on_epoch_end)
    assert seen == [(1, 1), (2, 2), (3, 3)]
    assert result["stopped_at_epoch"] == 3 and result["global_step"] == 9
    assert [h["epoch"] for h in result["history"]] == [1, 2, 3] and result["auc"] == 0.65
    # the train loss of each epoch is the mean of its batches' losses
    assert result["history"][0]["train_loss"] == 1.0


def test_without_a_stop_every_epoch_runs_and_no_stop_is_reported():
    gs = GlobalStep()
    result = fit(Data(2), Data(1), _step(gs, [0.5] * 4),
                 lambda b: {"auc": 0.5, "logloss": 0.7, "num_examples": 2}, gs, epochs=2,
                 progress=None, on_epoch_end=lambda figures, history: False)
    assert result["global_step"] == 4 and "stopped_at_epoch" not in result


def test_non_finite_loss_message_names_no_command_line_flag():
    gs = GlobalStep()
    with pytest.raises(ValueError, match="became nan at step 1") as error:
        fit(Data(2), Data(1), _step(gs, [math.nan, 1.0]),
            lambda b: {"auc": 0.5, "logloss": 0.7, "num_examples": 2}, gs, epochs=1,
            progress=None)
    assert "--" not in str(error.value) and "clip the gradients" in str(error.value)


def test_max_steps_message_names_no_command_line_flag():
    gs, said = GlobalStep(), []
    fit(Data(2), Data(1), _step(gs, [1.0] * 4),
        lambda b: {"auc": 0.5, "logloss": 0.7, "num_examples": 2}, gs, epochs=3,
        max_steps=2, progress=None, say=said.append)
    fit(Data(2), Data(1), _step(gs, [1.0] * 4),
        lambda b: {"auc": 0.5, "logloss": 0.7, "num_examples": 2}, gs, epochs=3,
        max_steps=2, progress=None, say=said.append)
    assert said and not any("--" in line for line in said)
