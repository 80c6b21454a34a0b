"""scripts/train.py --distributed and its checkpoint directory: rank 0
holds the directory's lock, and a refusal there ends the job on every rank
(exit code 2) before any data is read."""
import importlib.util
import json
import os
from pathlib import Path

import pytest

from sparse_train.checkpoint import DirectoryLock

_spec = importlib.util.spec_from_file_location(
    "launch_for_train_script", Path(__file__).resolve().parent / "distributed" / "_launch.py")
launch = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(launch)

pytestmark = pytest.mark.skipif(launch.mpi_missing() is not None,
                                reason=launch.mpi_missing() or "")

COMMON = ["scripts/train.py", "--distributed", "--examples", "2000", "--batch-size", "500",
          "--model", "lr", "--epochs", "1", "--quiet"]


def test_a_locked_directory_ends_the_job_on_every_rank(tmp_path):
    ckpt = tmp_path / "ckpt"
    ckpt.mkdir()
    with DirectoryLock(ckpt):
        done = launch.run(2, *COMMON, "--checkpoint-dir", str(ckpt))
    assert done.returncode == 2, done.stderr[-3000:]
    assert f"[rank 0/2] error: {ckpt} is in use by process {os.getpid()}" in done.stderr


def test_a_directory_holding_checkpoints_is_refused_without_resume(tmp_path):
    ckpt = tmp_path / "ckpt"
    launch.run(2, *COMMON, "--checkpoint-dir", str(ckpt)).check()
    assert not (ckpt / "LOCK").exists()
    manifests = sorted(p.name for p in ckpt.glob("*.manifest.json"))
    step = json.loads((ckpt / manifests[-1]).read_text())["global_step"]
    done = launch.run(2, *COMMON, "--checkpoint-dir", str(ckpt))
    assert done.returncode == 2, done.stderr[-3000:]
    assert (f"error: checkpoint directory {ckpt} already holds checkpoints (the newest at "
            f"step {step})") in done.stderr
    launch.run(2, *COMMON, "--checkpoint-dir", str(ckpt), "--overwrite").check()
