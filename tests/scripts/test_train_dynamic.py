"""scripts/train.py --ids dynamic: raw ids into dynamic tables end to end
(admission by --filter-freq, eviction by --steps-to-live), and the flags it
refuses."""
import importlib.util
import json
from pathlib import Path

import pytest

pytest.importorskip("sparse_train.nn.dynamic_embedding",
                    reason="DynamicEmbeddingTable (branch dyncore) is not merged yet")

ROOT = Path(__file__).resolve().parents[2]
_spec = importlib.util.spec_from_file_location("train_script_dynamic",
                                               ROOT / "scripts" / "train.py")
train_script = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(train_script)

SMALL = ["--examples", "1500", "--batch-size", "100", "--epochs", "2", "--quiet",
         "--early-stopping-patience", "0", "--model", "lr"]


def test_dynamic_ids_admit_and_evict(tmp_path):
    out = tmp_path / "metrics.json"
    code = train_script.main([*SMALL, "--ids", "dynamic", "--filter-freq", "2",
                              "--steps-to-live", "8", "--evict-every-steps", "5",
                              "--metrics-out", str(out)])
    assert code == 0
    metrics = json.loads(out.read_text())
    assert metrics["auc"] > 0.5
    steps = metrics["global_step"]
    assert steps == 2 * 14  # 1350 training rows / 100, twice
    tables = metrics["dynamic_tables"]  # from table.export() after training
    assert sorted(tables) == sorted(f"lr/linear/{f}" for f in
                                    [f"c{i}" for i in range(8)] + ["m0", "m1"])
    # admission: no key is admitted before its second training occurrence
    assert all(t["admitted"] > 0 and t["min_count"] >= 2 for t in tables.values())
    # eviction: keys went, and none left older than steps_to_live at the last eviction
    last_eviction = steps // 5 * 5
    assert metrics["evicted_keys"] > 0
    assert all(t["min_last_seen"] >= last_eviction - 8 for t in tables.values())
    assert all(t["max_last_seen"] == steps - 1 for t in tables.values())


@pytest.mark.parametrize("flags, message", [
    (["--filter-freq", "2"], "--filter-freq only applies with --ids dynamic"),
    (["--ids", "dynamic", "--distributed", "--evict-every-steps", "5"],
     "--evict-every-steps does not run with --distributed"),
    (["--ids", "dynamic", "--incremental-every", "2"], "--incremental-every only applies"),
    (["--incremental-every", "2", "--checkpoint-dir", "ck"], "--incremental-every only applies"),
    (["--distributed", "--incremental-every", "2", "--checkpoint-dir", "ck"],
     "--incremental-every only applies"),
    (["--ids", "dynamic", "--export-onnx", "m.onnx"], "--export-onnx: an ONNX graph"),
    (["--ids", "dynamic", "--l2-weight-threshold", "0"], "--l2-weight-threshold must be"),
])
def test_flags_that_do_not_fit_dynamic_ids(tmp_path, capsys, flags, message):
    if "--export-onnx" in flags:
        pytest.importorskip("onnx", reason="--export-onnx is checked after its package")
        flags = [*flags[:-1], str(tmp_path / flags[-1])]
    assert train_script.main([*SMALL, *flags]) == 2
    assert message in capsys.readouterr().err


def test_max_vocabulary_size_caps_each_dynamic_table(capsys):
    """--max-vocabulary-size is each dynamic table's capacity (default 2**27):
    a stream of more keys stops with an error naming the table, not a host
    out of memory."""
    args = train_script.parse_args(["--ids", "dynamic"])
    assert train_script.dynamic_options(args)["capacity"] == 1 << 27
    assert train_script.main([*SMALL, "--ids", "dynamic", "--max-vocabulary-size", "20"]) != 0
    err = capsys.readouterr().err
    assert "exceed its capacity of 20" in err and "(feature 'c0')" in err


def test_distributed_incremental_saves_resume_bit_for_bit(tmp_path):
    """--distributed --incremental-every 3 (one process: a world of one; more
    ranks in tests/distributed/test_dynamic_mpi.py): the sharded saves form
    delta chains, and a run stopped at a delta resumes as the uninterrupted
    run (which saved, hence evicted, at the same steps)."""
    flags = [*SMALL, "--ids", "dynamic", "--filter-freq", "2", "--steps-to-live", "8",
             "--threads", "1", "--distributed", "--checkpoint-every", "4",
             "--incremental-every", "3", "--keep-checkpoints", "10"]

    def run(name, *more):
        out = tmp_path / f"{name}.json"
        assert train_script.main([*flags, *map(str, more), "--metrics-out", str(out)]) == 0
        return json.loads(out.read_text())
    straight = run("a", "--checkpoint-dir", tmp_path / "a")
    ckpt = tmp_path / "b"
    run("b1", "--checkpoint-dir", ckpt, "--max-steps", "12")
    chains = {int(p.name.split(".")[0].split("-")[1]): json.loads(p.read_text())["chain"]
              for p in ckpt.glob("*.manifest.json")}
    assert {step: chain["index"] for step, chain in chains.items()} == {4: 0, 8: 1, 12: 2}
    assert chains[12]["files"] == ["ckpt-4.manifest.json", "ckpt-8.manifest.json"]
    resumed = run("b", "--checkpoint-dir", ckpt, "--resume")
    assert resumed["global_step"] == straight["global_step"] == 28
    assert resumed["auc"] == straight["auc"] and resumed["logloss"] == straight["logloss"]
    assert resumed["history"][-1] == straight["history"][-1]
