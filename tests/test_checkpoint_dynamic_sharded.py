"""Incremental sharded checkpoints (``DistributedCheckpointManager(
incremental_every=K)``) in one process (``SingleProcessComm``): every K-th
save full, the others deltas; each point restores to the table the run held
when it saved; a missing, out-of-order or corrupt delta is named in a warning
and the newest consistent point before it restored; a resumed run continues
the chain; pruning keeps what kept deltas need. Several ranks, and a chain of
N ranks restored onto M: tests/distributed/test_dynamic_mpi.py."""
import os
import shutil
import warnings

import numpy as np
import pytest

from sparse_train import DynamicEmbeddingTable, GlobalStep
from sparse_train.checkpoint import load_checkpoint
from sparse_train.distributed import DistributedCheckpointManager, SingleProcessComm
from sparse_train.optim import Adagrad

D = 3


class Tables:
    """What the sharded checkpoints read of a distributed model."""

    def __init__(self, table):
        self.comm, self.tables, self.table = SingleProcessComm(), {}, table

    def variables(self):
        return [self.table.weight]

    def dense_variables(self):
        return []


class Run:
    """A dynamic table (admission after 2 uses, eviction after 2 idle
    steps) trained by Adagrad on a seeded stream whose keys drift."""

    def __init__(self):
        self.step = GlobalStep()
        self.table = DynamicEmbeddingTable(D, "user", seed=3, filter_freq=2, steps_to_live=2)
        self.opt = Adagrad(0.1)
        self.dist = Tables(self.table)

    def manager(self, directory, every=3, **options):
        return DistributedCheckpointManager(self.dist, [self.opt], self.step, directory,
                                            incremental_every=every, **options)

    def train(self, steps=1):
        for _ in range(steps):
            s = int(self.step)
            rng = np.random.default_rng(s)
            keys = rng.integers(s, s + 12, 20) * 7919 - 10**12
            offsets = np.arange(0, 21, 4)
            self.table.lookup(keys, offsets, global_step=self.step)
            grad = self.table.lookup_grad(rng.standard_normal((5, D)), keys, offsets)
            self.opt.apply_gradients([(grad, self.table.weight)])
            self.step.increment()

    def state(self):
        return as_bits(self.table.state_dict())


def changed_keys(before, after):
    """(admitted keys of ``after`` whose row, slots, count or last use
    differ from ``before``'s or that are new; admitted keys of ``before``
    gone from ``after``), by brute force over the two states."""
    def rows(state):
        fields = sorted(f for f in state if f not in ("keys",) and not f.startswith("pending"))
        return {int(k): tuple(state[f][i].tobytes() for f in fields)
                for i, k in enumerate(state["keys"])}
    old, new = rows(before), rows(after)
    return (sorted(k for k, row in new.items() if old.get(k) != row),
            sorted(set(old) - set(new)))


def as_bits(state):
    return {k: (v.dtype.str, v.shape, v.tobytes()) for k, v in state.items()}


def saved_run(directory, saves, every=3, **options):
    """Train, saving after each step; {step: the table's state after its save}."""
    run, states = Run(), {}
    manager = run.manager(directory, every, **options)
    for _ in range(saves):
        run.train()
        manager.save()
        states[int(run.step)] = run.table.state_dict()
    return states


def shard(directory, step):
    return directory / f"ckpt-{step}.shard-0-of-1.ckpt"


def restored(directory, expect_warning=None, **options):
    """(a fresh run restored from ``directory``'s latest point, its manifest
    name, the manager that restored it)."""
    run = Run()
    manager = run.manager(directory, **options)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        path = manager.restore_latest()
    messages = [str(w.message) for w in caught]
    if expect_warning is None:
        assert not messages
    else:
        assert len(messages) == 1 and expect_warning in messages[0], messages
    return run, os.path.basename(path), manager


def test_every_kth_sharded_save_is_full_and_each_point_restores_bit_for_bit(tmp_path):
    states = saved_run(tmp_path, 7)
    kinds = {step: load_checkpoint(shard(tmp_path, step)).header["dynamic"]["user"]["kind"]
             for step in states}
    assert kinds == {1: "full", 2: "delta", 3: "delta", 4: "full", 5: "delta", 6: "delta",
                     7: "full"}
    reader = load_checkpoint(shard(tmp_path, 6))
    upserts, tombstones = changed_keys(states[5], states[6])
    assert tombstones and len(upserts) < len(states[6]["keys"])
    assert reader.get_tensor("user:keys").tolist() == upserts
    assert reader.get_tensor("user:tombstones").tolist() == tombstones
    for step in (5, 6):  # keep only this point: restore_latest reads the delta's chain
        directory = tmp_path / f"at{step}"
        directory.mkdir()
        for n in range(4, step + 1):
            for suffix in (".manifest.json", ".shard-0-of-1.ckpt"):
                shutil.copy(tmp_path / f"ckpt-{n}{suffix}", directory)
        run, name, _ = restored(directory)
        assert name == f"ckpt-{step}.manifest.json" and int(run.step) == step
        assert run.state() == as_bits(states[step])


@pytest.mark.parametrize("damage", ["missing", "out_of_order", "corrupt"])
def test_a_broken_sharded_delta_is_named_and_the_point_before_it_restored(tmp_path, damage):
    states = saved_run(tmp_path, 6)
    bad = shard(tmp_path, 5)
    if damage == "missing":
        bad.unlink()
    elif damage == "out_of_order":
        shutil.copy(shard(tmp_path, 2), bad)  # a delta of another chain position
    else:
        data = bytearray(bad.read_bytes())
        data[-200] ^= 0xFF  # in the last array (the table's): fails its CRC
        bad.write_bytes(bytes(data))
    run, name, _ = restored(tmp_path, expect_warning=bad.name)
    assert name == "ckpt-4.manifest.json" and int(run.step) == 4
    assert run.state() == as_bits(states[4])


def test_a_resumed_run_continues_the_sharded_chain_bit_for_bit(tmp_path):
    straight = saved_run(tmp_path / "a", 4, every=4)
    saved_run(tmp_path / "b", 2, every=4)
    run, _, manager = restored(tmp_path / "b", every=4)
    for _ in range(2):
        run.train()
        manager.save()
    header = load_checkpoint(shard(tmp_path / "b", 4)).header
    assert header["chain"]["index"] == 3  # the restored chain went on: deltas 2, 3, 4
    assert run.state() == as_bits(straight[4])
    again, _, _ = restored(tmp_path / "b")
    assert again.state() == as_bits(straight[4])


def test_pruning_keeps_the_sharded_saves_that_kept_deltas_need(tmp_path):
    saved_run(tmp_path, 3, max_to_keep=1)
    names = sorted(p.name for p in tmp_path.glob("*.manifest.json"))
    assert names == [f"ckpt-{n}.manifest.json" for n in (1, 2, 3)]
    run, name, manager = restored(tmp_path, max_to_keep=1)
    assert name == "ckpt-3.manifest.json"
    run.train()
    manager.save()  # the 4th: a full save; 1-3 go
    assert sorted(p.name for p in tmp_path.glob("ckpt-*")) == [
        "ckpt-4.manifest.json", "ckpt-4.shard-0-of-1.ckpt"]


def test_incremental_every_is_checked(tmp_path):
    for bad in (0, 1.5, True):
        with pytest.raises(ValueError, match="incremental_every must be an integer >= 1"):
            Run().manager(tmp_path, every=bad)
