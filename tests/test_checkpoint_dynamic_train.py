"""scripts/train.py --ids dynamic --checkpoint-dir ... --resume continues bit
for bit: the dynamic tables (keys, rows, slots, counts, last use) ride in
the checkpoints, and every save evicts as the uninterrupted run's did."""
import importlib.util
import json
from pathlib import Path

import pytest

pytest.importorskip("sparse_train.nn.dynamic_embedding",
                    reason="DynamicEmbeddingTable (branch dyncore) is not merged yet")

from sparse_train.checkpoint import load_checkpoint  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location("train_script_dynamic_ckpt",
                                               ROOT / "scripts" / "train.py")
train_script = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(train_script)

FLAGS = ["--examples", "1500", "--batch-size", "100", "--quiet", "--early-stopping-patience",
         "0", "--model", "lr", "--ids", "dynamic", "--filter-freq", "2", "--steps-to-live", "8",
         "--threads", "1"]


def run(tmp_path, *flags, name):
    out = tmp_path / name
    assert train_script.main([*FLAGS, *map(str, flags), "--metrics-out", str(out)]) == 0
    return json.loads(out.read_text())


def test_train_script_resumes_dynamic_tables_bit_for_bit(tmp_path):
    straight = run(tmp_path, "--epochs", "2", "--checkpoint-dir", tmp_path / "a", name="a.json")
    ckpt = tmp_path / "b"
    run(tmp_path, "--epochs", "1", "--checkpoint-dir", ckpt, name="b1.json")
    header = load_checkpoint(ckpt / "ckpt-14.ckpt").header
    assert sorted(header["dynamic"]) == sorted(straight["dynamic_tables"])
    resumed = run(tmp_path, "--epochs", "2", "--checkpoint-dir", ckpt, "--resume", name="b.json")
    assert resumed["global_step"] == straight["global_step"] == 28
    assert resumed["auc"] == straight["auc"] and resumed["logloss"] == straight["logloss"]
    assert resumed["dynamic_tables"] == straight["dynamic_tables"]
    assert straight["evicted_keys"] > 0


def test_train_script_incremental_saves_resume_bit_for_bit(tmp_path):
    """--incremental-every 3 with a save every 4 steps: the saves between full
    ones are deltas (a chain in their headers), and a resume from the last of
    them continues as the uninterrupted run (which saved, hence evicted, at
    the same steps)."""
    every = ["--checkpoint-every", "4", "--incremental-every", "3", "--keep-checkpoints", "10"]
    straight = run(tmp_path, "--epochs", "2", "--checkpoint-dir", tmp_path / "a", *every,
                   name="a.json")
    ckpt = tmp_path / "b"
    run(tmp_path, "--epochs", "1", "--checkpoint-dir", ckpt, *every, name="b1.json")
    chains = {int(path.stem.split("-")[1]): load_checkpoint(path).header["chain"]["index"]
              for path in ckpt.glob("*.ckpt")}
    assert chains == {4: 0, 8: 1, 12: 2, 14: 0}  # full, delta, delta, full (every 3rd full)
    resumed = run(tmp_path, "--epochs", "2", "--checkpoint-dir", ckpt, *every, "--resume",
                  name="b.json")
    assert resumed["global_step"] == straight["global_step"] == 28
    assert resumed["auc"] == straight["auc"] and resumed["logloss"] == straight["logloss"]
    assert resumed["dynamic_tables"] == straight["dynamic_tables"]
