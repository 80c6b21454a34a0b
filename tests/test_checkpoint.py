"""Checkpoints: bit-identical continuation with every optimizer, mismatch
messages, corruption and truncation detection, atomic writes, the manager."""
import doctest
import json
import os
import subprocess
import sys
import textwrap
import tracemalloc
from types import SimpleNamespace

import numpy as np
import pytest

import sparse_train.checkpoint as checkpoint_module
from sparse_train import GlobalStep, RowSparseGrad, Variable, functional
from sparse_train.checkpoint import (Checkpoint, CheckpointError, CheckpointManager,
                                     CorruptCheckpointError, load_checkpoint,
                                     load_optimizer_state_dict, optimizer_state_dict)
from sparse_train.clip import clip_gradients
from sparse_train.optim import (Adagrad, AdagradDecay, Adam, GradientDescent, LazyAdam,
                                RowwiseAdagrad)

OPTIMIZERS = {
    "GradientDescent": lambda step: GradientDescent(0.1),
    "Adagrad": lambda step: Adagrad(0.1),
    # decays every 2 steps, so a restored run must carry the decay powers
    "AdagradDecay": lambda step: AdagradDecay(0.1, step, accumulator_decay_step=2,
                                              accumulator_decay_rate=0.5),
    "Adam": lambda step: Adam(0.01),
    "LazyAdam": lambda step: LazyAdam(0.01),
    "RowwiseAdagrad": lambda step: RowwiseAdagrad(0.1),
}
NUM_STEPS = 6


def build(make_optimizer, scrambled=False):
    """Two tables on ``make_optimizer``, a dense layer on Adam, a global step
    and a data RNG. ``scrambled`` objects hold other values, as a fresh
    process would before restoring."""
    init = np.random.default_rng(99 if scrambled else 0)
    step = GlobalStep(7 if scrambled else 0)
    model = SimpleNamespace(
        step=step,
        user=Variable(init.standard_normal((30, 4)), "emb/user"),
        item=Variable(init.standard_normal((20, 4)), "emb/item"),
        w=Variable(init.standard_normal((4, 3)), "dense/w"),
        b=Variable(np.zeros(3), "dense/b"),
        table_opt=make_optimizer(step),
        dense_opt=Adam(0.01, name="dense_adam"),
        rng=np.random.default_rng(5 if scrambled else 1))
    return model


def checkpoint_of(model):
    return Checkpoint([model.user, model.item, model.w, model.b],
                      [model.table_opt, model.dense_opt], model.step, rng={"data": model.rng})


def train_step(model):
    """Squared loss of a linear layer over a mean-pooled lookup; a second
    table with a hand-made duplicate-id gradient; global-norm clipping."""
    rng = model.rng
    ids = rng.integers(0, 30, 24)  # duplicates
    offsets = np.concatenate(([0], np.sort(rng.integers(0, 25, 7)), [24]))
    pooled = functional.embedding_bag(model.user, ids, offsets, combiner="mean")
    d_h = pooled @ model.w.value + model.b.value - rng.standard_normal((8, 3)).astype(np.float32)
    d_pooled = d_h @ model.w.value.T
    item_ids = rng.integers(0, 20, 10)
    item_grad = RowSparseGrad(item_ids, model.item.value[item_ids] * 0.5, (20, 4))
    pairs, _ = clip_gradients([
        (functional.embedding_bag_grad(d_pooled, ids, offsets, 30, combiner="mean"), model.user),
        (item_grad, model.item), (pooled.T @ d_h, model.w), (d_h.sum(axis=0), model.b)], 2.0)
    model.table_opt.apply_gradients(pairs[:2])
    model.dense_opt.apply_gradients(pairs[2:], global_step=model.step)


def run(model, steps):
    for _ in range(steps):
        train_step(model)
    return model


def snapshot(model):
    """Every bit of state: name -> bytes (with dtype and shape)."""
    arrays = {v.name: v.value for v in (model.user, model.item, model.w, model.b)}
    arrays.update(optimizer_state_dict(model.table_opt))
    arrays.update(optimizer_state_dict(model.dense_opt))
    arrays["global_step"] = model.step.value
    state = {k: (a.dtype.str, a.shape, a.tobytes()) for k, a in arrays.items()}
    state["rng"] = json.dumps(checkpoint_module._encode(model.rng.bit_generator.state))
    return state


@pytest.mark.parametrize("save_at", [0, 3])
@pytest.mark.parametrize("name", sorted(OPTIMIZERS))
def test_restore_then_continue_equals_uninterrupted_run(tmp_path, name, save_at):
    make = OPTIMIZERS[name]
    uninterrupted = run(build(make), NUM_STEPS)
    expected = snapshot(uninterrupted)
    path = tmp_path / "model.ckpt"
    checkpoint_of(run(build(make), save_at)).save(path)

    fresh = build(make, scrambled=True)  # no slots yet, other values
    checkpoint_of(fresh).restore(path)
    assert int(fresh.step) == save_at
    assert snapshot(run(fresh, NUM_STEPS - save_at)) == expected

    # Roll the finished run back: its slots exist (and are dropped when the
    # checkpoint predates them), and it must redo the same steps.
    checkpoint_of(uninterrupted).restore(path)
    assert snapshot(run(uninterrupted, NUM_STEPS - save_at)) == expected


def test_header_holds_config_step_rng_and_version(tmp_path):
    model = run(build(OPTIMIZERS["AdagradDecay"]), 2)
    header = load_checkpoint(checkpoint_of(model).save(tmp_path / "c.ckpt", {"epoch": 1})).header
    assert header["format_version"] == checkpoint_module.FORMAT_VERSION == 1
    assert header["global_step"] == {"name": "global_step", "value": 2}
    assert header["metadata"] == {"epoch": 1}
    assert header["variables"] == ["emb/user", "emb/item", "dense/w", "dense/b"]
    table_opt = header["optimizers"][0]
    assert table_opt["config"] == model.table_opt.get_config()
    assert ["emb/user", "accumulator_decay_power", "emb/user/AdagradDecay/accumulator_decay_power"] \
        in table_opt["slots"]
    assert header["optimizers"][1]["non_slot"] == {"beta1_power": "dense_adam/beta1_power",
                                                   "beta2_power": "dense_adam/beta2_power"}
    assert header["rng"]["data"]["bit_generator"] == "PCG64"
    assert all(a["offset"] % 64 == 0 for a in header["arrays"])


def test_wrong_shape_names_the_variable_and_both_shapes_and_changes_nothing(tmp_path):
    path = checkpoint_of(run(build(OPTIMIZERS["Adam"]), 2)).save(tmp_path / "c.ckpt")
    other = build(OPTIMIZERS["Adam"], scrambled=True)
    other.user = Variable(np.ones((30, 8)), "emb/user")
    before = snapshot(other)
    with pytest.raises(CheckpointError) as info:
        checkpoint_of(other).restore(path)
    message = str(info.value)
    assert "variable 'emb/user': shape (30, 4) in the checkpoint, (30, 8) in the model" in message
    assert "slot 'm' of variable 'emb/user' (optimizer 'Adam'): shape (30, 4)" in message
    assert not isinstance(info.value, CorruptCheckpointError)
    assert snapshot(other) == before
    assert other.table_opt.get_slot(other.item, "m") is None  # no slot created


def test_missing_extra_and_mismatched_objects(tmp_path):
    model = run(build(OPTIMIZERS["Adam"]), 1)
    path = checkpoint_of(model).save(tmp_path / "c.ckpt")
    bigger = build(OPTIMIZERS["Adam"])
    extra = Variable(np.zeros(2), "dense/extra")
    with pytest.raises(CheckpointError, match="the checkpoint has no variable 'dense/extra'"):
        Checkpoint([bigger.user, extra], [], bigger.step).restore(path, strict=False)
    with pytest.raises(CheckpointError, match="has variable 'emb/item', which was not given"):
        Checkpoint([bigger.user], [], bigger.step).restore(path)
    with pytest.raises(CheckpointError, match="optimizer 'Adam' is a LazyAdam"):
        Checkpoint([bigger.user, bigger.item], [LazyAdam(name="Adam")]).restore(path, strict=False)
    # strict=False restores a subset (e.g. the tables, for serving).
    Checkpoint([bigger.user]).restore(path, strict=False)
    assert bigger.user.value.tobytes() == model.user.value.tobytes()


def test_changed_hyperparameters_warn(tmp_path):
    model = run(build(OPTIMIZERS["Adagrad"]), 1)
    path = checkpoint_of(model).save(tmp_path / "c.ckpt")
    other = build(lambda step: Adagrad(0.05))
    with pytest.warns(UserWarning, match=r"learning_rate=0.1 in the checkpoint, 0.05 now"):
        checkpoint_of(other).restore(path)


def corrupt_byte(path, offset):
    with open(path, "r+b") as f:
        f.seek(offset)
        byte = f.read(1)
        f.seek(offset)
        f.write(bytes([byte[0] ^ 0x40]))


def array_offset(path, name):
    reader = load_checkpoint(path)
    header_len = int.from_bytes(open(path, "rb").read(16)[8:], "little")
    meta = {a["name"]: a for a in reader.header["arrays"]}[name]
    return checkpoint_module._align(16 + header_len) + meta["offset"]


def test_corrupt_array_is_detected_before_anything_changes_and_manager_falls_back(tmp_path):
    model = build(OPTIMIZERS["AdagradDecay"])
    manager = CheckpointManager(checkpoint_of(model), tmp_path / "ckpts", max_to_keep=3)
    first = manager.save()
    run(model, 2)
    second = manager.save()
    state_at_2 = snapshot(model)
    corrupt_byte(second, array_offset(second, "emb/item/AdagradDecay/accumulator") + 5)

    target = build(OPTIMIZERS["AdagradDecay"], scrambled=True)
    before = snapshot(target)
    with pytest.raises(CorruptCheckpointError,
                       match="array 'emb/item/AdagradDecay/accumulator' fails its CRC-32"):
        checkpoint_of(target).restore(second)
    assert snapshot(target) == before  # verified before mutating
    with pytest.raises(CorruptCheckpointError):
        CheckpointManager(checkpoint_of(target), tmp_path / "ckpts").restore_latest(fallback=False)
    with pytest.warns(UserWarning, match="trying an older checkpoint"):
        restored = CheckpointManager(checkpoint_of(target), tmp_path / "ckpts").restore_latest()
    assert restored == first and int(target.step) == 0
    assert snapshot(target) != state_at_2
    with pytest.raises(CorruptCheckpointError):
        load_checkpoint(second).verify()


@pytest.mark.parametrize("damage", ["truncate", "truncate_in_header", "header_byte", "append"])
def test_truncated_or_damaged_file_is_reported(tmp_path, damage):
    model = run(build(OPTIMIZERS["Adam"]), 1)
    path = checkpoint_of(model).save(tmp_path / "c.ckpt")
    size = os.path.getsize(path)
    if damage == "truncate":
        os.truncate(path, size - 100)
    elif damage == "truncate_in_header":
        os.truncate(path, 40)
    elif damage == "header_byte":
        corrupt_byte(path, 30)
    else:
        with open(path, "ab") as f:
            f.write(b"\0" * 8)
    target = build(OPTIMIZERS["Adam"], scrambled=True)
    before = snapshot(target)
    expected = "header fails its CRC" if damage == "header_byte" else "truncated or extended"
    with pytest.raises(CorruptCheckpointError, match=expected) as info:
        checkpoint_of(target).restore(path)
    assert str(path) in str(info.value)
    assert snapshot(target) == before


def test_failed_write_leaves_the_previous_file_intact(tmp_path, monkeypatch):
    model = run(build(OPTIMIZERS["Adagrad"]), 1)
    path = checkpoint_of(model).save(tmp_path / "c.ckpt")
    previous = open(path, "rb").read()
    run(model, 1)
    written = []

    def failing_write(f, array):
        if written:
            raise OSError("disk full")
        written.append(array)
        return real_write(f, array)
    real_write = checkpoint_module._write_array
    monkeypatch.setattr(checkpoint_module, "_write_array", failing_write)
    with pytest.raises(OSError, match="disk full"):
        checkpoint_of(model).save(path)
    assert open(path, "rb").read() == previous
    assert os.listdir(tmp_path) == ["c.ckpt"]  # the temporary file is gone


def test_crash_mid_write_leaves_the_previous_checkpoint_usable(tmp_path):
    """A process killed inside save (os._exit: no cleanup) leaves the old
    file and the ``latest`` pointer; the stray temporary file is ignored."""
    script = textwrap.dedent(f"""
        import os, numpy as np
        import sparse_train.checkpoint as ck
        from sparse_train import GlobalStep, Variable
        step = GlobalStep()
        manager = ck.CheckpointManager(
            ck.Checkpoint([Variable(np.arange(4.0), "w")], global_step=step), {str(tmp_path)!r})
        manager.save()
        step.increment()
        real_write = ck._write_array
        def crash(f, array):
            real_write(f, array)
            f.flush()
            os._exit(3)
        ck._write_array = crash
        manager.save()
    """)
    result = subprocess.run([sys.executable, "-c", script], capture_output=True)
    assert result.returncode == 3, result.stderr.decode()
    leftovers = [n for n in os.listdir(tmp_path) if n.endswith(".tmp")]
    assert len(leftovers) == 1  # the crash left its partial file behind
    w, step = Variable(np.zeros(4), "w"), GlobalStep(5)
    manager = CheckpointManager(Checkpoint([w], global_step=step), tmp_path)
    assert manager.latest_checkpoint == str(tmp_path / "ckpt-0.ckpt")
    assert manager.restore_latest() == manager.latest_checkpoint
    assert w.value.tolist() == [0.0, 1.0, 2.0, 3.0] and int(step) == 0


def test_manager_keeps_the_last_n_and_points_to_the_latest(tmp_path):
    model = build(OPTIMIZERS["LazyAdam"])
    manager = CheckpointManager(checkpoint_of(model), tmp_path, max_to_keep=2)
    assert manager.latest_checkpoint is None and manager.restore_latest() is None
    for _ in range(4):
        run(model, 1)
        manager.save()
    names = sorted(n for n in os.listdir(tmp_path))
    assert names == ["ckpt-3.ckpt", "ckpt-4.ckpt", "latest"]
    assert json.load(open(tmp_path / "latest")) == {"latest": "ckpt-4.ckpt",
                                                    "checkpoints": ["ckpt-3.ckpt", "ckpt-4.ckpt"]}
    assert manager.checkpoints == [str(tmp_path / "ckpt-3.ckpt"), str(tmp_path / "ckpt-4.ckpt")]
    # After a roll-back the latest save is the pointer's, not the highest number,
    # and the oldest SAVE (ckpt-3) is the one dropped.
    checkpoint_of(model).restore(manager.checkpoints[0])
    manager.save(checkpoint_number=1)
    assert manager.latest_checkpoint == str(tmp_path / "ckpt-1.ckpt")
    assert sorted(os.listdir(tmp_path)) == ["ckpt-1.ckpt", "ckpt-4.ckpt", "latest"]
    with pytest.raises(ValueError, match="max_to_keep"):
        CheckpointManager(checkpoint_of(model), tmp_path, max_to_keep=0)


def test_large_arrays_stream_without_a_second_copy(tmp_path, monkeypatch):
    monkeypatch.setattr(checkpoint_module, "CHUNK_BYTES", 1 << 20)
    table = Variable(np.random.default_rng(0).standard_normal((1 << 20, 4), np.float32), "big")
    table_bytes = table.value.nbytes  # 16 MiB
    path = tmp_path / "big.ckpt"
    tracemalloc.start()
    try:
        Checkpoint([table]).save(path)
        _, save_peak = tracemalloc.get_traced_memory()
        expected = table.value.copy()
        table.value[...] = 0.0
        tracemalloc.reset_peak()
        before, _ = tracemalloc.get_traced_memory()
        Checkpoint([table]).restore(path)
        _, restore_peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert save_peak < table_bytes / 4
    assert restore_peak - before < table_bytes / 4
    assert table.value.tobytes() == expected.tobytes()


def test_reader_and_rng_kinds(tmp_path):
    rngs = {"mt": np.random.Generator(np.random.MT19937(3)),
            "philox": np.random.Generator(np.random.Philox(4))}
    for g in rngs.values():
        g.random(5)
    w = Variable(np.arange(6).reshape(2, 3), "ints")  # int64 variables too
    path = Checkpoint([w], rng=rngs).save(tmp_path / "r.ckpt")
    reader = load_checkpoint(path)
    reader.verify()
    assert reader.get_variable_to_shape_map() == {"ints": (2, 3)}
    assert reader.get_tensor("ints").tolist() == [[0, 1, 2], [3, 4, 5]]
    expected = {k: g.random(3).tolist() for k, g in rngs.items()}
    fresh = {"mt": np.random.Generator(np.random.MT19937(0)),
             "philox": np.random.Generator(np.random.Philox(0))}
    Checkpoint([Variable(np.zeros((2, 3), np.int64), "ints")], rng=fresh).restore(path)
    assert {k: g.random(3).tolist() for k, g in fresh.items()} == expected
    with pytest.raises(CheckpointError, match="rng 'mt' is a PCG64"):
        Checkpoint([w], rng={"mt": np.random.default_rng(), "philox": fresh["philox"]}).restore(path)


def test_newer_format_version_is_refused(tmp_path, monkeypatch):
    monkeypatch.setattr(checkpoint_module, "FORMAT_VERSION", 2)
    path = Checkpoint([Variable(np.zeros(2), "w")]).save(tmp_path / "v2.ckpt")
    monkeypatch.setattr(checkpoint_module, "FORMAT_VERSION", 1)
    with pytest.raises(CheckpointError, match="format version 2"):
        load_checkpoint(path)


def test_optimizer_state_dict_round_trip():
    model = run(build(OPTIMIZERS["AdagradDecay"]), 3)
    state = {k: v.copy() for k, v in optimizer_state_dict(model.table_opt).items()}
    fresh = build(OPTIMIZERS["AdagradDecay"], scrambled=True)
    load_optimizer_state_dict(fresh.table_opt, state, [fresh.user, fresh.item])
    assert {k: v.tobytes() for k, v in optimizer_state_dict(fresh.table_opt).items()} == \
        {k: v.tobytes() for k, v in state.items()}
    state["emb/user/AdagradDecay/accumulator"] = np.zeros((30, 5), np.float32)
    with pytest.raises(CheckpointError, match=r"shape \(30, 5\) in the checkpoint, \(30, 4\)"):
        load_optimizer_state_dict(fresh.table_opt, state, [fresh.user, fresh.item])


def test_docstring_examples():
    assert doctest.testmod(checkpoint_module).failed == 0
