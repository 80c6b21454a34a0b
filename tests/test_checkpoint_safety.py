"""Checkpoint directories as hostile data: pointer and manifest names never
reach outside the directory, crash leftovers are cleaned, a stale pointer
falls back, a distributed directory is recognised; ``DirectoryLock``."""
import json
import os
import socket
import subprocess
import sys
import textwrap

import numpy as np
import pytest

import sparse_train.checkpoint as ck
from sparse_train import GlobalStep, Variable
from sparse_train.checkpoint import (Checkpoint, CheckpointError, CheckpointManager,
                                     DirectoryLock, DirectoryLockedError)

VICTIM_TEXT = b"another run's file\n"


def _checkpoint(value=1.0, step=0):
    return Checkpoint([Variable(np.full(3, float(value)), "w")], global_step=GlobalStep(step))


def _victim(tmp_path):
    victim = tmp_path / "victim"
    victim.write_bytes(VICTIM_TEXT)
    return victim


def _write_pointer(directory, latest, checkpoints):
    (directory / "latest").write_text(json.dumps({"latest": latest, "checkpoints": checkpoints}))


@pytest.fixture
def saved(tmp_path):
    """A directory holding ckpt-1 and ckpt-2 (w = 1, then 2)."""
    directory = tmp_path / "ckpts"
    for step in (1, 2):
        CheckpointManager(_checkpoint(step, step), directory).save()
    return directory


# ------------------------------------------------- 1. names are data, not paths
@pytest.mark.parametrize("bad", ["../victim", "ABSOLUTE", "sub/ckpt-3.ckpt", "..", "ckpt-3.ckpt/"])
def test_a_pointer_naming_a_path_is_refused_and_the_victim_untouched(tmp_path, saved, bad):
    victim = _victim(tmp_path)
    bad = str(victim) if bad == "ABSOLUTE" else bad
    # max_to_keep=1: the next save would prune the pointer's older entries
    _write_pointer(saved, "ckpt-2.ckpt", [bad, "ckpt-2.ckpt"])
    manager = CheckpointManager(_checkpoint(), saved, max_to_keep=1)
    with pytest.raises(CheckpointError, match=r"latest names .* not a checkpoint file name"):
        manager.save(checkpoint_number=3)
    with pytest.raises(CheckpointError, match="refused"):
        manager.restore_latest()
    _write_pointer(saved, bad, ["ckpt-2.ckpt"])
    with pytest.raises(CheckpointError, match="refused"):
        manager.latest_checkpoint
    assert victim.read_bytes() == VICTIM_TEXT


def test_a_symlink_out_of_the_directory_is_not_read(tmp_path, saved):
    outside = tmp_path / "outside.ckpt"
    _checkpoint(9.0, 9).save(outside)  # a valid checkpoint, but not this directory's
    os.symlink(outside, saved / "ckpt-5.ckpt")
    _write_pointer(saved, "ckpt-5.ckpt", ["ckpt-2.ckpt", "ckpt-5.ckpt"])
    target = _checkpoint(0.0)
    with pytest.raises(CheckpointError, match="symlink leading out of the checkpoint directory"):
        CheckpointManager(target, saved).restore_latest()
    assert target.variables["w"].value.tolist() == [0.0, 0.0, 0.0]


def test_pruning_deletes_only_its_own_files(tmp_path, saved):
    victim = _victim(tmp_path)
    os.symlink(victim, saved / "ckpt-0.ckpt")           # a link: only the link goes
    (saved / "ckpt-1.ckpt").write_bytes(VICTIM_TEXT)     # not a checkpoint: kept
    _write_pointer(saved, "ckpt-2.ckpt", ["ckpt-0.ckpt", "ckpt-1.ckpt", "ckpt-2.ckpt"])
    with pytest.warns(UserWarning, match="ckpt-1.ckpt is not a checkpoint file"):
        CheckpointManager(_checkpoint(), saved, max_to_keep=1).save(checkpoint_number=3)
    assert victim.read_bytes() == VICTIM_TEXT
    assert not os.path.lexists(saved / "ckpt-0.ckpt")
    assert (saved / "ckpt-1.ckpt").read_bytes() == VICTIM_TEXT
    assert not (saved / "ckpt-2.ckpt").exists() and (saved / "ckpt-3.ckpt").exists()


# ------------------------------------------------- 3. no leftovers after a crash
def _dead_pid():
    process = subprocess.Popen([sys.executable, "-c", "pass"])
    process.wait()
    return process.pid


def test_temporaries_of_a_dead_save_are_removed_and_only_those(saved):
    host = ck._HOST
    ours = [".ckpt-9.ckpt.abcdefgh.tmp",                      # an older version's name
            f".ckpt-9.ckpt.{host}.{_dead_pid()}.k2j4h5g6.tmp",  # this host, process gone
            f".latest.{host}.{_dead_pid()}.zz9_aa12.tmp"]
    kept = [f".ckpt-9.ckpt.{host}.{os.getpid()}.abcdefgh.tmp",  # a live save
            f".ckpt-9.ckpt.otherhost.{_dead_pid()}.abcdefgh.tmp",  # another host, recent
            ".notes.txt.abcdefgh.tmp", ".other-9.ckpt.abcdefgh.tmp", "ckpt-9.ckpt.tmp"]
    for name in ours + kept:
        (saved / name).write_bytes(b"partial")
    with pytest.warns(UserWarning, match="removed 3 temporary file"):
        manager = CheckpointManager(_checkpoint(), saved)
    assert sorted(p.name for p in saved.iterdir()) == sorted(
        kept + ["ckpt-1.ckpt", "ckpt-2.ckpt", "latest"])
    assert manager.latest_checkpoint == str(saved / "ckpt-2.ckpt")


def test_a_save_killed_mid_write_leaves_nothing_for_the_next_manager(saved):
    script = textwrap.dedent(f"""
        import os, signal
        import numpy as np
        import sparse_train.checkpoint as ck
        from sparse_train import GlobalStep, Variable
        def die(fd):
            os.kill(os.getpid(), signal.SIGKILL)
        ck.os.fsync = die  # killed after writing the temporary file, before the rename
        step = GlobalStep(3)
        ck.CheckpointManager(ck.Checkpoint([Variable(np.zeros(3), "w")], global_step=step),
                             {str(saved)!r}).save()
    """)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path))
    result = subprocess.run([sys.executable, "-c", script], env=env)
    assert result.returncode == -9
    assert any(name.endswith(".tmp") for name in os.listdir(saved))
    with pytest.warns(UserWarning, match="removed 1 temporary file"):
        manager = CheckpointManager(_checkpoint(0.0), saved)
    assert not any(name.endswith(".tmp") for name in os.listdir(saved))
    assert manager.restore_latest() == str(saved / "ckpt-2.ckpt")


# ------------------------------------------------- 8. resuming the wrong thing
def test_a_pointer_naming_only_missing_files_falls_back_to_the_newest(saved):
    _write_pointer(saved, "ckpt-7.ckpt", ["ckpt-6.ckpt", "ckpt-7.ckpt"])
    target = _checkpoint(0.0)
    manager = CheckpointManager(target, saved)
    with pytest.warns(UserWarning, match="names only missing files .*falling back .*ckpt-2.ckpt"):
        assert manager.restore_latest() == str(saved / "ckpt-2.ckpt")
    assert target.variables["w"].value.tolist() == [2.0, 2.0, 2.0]


@pytest.mark.parametrize("with_pointer", [True, False])
def test_a_distributed_directory_is_named_as_such_not_corrupt(tmp_path, with_pointer):
    directory = tmp_path / "dist"
    directory.mkdir()
    for rank in range(2):
        _checkpoint(rank).save(directory / f"ckpt-4.shard-{rank}-of-2.ckpt")
    (directory / "ckpt-4.manifest.json").write_text(json.dumps({
        "format": "sparse_train.sharded_checkpoint", "format_version": 1, "world_size": 2,
        "shards": [f"ckpt-4.shard-{r}-of-2.ckpt" for r in range(2)]}))
    if with_pointer:
        _write_pointer(directory, "ckpt-4.manifest.json", ["ckpt-4.manifest.json"])
    manager = CheckpointManager(_checkpoint(), directory)
    with pytest.raises(CheckpointError, match="sharded checkpoints of a distributed run.*"
                                              "DistributedCheckpointManager"):
        manager.restore_latest()
    with pytest.raises(CheckpointError, match="distributed"):
        manager.has_checkpoints()


def test_latest_step_and_has_checkpoints(tmp_path, saved):
    assert CheckpointManager(_checkpoint(), saved).latest_step() == 2
    assert CheckpointManager(_checkpoint(), saved).has_checkpoints()
    empty = CheckpointManager(_checkpoint(), tmp_path / "empty")
    assert empty.latest_step() is None and not empty.has_checkpoints()


def test_a_file_as_the_directory_is_refused(tmp_path):
    (tmp_path / "file").write_text("x")
    with pytest.raises(CheckpointError, match="is not a directory"):
        CheckpointManager(_checkpoint(), tmp_path / "file")


# ------------------------------------------------- DirectoryLock
_HOLD = textwrap.dedent("""
    import sys, time
    from sparse_train.checkpoint import DirectoryLock
    lock = DirectoryLock(sys.argv[1]).acquire()
    print("held", flush=True)
    time.sleep(float(sys.argv[2]))
""")


def _holder(directory, seconds):
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path))
    process = subprocess.Popen([sys.executable, "-c", _HOLD, str(directory), str(seconds)],
                               env=env, stdout=subprocess.PIPE, text=True)
    assert process.stdout.readline() == "held\n"
    return process


def test_directory_lock_excludes_a_second_holder_and_releases(tmp_path):
    with DirectoryLock(tmp_path) as lock:
        holder = json.loads((tmp_path / "LOCK").read_text())
        assert holder["pid"] == os.getpid() and holder["host"] == socket.gethostname()
        with pytest.raises(DirectoryLockedError, match=f"in use by process {os.getpid()} on host"):
            DirectoryLock(tmp_path).acquire()
        assert lock.held
    assert not (tmp_path / "LOCK").exists()
    process = _holder(tmp_path, 60)  # another live process
    try:
        with pytest.raises(DirectoryLockedError, match=f"in use by process {process.pid}"):
            DirectoryLock(tmp_path).acquire()
    finally:
        process.kill()
        process.wait()


def test_the_lock_of_a_killed_process_is_taken_over_saying_so(tmp_path):
    process = _holder(tmp_path, 60)
    process.kill()  # kill -9: no release, the file stays
    process.wait()
    assert (tmp_path / "LOCK").exists()
    with pytest.warns(UserWarning, match=f"stale lock of process {process.pid} on host"):
        lock = DirectoryLock(tmp_path).acquire()
    assert json.loads((tmp_path / "LOCK").read_text())["pid"] == os.getpid()
    lock.release()
    assert not (tmp_path / "LOCK").exists()
    _holder(tmp_path, 0).wait()  # a process that ends normally releases at exit
    assert not (tmp_path / "LOCK").exists()


def test_a_shard_or_manifest_given_to_checkpoint_restore_says_what_reads_it(tmp_path):
    shard = tmp_path / "ckpt-4.shard-1-of-2.ckpt"
    Checkpoint([Variable(np.zeros((2, 3)), "w")]).save(shard)  # half the rows of a [4, 3] table
    with pytest.raises(CheckpointError, match=r"shape \(2, 3\) in the checkpoint.*shard 1 of 2 "
                                              r"of a distributed checkpoint.*restore_sharded"):
        Checkpoint([Variable(np.zeros((4, 3)), "w")]).restore(shard)
    manifest = tmp_path / "ckpt-4.manifest.json"
    manifest.write_text(json.dumps({"format": "sparse_train.sharded_checkpoint"}) + " " * 40)
    with pytest.raises(CheckpointError, match="manifest of a sharded .*restore_sharded") as info:
        Checkpoint([Variable(np.zeros((4, 3)), "w")]).restore(manifest)
    assert not isinstance(info.value, ck.CorruptCheckpointError)
