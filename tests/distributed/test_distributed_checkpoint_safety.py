"""Sharded checkpoint directories as hostile data: manifest and pointer
names never reach outside the directory; crash leftovers; a stale pointer."""
import json
import os

import pytest

from sparse_train.checkpoint import CheckpointError
from sparse_train.distributed import (DistributedCheckpointManager, DistributedModel,
                                      SingleProcessComm, restore_sharded)

import _scenarios as sc

VICTIM_TEXT = b"another run's file\n"


def _setup():
    data, _ = sc.model_data()
    model, sparse, dense, step = sc.model_setup(data.spec)
    return DistributedModel(model, SingleProcessComm()), [sparse, dense], step


@pytest.mark.parametrize("bad", ["../victim", "ABSOLUTE", "../victim.shard-0-of-1.ckpt"])
def test_a_manifest_naming_a_path_is_refused_and_pruning_spares_the_victim(tmp_path, bad):
    victim = tmp_path / "victim"
    victim.write_bytes(VICTIM_TEXT)
    bad = str(victim) if bad == "ABSOLUTE" else bad
    directory = tmp_path / "ckpts"
    dist, optimizers, step = _setup()
    manager = DistributedCheckpointManager(dist, optimizers, step, directory, max_to_keep=1)
    first = manager.save(checkpoint_number=1)
    manifest = json.loads(open(first).read())
    manifest["shards"] = [bad]
    with open(first, "w") as f:
        json.dump(manifest, f)
    with pytest.raises(CheckpointError, match="not a plain file name.*refused"):
        restore_sharded(first, dist, optimizers, step)
    manager.save(checkpoint_number=2)  # prunes checkpoint 1
    assert victim.read_bytes() == VICTIM_TEXT
    assert not os.path.exists(first)


def test_a_pointer_naming_a_path_or_missing_files(tmp_path):
    directory = tmp_path / "ckpts"
    dist, optimizers, step = _setup()
    manager = DistributedCheckpointManager(dist, optimizers, step, directory)
    saved = manager.save(checkpoint_number=3)
    (directory / "latest").write_text(json.dumps({"latest": "ckpt-9.manifest.json",
                                                  "checkpoints": ["ckpt-9.manifest.json"]}))
    with pytest.warns(UserWarning, match="names only missing files"):
        assert manager.restore_latest() == saved
    (directory / "latest").write_text(json.dumps({"latest": "../x.manifest.json",
                                                  "checkpoints": []}))
    with pytest.raises(CheckpointError, match="refused"):
        manager.restore_latest()


def test_temporaries_of_a_dead_save_are_removed(tmp_path):
    directory = tmp_path / "ckpts"
    directory.mkdir()
    leftovers = [".ckpt-3.shard-0-of-2.ckpt.abcdefgh.tmp", ".ckpt-3.manifest.json.abcdefgh.tmp"]
    for name in leftovers + [".mine.abcdefgh.tmp"]:
        (directory / name).write_bytes(b"partial")
    dist, optimizers, step = _setup()
    with pytest.warns(UserWarning, match="removed 2 temporary file"):
        DistributedCheckpointManager(dist, optimizers, step, directory)
    assert sorted(os.listdir(directory)) == [".mine.abcdefgh.tmp"]


def test_latest_step_and_has_checkpoints(tmp_path):
    dist, optimizers, step = _setup()
    manager = DistributedCheckpointManager(dist, optimizers, step, tmp_path)
    assert manager.latest_step() is None and not manager.has_checkpoints()
    manager.save(checkpoint_number=7)
    assert manager.latest_step() == 7 and manager.has_checkpoints()
