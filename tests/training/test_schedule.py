"""Early stopping, reduce-on-plateau and the kept best state, in ``fit``."""
import numpy as np
import pytest

from sparse_train import GlobalStep, Variable, optim
from sparse_train.training import EarlyStopping, MemoryState, ReduceLROnPlateau, fit

from _fakes import Batch, Data  # noqa: E402,F401


def _run(aucs, patience, epochs=10, batches=2, eval_every_steps=0, lr_schedule=None, opt=None,
         patience_steps=0):
    """fit on a weight that counts steps; each evaluation reads the next AUC."""
    gs, w = GlobalStep(), Variable(np.zeros(1, np.float32), "w")
    opt = opt or optim.GradientDescent(0.1)
    scores = iter(aucs)

    def step(batch):
        w.value += 1
        gs.increment()
        return 0.5

    def evaluate(batches):
        for _ in batches:
            pass
        return {"auc": next(scores), "logloss": 0.3, "num_examples": 4, "w": float(w.value[0])}

    stop = EarlyStopping(patience, patience_steps=patience_steps) if patience else None
    result = fit(Data(batches), Data(2), step, evaluate, gs, epochs=epochs, progress=None,
                 early_stopping=stop, best_state=MemoryState(lambda: [w], gs),
                 eval_every_steps=eval_every_steps, lr_schedule=lr_schedule)
    return result, w, gs


def test_stops_after_patience_and_restores_the_best_state_and_its_figures():
    result, w, gs = _run([0.6, 0.7, 0.69, 0.7, 0.65, 0.9], patience=3)
    assert [h["epoch"] for h in result["history"]] == [1, 2, 3, 4, 5]
    assert result["best_epoch"] == 2 and result["best_step"] == 4
    assert result["stopped_at_epoch"] == 5 and result["early_stopped"]
    assert w.value[0] == 4 and int(gs) == 4 and result["global_step"] == 4   # restored
    assert result["auc"] == 0.7 and result["w"] == 4.0                      # its figures


def test_epochs_is_a_maximum_and_the_last_best_needs_no_restore():
    result, w, gs = _run([0.6, 0.7, 0.8], patience=2, epochs=3)
    assert result["best_epoch"] == 3 and not result["early_stopped"]
    assert "stopped_at_epoch" not in result and w.value[0] == 6 and int(gs) == 6


def test_min_delta_and_logloss_direction():
    stop = EarlyStopping(2, metric="logloss", min_delta=0.01)
    assert stop.update({"logloss": 0.5}, 1, 1)
    assert not stop.update({"logloss": 0.495}, 2, 2)       # not by more than 0.01
    assert stop.update({"logloss": 0.48}, 3, 3)
    assert not stop.update({"logloss": float("nan")}, 4, 4)
    assert not stop.stopped and not stop.update({"logloss": 0.49}, 5, 5) and stop.stopped
    assert stop.best_epoch == 3
    with pytest.raises(ValueError, match="patience must be an integer >= 1"):
        EarlyStopping(0)
    with pytest.raises(ValueError, match="metric must be one of"):
        EarlyStopping(1, metric="accuracy")


def test_patience_in_steps_waits_for_both_counts():
    # 2 steps an epoch; best at epoch 2 (step 4); patience 2 evaluations alone stops at epoch 4,
    # 5 steps since the best first hold at step 9 -> the epoch ending there, epoch 5 (step 10)
    aucs = [0.6, 0.7, 0.69, 0.68, 0.67, 0.66, 0.65]
    result, w, gs = _run(aucs, patience=2, patience_steps=5)
    assert result["stopped_at_epoch"] == 5 and result["best_step"] == 4 and w.value[0] == 4
    assert _run(aucs, patience=2)[0]["stopped_at_epoch"] == 4
    # a large data set: patience 2 epochs of 2 steps each is already >= 3 steps, no change
    assert _run(aucs, patience=2, patience_steps=3)[0]["stopped_at_epoch"] == 4
    stop = EarlyStopping(1, patience_steps=3)       # no best yet: steps count from 0
    assert not stop.update({"auc": float("nan")}, 1, 2) and not stop.stopped
    assert not stop.update({"auc": float("nan")}, 2, 3) and stop.stopped
    for bad in (-1, 1.5):
        with pytest.raises(ValueError, match="patience_steps must be an integer >= 0"):
            EarlyStopping(1, patience_steps=bad)


def test_evaluations_every_n_steps_feed_early_stopping():
    # 3 batches an epoch, evaluated every 2 steps: steps 2, 3 (epoch end), 4, 6 (end, reused)
    result, w, gs = _run([0.6, 0.8, 0.7, 0.7, 0.7], patience=2, batches=3, eval_every_steps=2,
                         epochs=4)
    assert [(e["epoch"], e["step"]) for e in result["evaluations"]] == [
        (1, 2), (1, 3), (2, 4), (2, 6)]
    assert result["best_step"] == 3 and result["best_epoch"] == 1 and w.value[0] == 3
    # the stop at step 6 comes from the step's evaluation: epoch 2 is not recorded as ended
    assert [h["auc"] for h in result["history"]] == [0.8] and result["early_stopped"]


def test_plateau_decays_both_optimizers_to_the_floor_then_stays():
    a, b = optim.Adagrad(0.1), optim.Adam(0.01)
    plateau = ReduceLROnPlateau([a, b], factor=0.5, patience=1, min_lr=0.004)
    decays = [plateau.update({"auc": x}) for x in (0.7, 0.7, 0.7, 0.7, 0.7, 0.8, 0.7, 0.7)]
    assert decays == [False, False, True, False, True, False, False, True]
    assert a.learning_rate == pytest.approx(0.0125) and b.learning_rate == 0.004
    saved = plateau.state_dict()
    again = ReduceLROnPlateau([optim.Adagrad(0.1), optim.Adam(0.01)], 0.5, 1, 0.004)
    again.load_state_dict(saved)
    assert again.learning_rates() == plateau.learning_rates() and again.state_dict() == saved
    with pytest.raises(ValueError, match=r"factor must be in \(0, 1\)"):
        ReduceLROnPlateau([a], factor=1.0)


def test_restoring_the_best_state_restores_its_learning_rates():
    opt = optim.GradientDescent(1.0)
    plateau = ReduceLROnPlateau([opt], factor=0.5, patience=0)
    result, w, _ = _run([0.6, 0.7, 0.6, 0.6, 0.6], patience=3, lr_schedule=plateau, opt=opt)
    assert result["best_epoch"] == 2 and w.value[0] == 4
    assert opt.learning_rate == 1.0 and result["learning_rates"] == [1.0]


def test_learning_rate_setter_checks_like_the_constructor():
    opt = optim.Ftrl(0.1)
    opt.learning_rate = 0.05
    assert opt.get_config()["learning_rate"] == 0.05
    for bad in (0.0, -1.0, float("nan"), 1e39):
        with pytest.raises(ValueError, match="learning_rate must be"):
            opt.learning_rate = bad
    assert opt.learning_rate == 0.05
    sgd = optim.GradientDescent(0.1)
    sgd.learning_rate = 0.0                                   # allowed by its constructor too
    with pytest.raises(ValueError, match="learning_rate must be >= 0"):
        sgd.learning_rate = -0.1
