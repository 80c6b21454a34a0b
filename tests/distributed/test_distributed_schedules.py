"""Early stopping, plateau decay and L2 under ``train.py --distributed``: the
best state is a sharded ``best-<step>`` checkpoint, a 2-rank run cut by
``--max-steps`` and resumed ends as one uninterrupted process does."""
import importlib.util
import json
import os

import pytest

import _launch as launch

pytestmark = pytest.mark.skipif(launch.mpi_missing() is not None,
                                reason=launch.mpi_missing() or "")

FLAGS = ["--examples", "6000", "--batch-size", "500", "--model", "fm", "--epochs", "6",
         "--sparse-learning-rate", "2", "--eval-every-steps", "4",
         "--early-stopping-patience", "3", "--lr-decay-factor", "0.5",
         "--l2-embedding", "0.001", "--quiet"]


def _train_main(argv):
    spec = importlib.util.spec_from_file_location(
        "train_script_for_schedules", os.path.join(launch.ROOT, "scripts", "train.py"))
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    return script.main(argv)


def test_two_ranks_cut_and_resumed_end_as_one_process(tmp_path):
    assert _train_main(FLAGS + ["--metrics-out", str(tmp_path / "one.json")]) == 0
    ck = str(tmp_path / "ck")
    launch.run(2, "scripts/train.py", "--distributed", *FLAGS, "--checkpoint-dir", ck,
               "--max-steps", "9").check()
    launch.run(2, "scripts/train.py", "--distributed", *FLAGS, "--checkpoint-dir", ck,
               "--resume", "--metrics-out", str(tmp_path / "two.json")).check()
    one = json.loads((tmp_path / "one.json").read_text())
    two = json.loads((tmp_path / "two.json").read_text())
    for key in ("best_epoch", "best_step", "global_step", "learning_rates", "early_stopped"):
        assert two[key] == one[key], key
    assert abs(two["auc"] - one["auc"]) < 1e-4 and abs(two["logloss"] - one["logloss"]) < 1e-4
    best = f"best-{one['best_step']}"
    assert sorted(n for n in os.listdir(ck) if n.startswith("best-")) == [
        f"{best}.manifest.json", f"{best}.shard-0-of-2.ckpt", f"{best}.shard-1-of-2.ckpt"]
