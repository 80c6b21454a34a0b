"""Checkpoints of dynamic tables against the table protocol (state_dict,
load_state_dict, delta_state_dict, mark_saved), driven by a plain-dict
reference table: full saves, incremental chains and their fallbacks,
pruning, kill -9 between a full save and a delta. The same checks with the
real ``DynamicEmbeddingTable`` and optimizers are in test_checkpoint_dynamic.py."""
import json
import os
import signal
import subprocess
import sys
import textwrap

import numpy as np
import pytest

import sparse_train.checkpoint as ck
from sparse_train import GlobalStep, Variable
from sparse_train.checkpoint import (Checkpoint, CheckpointError, CheckpointManager,
                                     CorruptCheckpointError, apply_table_delta, load_checkpoint)

SLOT = "slots/Adagrad/accumulator"


class DictVariable(Variable):
    """A stand-in for ``DynamicVariable``: a Variable with ``.table``."""

    def __init__(self, table):
        super().__init__(np.zeros((1, table.embedding_dim), np.float32), table.name)
        self.table = table


class DictTable:
    """A dynamic table in plain Python dicts (admission after ``filter_freq``
    occurrences, eviction by ``steps_to_live``), with the checkpoint protocol
    of DYNAMIC_PROTOCOL.md. Rows are a function of the key; an update adds
    ``g`` to a row and ``g * g`` to its accumulator slot."""

    def __init__(self, name="user", dim=3, filter_freq=2, steps_to_live=None, capacity=None):
        self.name, self.embedding_dim, self.capacity = name, dim, capacity
        self.filter_freq, self.steps_to_live = filter_freq, steps_to_live
        self.rows, self.pending = {}, {}   # key -> [values, count, last_seen, accumulator]
        self.weight = DictVariable(self)
        self.mark_saved()
        self.evictions = []

    def train(self, keys, step, grad_scale):
        for key in (int(k) for k in keys):
            if key in self.rows:
                row = self.rows[key]
                row[1], row[2] = row[1] + 1, step
            else:
                count, _ = self.pending.pop(key, (0, 0))
                if count + 1 >= self.filter_freq:
                    values = np.cos(np.arange(self.embedding_dim) + key).astype(np.float32)
                    self.rows[key] = [values, count + 1, step,
                                      np.zeros(self.embedding_dim, np.float32)]
                else:
                    self.pending[key] = (count + 1, step)
                    self.pending_dirty.add(key)
                    continue
            row = self.rows[key]
            g = np.float32(grad_scale) * row[0]
            row[0] = row[0] - np.float32(0.1) * g
            row[3] = row[3] + g * g
            self.dirty.add(key)

    def evict(self, global_step):
        self.evictions.append(global_step)
        if self.steps_to_live is None:
            return 0
        old = [k for k, row in self.rows.items() if global_step - row[2] > self.steps_to_live]
        for key in old:
            del self.rows[key]
            self.tombstones.add(key)
            self.dirty.discard(key)
        return len(old)

    def _state(self, keys, pending):
        keys = sorted(keys)
        rows = [self.rows[k] for k in keys]
        pending = sorted(pending)
        d = self.embedding_dim
        return {"keys": np.array(keys, np.int64),
                "values": np.array([r[0] for r in rows], np.float32).reshape(-1, d),
                "counts": np.array([r[1] for r in rows], np.int64),
                "last_seen": np.array([r[2] for r in rows], np.int64),
                SLOT: np.array([r[3] for r in rows], np.float32).reshape(-1, d),
                "pending_keys": np.array(pending, np.int64),
                "pending_counts": np.array([self.pending[k][0] for k in pending], np.int64),
                "pending_last_seen": np.array([self.pending[k][1] for k in pending], np.int64)}

    def state_dict(self):
        return self._state(self.rows, self.pending)

    def delta_state_dict(self):
        state = self._state(self.dirty & set(self.rows), self.pending_dirty & set(self.pending))
        state["tombstones"] = np.array(sorted(self.tombstones - set(self.rows)), np.int64)
        state["pending_tombstones"] = np.array([], np.int64)
        return state

    def mark_saved(self):
        self.dirty, self.pending_dirty, self.tombstones = set(), set(), set()

    def load_state_dict(self, state):
        self.rows = {int(k): [v.copy(), int(c), int(s), a.copy()] for k, v, c, s, a in zip(
            state["keys"], state["values"], state["counts"], state["last_seen"], state[SLOT])}
        self.pending = {int(k): (int(c), int(s)) for k, c, s in zip(
            state["pending_keys"], state["pending_counts"], state["pending_last_seen"])}
        self.dirty, self.pending_dirty = set(self.rows), set(self.pending)


def as_bytes(state):
    return {k: (v.dtype.str, v.shape, v.tobytes()) for k, v in state.items()}


class Run:
    """A dynamic table, a fixed variable and a global step, trained on a
    seeded stream of keys (new ones keep arriving, old ones stop)."""

    def __init__(self, steps_to_live=3, seed=0):
        self.table = DictTable(steps_to_live=steps_to_live)
        self.dense = Variable(np.zeros(2), "dense")
        self.step = GlobalStep()
        self.rng = np.random.default_rng(seed)

    def checkpoint(self):
        return Checkpoint([self.table.weight, self.dense], global_step=self.step,
                          rng={"data": self.rng})

    def train(self, steps):
        for _ in range(steps):
            start = int(self.step)
            keys = self.rng.integers(start, start + 12, 10) * 1000003 - 2**40
            self.table.train(keys, start, self.rng.random())
            self.dense.value += 1.0
            self.step.increment()
        return self

    def state(self):
        state = as_bytes(self.table.state_dict())
        state["dense"] = self.dense.value.tobytes()
        state["step"] = int(self.step)
        return state


def fresh():
    run = Run(seed=123)
    run.table.train([5, 5, 7, 7], 0, 0.5)  # something to be replaced
    return run


# ------------------------------------------------------------ full saves
def test_full_save_holds_the_whole_table_and_restores_it(tmp_path):
    run = Run().train(6)
    path = run.checkpoint().save(tmp_path / "a.ckpt")
    assert run.table.evictions == [6]  # eviction runs at every save, at the global step
    reader = load_checkpoint(path)
    assert reader.header["dynamic"]["user"]["kind"] == "full"
    assert reader.get_tensor("user:keys").tolist() == sorted(run.table.rows)
    assert "user" not in reader.get_variable_to_shape_map()  # not the row store
    expected = run.state()
    target = fresh()
    target.checkpoint().restore(path)
    assert target.state() == expected
    assert target.train(4).state() == run.train(4).state()  # continues bit for bit


def test_a_table_that_does_not_fit_changes_nothing(tmp_path):
    run = Run().train(5)
    path = run.checkpoint().save(tmp_path / "a.ckpt")
    target = fresh()
    before = target.state()
    target.table.embedding_dim = 4
    with pytest.raises(CheckpointError, match="dynamic table 'user': embedding_dim 3 in the "
                                              "checkpoint, 4 in the model"):
        target.checkpoint().restore(path)
    target.table.embedding_dim, target.table.capacity = 3, 2
    with pytest.raises(CheckpointError, match=r"admitted keys in the checkpoint, capacity 2"):
        target.checkpoint().restore(path)
    assert target.state() == before
    fixed = Checkpoint([Variable(np.zeros((1, 3), np.float32), "user"), target.dense],
                       global_step=target.step, rng={"data": target.rng})
    with pytest.raises(CheckpointError, match="'user' is a fixed-shape array in the model, "
                                              "a dynamic table in the checkpoint"):
        fixed.restore(path)


def test_checkpoints_without_dynamic_tables_keep_their_format(tmp_path):
    path = Checkpoint([Variable(np.ones(2), "w")]).save(tmp_path / "a.ckpt")
    header = load_checkpoint(path).header
    assert "dynamic" not in header and "chain" not in header
    assert header["format_version"] == 1


def test_apply_table_delta_equals_a_brute_force_dict_merge():
    rng = np.random.default_rng(3)
    table = DictTable(filter_freq=3, steps_to_live=2)
    for step in range(12):
        before = table.state_dict()
        table.mark_saved()
        table.train(rng.integers(0, 15, 9), step, 0.3)
        table.evict(step)
        merged = apply_table_delta(before, table.delta_state_dict())
        assert as_bytes(merged) == as_bytes(table.state_dict())


# ------------------------------------------------------------ incremental
def _saves(tmp_path, every, steps, steps_between=2, max_to_keep=None, seed=0):
    """Train, saving every ``steps_between`` steps; (run, {name: state})."""
    run = Run(seed=seed)
    run.tables = {}
    manager = CheckpointManager(run.checkpoint(), tmp_path, max_to_keep=max_to_keep,
                                incremental_every=every)
    states = {}
    for _ in range(steps):
        run.train(steps_between)
        path = manager.save()
        states[os.path.basename(path)] = run.state()
        run.tables[os.path.basename(path)] = run.table.state_dict()
    return run, manager, states


def changed_keys(before, after):
    """(keys whose row, slot, count or last use differ or are new, keys
    gone) between two full states, by brute force over Python dicts."""
    def rows(state):
        fields = [f for f in state if f not in ck._KEY_FIELDS]
        return {int(k): tuple(state[f][i].tobytes() for f in sorted(fields))
                for i, k in enumerate(state["keys"])}
    old, new = rows(before), rows(after)
    return sorted(k for k in new if old.get(k) != new[k]), sorted(set(old) - set(new))


def _kinds(tmp_path, names):
    return [load_checkpoint(tmp_path / n).header["dynamic"]["user"]["kind"] for n in names]


def test_every_kth_save_is_full_and_each_point_restores_bit_for_bit(tmp_path):
    run, manager, states = _saves(tmp_path, every=3, steps=7)
    names = list(states)
    assert _kinds(tmp_path, names) == ["full", "delta", "delta"] * 2 + ["full"]
    for previous, name in zip(names, names[1:]):  # a delta holds what changed, no more
        if _kinds(tmp_path, [name]) == ["delta"]:
            changed, gone = changed_keys(run.tables[previous], run.tables[name])
            reader = load_checkpoint(tmp_path / name)
            assert reader.get_tensor("user:keys").tolist() == changed
            assert reader.get_tensor("user:tombstones").tolist() == gone
    for name, expected in states.items():  # restore = full + deltas in order
        target = fresh()
        target.checkpoint().restore(tmp_path / name)
        assert target.state() == expected, name
    header = load_checkpoint(tmp_path / names[5]).header
    assert header["chain"]["files"] == names[3:5] and header["chain"]["index"] == 2


def test_a_resumed_run_continues_the_chain_and_equals_the_uninterrupted_one(tmp_path):
    reference, _, _ = _saves(tmp_path / "a", every=3, steps=5)
    _, _, states = _saves(tmp_path / "b", every=3, steps=2)  # full, delta: then "crash"
    target = fresh()
    manager = CheckpointManager(target.checkpoint(), tmp_path / "b", incremental_every=3)
    assert manager.restore_latest() == str(tmp_path / "b" / "ckpt-4.ckpt")
    assert target.state() == states["ckpt-4.ckpt"]
    for _ in range(3):
        target.train(2)
        manager.save()
    assert _kinds(tmp_path / "b", ["ckpt-6.ckpt", "ckpt-8.ckpt", "ckpt-10.ckpt"]) == \
        ["delta", "full", "delta"]
    assert target.state() == reference.state()
    again = fresh()
    CheckpointManager(again.checkpoint(), tmp_path / "b").restore_latest()
    assert again.state() == reference.state()


def test_a_restore_elsewhere_or_an_older_point_makes_the_next_save_full(tmp_path):
    run, manager, states = _saves(tmp_path, every=5, steps=3)
    # the manager's Checkpoint is restored by someone else:
    manager.checkpoint.restore(tmp_path / "ckpt-6.ckpt")
    run.train(2)
    manager.save()
    assert _kinds(tmp_path, ["ckpt-8.ckpt"]) == ["full"]
    run.train(2)
    manager.save()
    assert _kinds(tmp_path, ["ckpt-10.ckpt"]) == ["delta"]
    # another Checkpoint of the same tables restores an older point
    run.checkpoint().restore(tmp_path / "ckpt-8.ckpt")
    run.train(4)
    manager.save()
    assert _kinds(tmp_path, ["ckpt-12.ckpt"]) == ["full"]
    target = fresh()
    CheckpointManager(target.checkpoint(), tmp_path).restore_latest()
    assert target.state() == run.state()


def _damage(path, array):
    """Flip one byte of ``array``'s data in the checkpoint at ``path``."""
    meta = {a["name"]: a for a in load_checkpoint(path).header["arrays"]}[array]
    data_start = ck._align(16 + int.from_bytes(open(path, "rb").read(16)[8:], "little"))
    with open(path, "r+b") as f:
        f.seek(data_start + meta["offset"])
        byte = f.read(1)
        f.seek(data_start + meta["offset"])
        f.write(bytes([byte[0] ^ 0xFF]))


@pytest.mark.parametrize("damage", ["corrupt", "missing", "out_of_order"])
def test_a_broken_delta_is_named_and_the_point_before_it_restored(tmp_path, damage):
    _, _, states = _saves(tmp_path, every=4, steps=4)  # full 2, deltas 4, 6, 8
    bad = tmp_path / "ckpt-6.ckpt"
    if damage == "corrupt":
        _damage(bad, "user:values")
        message = r"ckpt-6.ckpt is corrupt: array 'user:values' fails its CRC-32"
    elif damage == "missing":
        os.unlink(bad)
        message = r"ckpt-8.ckpt: the delta chain it continues is broken: ckpt-6.ckpt .* missing"
    else:
        os.replace(tmp_path / "ckpt-8.ckpt", bad)  # position 3 where 2 belongs
        message = r"ckpt-6.ckpt: out of order: expected position 2"
    target = fresh()
    before = target.state()
    manager = CheckpointManager(target.checkpoint(), tmp_path, incremental_every=4)
    if damage == "out_of_order":
        assert not (tmp_path / "ckpt-8.ckpt").exists()
    with pytest.warns(UserWarning, match=message) as caught:
        assert manager.restore_latest() == str(tmp_path / "ckpt-4.ckpt")
    assert len([w for w in caught if "trying an older" in str(w.message)]) == 1
    assert target.state() == states["ckpt-4.ckpt"]
    fallback_target = fresh()
    with pytest.raises(CorruptCheckpointError):  # without fallback: nothing changes
        CheckpointManager(fallback_target.checkpoint(), tmp_path).restore_latest(fallback=False)
    assert fallback_target.state() == before


def test_a_corrupt_full_save_falls_back_to_the_previous_chain(tmp_path):
    _, _, states = _saves(tmp_path, every=2, steps=4)  # full 2, delta 4, full 6, delta 8
    _damage(tmp_path / "ckpt-6.ckpt", "user:keys")
    target = fresh()
    with pytest.warns(UserWarning, match="ckpt-6.ckpt is corrupt"):
        assert CheckpointManager(target.checkpoint(), tmp_path).restore_latest() == \
            str(tmp_path / "ckpt-4.ckpt")
    assert target.state() == states["ckpt-4.ckpt"]


def test_pruning_keeps_the_full_save_that_kept_deltas_need(tmp_path):
    _, manager, states = _saves(tmp_path, every=3, steps=5, max_to_keep=2)
    # saves: F2 D4 D6 F8 D10: the last two are F8, D10
    assert [os.path.basename(p) for p in manager.checkpoints] == ["ckpt-8.ckpt", "ckpt-10.ckpt"]
    _, manager, states = _saves(tmp_path / "b", every=4, steps=7, max_to_keep=2)
    # F2 D4 D6 D8 F10 D12 D14: D12, D14 need F10 (and D12)
    kept = [os.path.basename(p) for p in manager.checkpoints]
    assert kept == ["ckpt-10.ckpt", "ckpt-12.ckpt", "ckpt-14.ckpt"]
    assert sorted(n for n in os.listdir(tmp_path / "b") if n.endswith(".ckpt")) == sorted(kept)
    target = fresh()
    CheckpointManager(target.checkpoint(), tmp_path / "b").restore_latest()
    assert target.state() == states["ckpt-14.ckpt"]


def test_incremental_every_is_checked(tmp_path):
    for bad in (0, 1.5, True, -2):
        with pytest.raises(ValueError, match="incremental_every must be an integer >= 1"):
            CheckpointManager(Run().checkpoint(), tmp_path, incremental_every=bad)


# ------------------------------------------------------------ kill -9
KILLED_RUN = """
import os, signal, sys
sys.path.insert(0, {tests!r})
import sparse_train.checkpoint as ck
from test_checkpoint_dynamic_protocol import Run
run = Run()
manager = ck.CheckpointManager(run.checkpoint(), {directory!r}, incremental_every=3)
manager.save()                     # the full save, at step 0
run.train(3)
def die(*args, **kwargs):
    os.kill(os.getpid(), signal.SIGKILL)
if {where!r} == "writing":         # in the middle of the delta's arrays
    real = ck._write_array
    calls = []
    def write(f, array):
        calls.append(1)
        if len(calls) == 3:
            f.flush()
            die()
        return real(f, array)
    ck._write_array = write
else:                               # the delta renamed into place, the pointer not yet
    real_atomic = ck._atomic_write
    def atomic(path, write):
        if os.path.basename(path) == "latest":
            die()
        return real_atomic(path, write)
    ck._atomic_write = atomic
manager.save()
"""


# (killed mid-write: test_checkpoint_dynamic.py, with the real table)
@pytest.mark.parametrize("where", ["before_pointer"])
def test_kill_9_between_a_full_save_and_a_delta_restores_a_consistent_point(tmp_path, where):
    script = KILLED_RUN.format(tests=os.path.dirname(__file__), directory=str(tmp_path),
                               where=where)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path))
    result = subprocess.run([sys.executable, "-c", textwrap.dedent(script)], env=env,
                            capture_output=True)
    assert result.returncode == -signal.SIGKILL, result.stderr.decode()
    expected = Run()
    expected.checkpoint().save(tmp_path / "reference.ckpt")  # evicts as the full save did
    target = fresh()
    manager = CheckpointManager(target.checkpoint(), tmp_path, incremental_every=3)
    assert manager.restore_latest() == str(tmp_path / "ckpt-0.ckpt")
    assert target.state() == expected.state()
    assert not [n for n in os.listdir(tmp_path) if n.endswith(".tmp")]
    # the next save continues the chain from the restored point, correctly
    target.train(3)
    expected.train(3)
    manager.save()
    assert _kinds(tmp_path, ["ckpt-3.ckpt"]) == ["delta"]
    expected.checkpoint().save(tmp_path / "reference.ckpt")  # evicts as the delta did
    again = fresh()
    CheckpointManager(again.checkpoint(), tmp_path).restore_latest()
    assert again.state() == target.state() == expected.state()
