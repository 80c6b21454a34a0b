"""Checkpoints of real ``DynamicEmbeddingTable``s trained by real optimizers:
a full save holds the whole table (slots in its state, not as fixed-shape
slots), incremental chains restore bit-identically to a full save at the
same step, and a run restored from full + deltas continues bit for bit."""
import json
import os
import signal
import subprocess
import sys
import textwrap

import numpy as np
import pytest

import sparse_train.checkpoint as ck
from sparse_train import DynamicEmbeddingTable, GlobalStep, Variable
from sparse_train.checkpoint import Checkpoint, CheckpointManager, load_checkpoint
from sparse_train.optim import Adagrad, AdagradDecay, Adam

OPTIMIZERS = {
    "Adagrad": lambda step: Adagrad(0.1),
    "AdagradDecay": lambda step: AdagradDecay(0.1, step, accumulator_decay_step=2,
                                              accumulator_decay_rate=0.5),
    "Adam": lambda step: Adam(0.05),
}


class Model:
    """A dynamic table (admission after 2 uses, eviction after 3 idle steps)
    on ``make_optimizer``, a dense layer on Adam, a global step and the data
    RNG. ``scrambled`` holds other values, as a fresh process would."""

    def __init__(self, make_optimizer, scrambled=False):
        self.step = GlobalStep(5 if scrambled else 0)
        self.table = DynamicEmbeddingTable(4, "user", seed=11, filter_freq=2, steps_to_live=3)
        self.w = Variable(np.random.default_rng(9 if scrambled else 0).standard_normal(4), "w")
        self.table_opt = make_optimizer(self.step)
        self.dense_opt = Adam(0.01, name="dense_adam")
        self.rng = np.random.default_rng(7 if scrambled else 1)
        if scrambled:
            self.train(2)

    def checkpoint(self):
        return Checkpoint([self.table.weight, self.w], [self.table_opt, self.dense_opt],
                          self.step, rng={"data": self.rng})

    def train(self, steps):
        """Squared loss of ``lookup @ w``; the key window slides, so keys
        arrive, get admitted, go idle and are evicted at saves."""
        for _ in range(steps):
            start = int(self.step)
            keys = (self.rng.integers(start, start + 10, 14) * 7919 - 2**45).astype(np.int64)
            offsets = np.array([0, 3, 7, 10, 14])
            pooled = self.table.lookup(keys, offsets, combiner="mean", global_step=self.step)
            d_y = pooled @ self.w.value.astype(np.float32) - self.rng.standard_normal(4)
            d_y = d_y.astype(np.float32)
            d_pooled = np.outer(d_y, self.w.value).astype(np.float32)
            grad = self.table.lookup_grad(d_pooled, keys, offsets, combiner="mean")
            self.table_opt.apply_gradients([(grad, self.table.weight)])
            self.dense_opt.apply_gradients([(pooled.T @ d_y, self.w)], global_step=self.step)
        return self

    def state(self):
        """Every bit of state, keyed by name."""
        state = {k: (v.dtype.str, v.shape, v.tobytes()) for k, v in self.table.state_dict().items()}
        for opt in (self.table_opt, self.dense_opt):
            state.update({f"{opt.name}:{k}": v.value.tobytes()
                          for k, v in opt.non_slot_variables()})
        state["w"] = self.w.value.tobytes()
        state["w/slots"] = [v.value.tobytes() for _, _, v in self.dense_opt.slot_variables()]
        state["step"] = int(self.step)
        state["rng"] = json.dumps(ck._encode(self.rng.bit_generator.state))
        return state


@pytest.mark.parametrize("name", sorted(OPTIMIZERS))
def test_full_and_incremental_restores_continue_bit_for_bit(tmp_path, name):
    make = OPTIMIZERS[name]
    # uninterrupted: saves at 3 (full), 5, 7 (deltas), then 3 more steps
    reference = Model(make)
    manager = CheckpointManager(reference.checkpoint(), tmp_path / "a", incremental_every=3)
    saved = {}
    for steps in (3, 2, 2):
        reference.train(steps)
        path = manager.save()
    saved["delta"] = reference.state()
    header = load_checkpoint(path).header
    assert header["dynamic"]["user"]["kind"] == "delta" and header["chain"]["index"] == 2
    full_path = reference.checkpoint().save(tmp_path / "full-at-7.ckpt")
    reference.train(3)

    # slots of the dynamic table live in its state only
    slots = [s[0] for o in header["optimizers"] for s in o["slots"]]
    assert "user" not in slots and "w" in slots
    fields = header["dynamic"]["user"]["fields"]
    assert [f for f in fields if f.startswith("slots/")] == sorted(
        f"slots/{reference.table_opt.name}/{s}" for s in reference.table_opt.get_slot_names())

    # restore the same point from the chain and from a full save: the same bits
    from_chain, from_full = Model(make, scrambled=True), Model(make, scrambled=True)
    CheckpointManager(from_chain.checkpoint(), tmp_path / "a").restore_latest()
    from_full.checkpoint().restore(full_path)
    assert from_chain.state() == from_full.state() == saved["delta"]
    assert from_chain.train(3).state() == reference.state()


def test_a_delta_after_the_full_save_restores_into_a_fresh_model(tmp_path):
    """Train N, save full, train, save delta, train, save delta; restore
    into a fresh model (no slots yet); continue; equal to the uninterrupted run."""
    make = OPTIMIZERS["Adam"]
    run = Model(make)
    manager = CheckpointManager(run.checkpoint(), tmp_path, incremental_every=5)
    for steps in (4, 3, 2):
        run.train(steps)
        manager.save()
    kinds = [load_checkpoint(p).header["dynamic"]["user"]["kind"] for p in manager.checkpoints]
    assert kinds == ["full", "delta", "delta"]
    fresh = Model(make)  # no training, no slots: as a new process builds it
    CheckpointManager(fresh.checkpoint(), tmp_path, incremental_every=5).restore_latest()
    assert fresh.state() == run.state()
    fresh.train(3)
    reference = Model(make)  # the saves evict: do the same evictions without files
    evicted = 0
    for steps in (4, 3, 2):
        reference.train(steps)
        evicted += reference.table.evict(int(reference.step))
    reference.train(3)
    assert fresh.state() == reference.state()
    assert evicted > 0


KILLED = """
import os, signal, sys
sys.path.insert(0, {tests!r})
import sparse_train.checkpoint as ck
from test_checkpoint_dynamic import Model, OPTIMIZERS
model = Model(OPTIMIZERS["Adagrad"]).train(4)
manager = ck.CheckpointManager(model.checkpoint(), {directory!r}, incremental_every=3)
manager.save()
model.train(3)
real = ck._write_array
calls = []
def write(f, array):
    calls.append(1)
    if len(calls) == 4:        # mid-delta: some arrays written
        f.flush()
        os.kill(os.getpid(), signal.SIGKILL)
    return real(f, array)
ck._write_array = write
manager.save()
"""


def test_kill_9_during_a_delta_restores_the_full_save(tmp_path):
    script = KILLED.format(tests=os.path.dirname(__file__), directory=str(tmp_path))
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path))
    result = subprocess.run([sys.executable, "-c", textwrap.dedent(script)], env=env,
                            capture_output=True)
    assert result.returncode == -signal.SIGKILL, result.stderr.decode()
    expected = Model(OPTIMIZERS["Adagrad"]).train(4)
    expected.table.evict(4)
    target = Model(OPTIMIZERS["Adagrad"], scrambled=True)
    with pytest.warns(UserWarning, match="removed 1 temporary file"):
        manager = CheckpointManager(target.checkpoint(), tmp_path, incremental_every=3)
    assert manager.restore_latest() == str(tmp_path / "ckpt-4.ckpt")
    assert target.state() == expected.state()
