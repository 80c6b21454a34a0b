"""scripts/train.py at the edges (issue 12) and its interop flags (issue 14):
one run per checkpoint directory, output paths checked before any data is
read, the data record a --resume checks, usage holes, newcomer messages,
--predict-out / --export-onnx checked by onnxruntime, --format parquet."""
import importlib.util
import json
import os
from pathlib import Path

import numpy as np
import pytest

from sparse_train.checkpoint import DirectoryLock, load_checkpoint
from sparse_train.data import open_dataset, write_criteo_like

ROOT = Path(__file__).resolve().parents[1]

_spec = importlib.util.spec_from_file_location("train_script_outputs",
                                               ROOT / "scripts" / "train.py")
train_script = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(train_script)

SMALL = ["--examples", "3000", "--batch-size", "500", "--quiet", "--model", "lr",
         "--epochs", "3", "--early-stopping-patience", "0"]


def run(tmp_path, *args, name="metrics.json"):
    """Run the script in-process; returns (exit code, metrics dict or None)."""
    out = tmp_path / name
    code = train_script.main([*map(str, args), "--metrics-out", str(out)])
    return code, (json.loads(out.read_text()) if out.exists() else None)


# ---------------------------------------------------- one run per directory
def test_a_directory_holding_checkpoints_needs_resume_or_overwrite(tmp_path, capsys):
    ckpt = tmp_path / "ckpt"
    code, _ = run(tmp_path, *SMALL, "--epochs", "1", "--checkpoint-dir", ckpt, name="a.json")
    assert code == 0 and (ckpt / "ckpt-6.ckpt").exists()
    capsys.readouterr()
    code, metrics = run(tmp_path, *SMALL, "--epochs", "1", "--checkpoint-dir", ckpt,
                        name="b.json")
    assert code == 2 and metrics is None  # refused before training
    err = capsys.readouterr().err
    assert (f"error: checkpoint directory {ckpt} already holds checkpoints (the newest at "
            f"step 6): continue that run with --resume, start afresh there with --overwrite"
            in err)
    # --overwrite: a fresh run (global step from 0), whose saves prune the old ones
    code, metrics = run(tmp_path, *SMALL, "--epochs", "2", "--checkpoint-dir", ckpt,
                        "--overwrite", "--keep-checkpoints", "1", name="c.json")
    assert code == 0 and metrics["global_step"] == 12
    assert sorted(p.name for p in ckpt.iterdir()) == ["ckpt-12.ckpt", "latest"]
    assert "--overwrite: starting afresh in" in capsys.readouterr().err
    assert train_script.main([*SMALL, "--checkpoint-dir", str(ckpt), "--overwrite",
                              "--resume"]) == 2
    assert "--overwrite starts afresh and --resume continues" in capsys.readouterr().err


def test_a_second_live_run_on_a_directory_fails_and_a_stale_lock_is_taken_over(
        tmp_path, capsys):
    ckpt = tmp_path / "ckpt"
    ckpt.mkdir()
    with DirectoryLock(ckpt):  # another live run (flock: also within one process)
        code, metrics = run(tmp_path, *SMALL, "--checkpoint-dir", ckpt)
    assert code == 2 and metrics is None
    assert (f"error: {ckpt} is in use by process {os.getpid()} on host"
            in capsys.readouterr().err)
    assert not (ckpt / "LOCK").exists()
    # a lock file left by a process that died (no flock held on it)
    (ckpt / "LOCK").write_text(json.dumps({"pid": 4_000_000, "host": "gone", "started": 0}))
    code, metrics = run(tmp_path, *SMALL, "--epochs", "1", "--checkpoint-dir", ckpt)
    assert code == 0 and metrics["global_step"] == 6
    assert ("taking over the stale lock of process 4000000 on host gone"
            in capsys.readouterr().err)
    assert not (ckpt / "LOCK").exists()  # released at the end of the run


# ------------------------------------------------------------ output paths
@pytest.mark.parametrize("flag, target, message", [
    ("--metrics-out", "{dir}", "--metrics-out {dir} is a directory; give a file name"),
    ("--metrics-out", "{file}/m.json", "--metrics-out {file}/m.json cannot be written: "
     "{file} is a file, not a directory"),
    ("--checkpoint-dir", "{file}", "--checkpoint-dir {file} is a file, not a directory"),
    ("--checkpoint-dir", "{file}/sub/ck", "--checkpoint-dir {file}/sub/ck cannot be written"),
    ("--predict-out", "{dir}", "--predict-out {dir} is a directory"),
    ("--export-onnx", "{file}/m.onnx", "--export-onnx {file}/m.onnx cannot be written"),
])
def test_output_paths_are_checked_before_any_data_is_read(tmp_path, capsys, flag, target,
                                                          message):
    """The data file named here does not exist, yet the error is the output
    flag's; nothing is left behind in the directories probed."""
    names = {"dir": tmp_path / "out", "file": tmp_path / "plain.txt"}
    names["dir"].mkdir()
    names["file"].write_text("x")
    before = sorted(p.name for p in tmp_path.rglob("*"))
    argv = ["--format", "criteo", "--data", str(tmp_path / "missing.tsv"),
            flag, target.format(**names)]
    assert train_script.main(argv) == 2
    assert f"error: {message.format(**names)}" in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.rglob("*")) == before


def test_a_writable_output_in_a_new_directory_passes_the_check(tmp_path):
    """A missing parent directory is created when the run writes (not by the
    check, which leaves nothing)."""
    code, metrics = run(tmp_path, *SMALL, "--epochs", "1", name="new/sub/m.json")
    assert code == 0 and metrics["global_step"] == 6


# ------------------------------------------------- the data a resume checks
def test_resume_refuses_data_with_another_vocabulary(tmp_path, capsys):
    """Resuming on data whose vocabulary differs would silently give the
    embedding rows to other tokens: refused naming the feature, even at an
    epoch boundary where other batches are allowed."""
    a, b = tmp_path / "a.tsv", tmp_path / "b.tsv"
    write_criteo_like(a, 600, seed=1)
    write_criteo_like(b, 600, seed=2)
    ckpt = tmp_path / "ckpt"
    common = ["--format", "criteo", "--model", "lr", "--batch-size", "200", "--quiet",
              "--early-stopping-patience", "0", "--checkpoint-dir", ckpt]
    code, _ = run(tmp_path, *common, "--data", a, "--epochs", "1")
    assert code == 0
    saved = load_checkpoint(str(ckpt / "ckpt-3.ckpt")).header["metadata"]["run"]
    train, _ = open_dataset(str(a), "criteo").split(0.1, seed=0)
    assert saved["data_record"] == {"ids": train.fingerprint(),
                                    "preprocessing": json.loads(json.dumps(
                                        train.preprocessing_state()))}
    code, metrics = run(tmp_path, *common, "--data", b, "--epochs", "2", "--resume",
                        name="b.json")
    assert code == 2 and metrics is None
    err = capsys.readouterr().err
    assert "error: categorical feature 'C1': this data's vocabulary (" in err
    assert f"differs from checkpoint {ckpt / 'ckpt-3.ckpt'}'s" in err
    code, metrics = run(tmp_path, *common, "--data", a, "--epochs", "2", "--resume",
                        name="c.json")
    assert code == 0 and metrics["global_step"] == 6


def test_resume_refuses_other_numeric_preprocessing(tmp_path, capsys):
    """Hash ids (the same buckets for any data) but a numeric column whose
    fitted normalizer statistics differ: refused naming the numeric feature."""
    (tmp_path / "schema.toml").write_text(
        '[label]\ncolumn = "y"\n\n[[features]]\nname = "user"\ntype = "categorical"\n\n'
        '[[features]]\nname = "price"\ntype = "numeric"\n')
    rng = np.random.default_rng(3)
    for name, scale in (("a", 1.0), ("b", 5.0)):
        (tmp_path / f"{name}.csv").write_text("y,user,price\n" + "".join(
            f"{rng.integers(0, 2)},u{rng.integers(0, 9)},{scale * rng.uniform(0, 9):.3f}\n"
            for _ in range(400)))
    ckpt = tmp_path / "ckpt"
    common = ["--format", "csv", "--schema", tmp_path / "schema.toml", "--model", "lr",
              "--batch-size", "200", "--quiet", "--ids", "hash", "--hash-buckets", "64",
              "--checkpoint-dir", ckpt]
    assert run(tmp_path, *common, "--data", tmp_path / "a.csv", "--epochs", "1")[0] == 0
    capsys.readouterr()
    code, _ = run(tmp_path, *common, "--data", tmp_path / "b.csv", "--epochs", "2", "--resume",
                  name="b.json")
    assert code == 2
    err = capsys.readouterr().err
    assert "error: numeric feature 'price': this data's preprocessing" in err
    assert f"differs from checkpoint {ckpt}" in err


# ------------------------------------------------------------ usage holes
@pytest.mark.parametrize("argv, message", [
    (["--config", "{binary}"], "config file {binary} is not UTF-8 text (byte 0xff at offset 8)"),
    (["--config", "{dir}"], "config file {dir}: Is a directory"),
    (["--hidden-units", ",,"], "--hidden-units must list at least one width"),
    (["--config", "{empty_units}"], "--hidden-units must list at least one width"),
    (["--config", "{overwrite}"], "config file {overwrite}: overwrite must be true or false"),
    (["--config", "{predict}"], "config file {predict}: predict_out must be a string, got 3"),
    (["--format", "criteo", "--data", ",,"], "--data lists no file, got ',,'"),
    (["--format", "criteo", "--data", "{missing}", "--label", "y"],
     "--label only applies with --format parquet"),
    (["--format", "parquet", "--data", "{missing}"], "--format parquet needs --label COLUMN"),
    (["--overwrite"], "--overwrite only applies with --checkpoint-dir"),
    (["--export-vocabulary"], "--export-vocabulary only applies with --export-onnx"),
    (["--distributed", "--predict-out", "{dir}/p.txt"],
     "--predict-out only applies without --distributed"),
])
def test_usage_holes_fail_naming_the_flag_or_file(tmp_path, capsys, argv, message):
    names = {"binary": tmp_path / "bin.toml", "dir": tmp_path,
             "empty_units": tmp_path / "u.toml", "overwrite": tmp_path / "o.toml",
             "predict": tmp_path / "p.toml", "missing": tmp_path / "missing.tsv"}
    names["binary"].write_bytes(b"epochs =\xff\xfe\x00\x01")
    names["empty_units"].write_text("hidden_units = []\n")
    names["overwrite"].write_text('overwrite = "yes"\n')
    names["predict"].write_text("predict_out = 3\n")
    assert train_script.main([a.format(**names) for a in argv]) == 2
    assert f"error: {message.format(**names)}" in capsys.readouterr().err


def test_export_vocabulary_needs_a_vocabulary_for_every_feature(tmp_path, capsys):
    data = tmp_path / "day.tsv"
    write_criteo_like(data, 300, seed=5)
    code, metrics = run(tmp_path, "--format", "criteo", "--data", data, "--ids", "hash",
                        "--model", "lr", "--quiet", "--export-onnx", tmp_path / "m.onnx",
                        "--export-vocabulary")
    assert code == 2 and metrics is None and not (tmp_path / "m.onnx").exists()
    assert ("error: --export-vocabulary: feature 'C1' uses hash buckets, not a vocabulary"
            in capsys.readouterr().err)


# ----------------------------------------------------------- for newcomers
def test_a_cold_kernel_cache_is_detected_from_its_index_files(tmp_path, monkeypatch):
    monkeypatch.delenv("NUMBA_CACHE_DIR", raising=False)
    kernels = tmp_path / "kernels"
    (kernels / "__pycache__").mkdir(parents=True)
    assert train_script.kernel_cache_is_cold(str(kernels))
    import sys
    tag = f"py{sys.version_info[0]}{sys.version_info[1]}"
    (kernels / "__pycache__" / "sgd.sgd_apply-12.py2.nbi").write_text("")  # another Python
    assert train_script.kernel_cache_is_cold(str(kernels))
    (kernels / "__pycache__" / f"sgd.sgd_apply-12.{tag}.nbi").write_text("")
    assert not train_script.kernel_cache_is_cold(str(kernels))


def test_first_run_note_and_the_closing_hint(tmp_path, monkeypatch, capsys):
    """A cold cache: one note before compiling; a run that keeps nothing
    ends saying which flags keep the model and the figures (not when it
    keeps them, nor with --quiet)."""
    monkeypatch.setattr(train_script, "kernel_cache_is_cold", lambda: True)
    assert train_script.main(["--examples", "2000", "--batch-size", "500", "--model", "lr",
                              "--epochs", "1"]) == 0
    err = capsys.readouterr().err
    assert err.count("compiling kernels, about 10 s on a first run; cached afterwards") == 1
    assert err.rstrip().endswith(train_script.KEEP_HINT)
    assert "--checkpoint-dir DIR" in train_script.KEEP_HINT
    assert "--metrics-out FILE" in train_script.KEEP_HINT
    code, _ = run(tmp_path, "--examples", "2000", "--batch-size", "500", "--model", "lr",
                  "--epochs", "1")
    err = capsys.readouterr().err
    assert code == 0 and train_script.KEEP_HINT not in err


# ------------------------------------------------------------------ interop
def test_export_onnx_matches_predict_out_through_onnxruntime(tmp_path):
    """The exported model, run by onnxruntime on the validation rows, gives
    the probabilities --predict-out wrote (one a line, in file order)."""
    pytest.importorskip("onnx", reason="the 'onnx' extra (onnx) is not installed")
    ort = pytest.importorskip("onnxruntime",
                              reason="the 'onnx' extra (onnxruntime) is not installed")
    from sparse_train.export import onnx_inputs

    onnx_path, predictions = tmp_path / "model" / "m.onnx", tmp_path / "p" / "valid.txt"
    code, metrics = run(tmp_path, "--examples", "2000", "--batch-size", "250", "--quiet",
                        "--model", "deepfm", "--hidden-units", "8", "--embedding-dim", "4",
                        "--epochs", "1", "--export-onnx", onnx_path,
                        "--predict-out", predictions)
    assert code == 0
    written = np.array(predictions.read_text().split(), np.float64)
    _, valid = open_dataset(format="synthetic", num_examples=2000, seed=0,
                            batch_size=250).split(0.1, seed=0)
    batches = list(valid.batches())
    assert written.shape[0] == sum(b.size for b in batches) == metrics["num_examples"]
    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    served = np.concatenate([session.run(["probability"], onnx_inputs(b, valid.spec))[0]
                             for b in batches])
    np.testing.assert_allclose(served, written, rtol=0, atol=1e-5)
    assert 0 < written.min() and written.max() < 1


def test_parquet_run_equals_its_csv_twin(tmp_path):
    """The same rows as Parquet (types from Arrow, --label) and as CSV (a
    TOML schema): the same figures every epoch. One row group, so the
    shuffle unit is the whole file as for the small CSV; --valid files, as
    a held-out split goes by line number and the CSV header is a line."""
    pa = pytest.importorskip("pyarrow", reason="the 'parquet' extra (pyarrow) is not installed")
    pq = pytest.importorskip("pyarrow.parquet",
                             reason="the 'parquet' extra (pyarrow) is not installed")
    rng = np.random.default_rng(7)
    (tmp_path / "schema.toml").write_text(
        '[label]\ncolumn = "y"\n\n[[features]]\nname = "user"\ntype = "categorical"\n\n'
        '[[features]]\nname = "item"\ntype = "categorical"\n\n'
        '[[features]]\nname = "price"\ntype = "numeric"\n')
    for name, n in (("train", 600), ("valid", 200)):
        user = [f"u{x}" for x in rng.zipf(1.5, n) % 30]
        item = [int(x) for x in rng.integers(0, 20, n)]
        price = [float(x) for x in np.round(rng.uniform(0, 50, n), 3)]
        y = [int((u in ("u1", "u2")) ^ (rng.random() < 0.2)) for u in user]
        pq.write_table(pa.table({"y": pa.array(y, pa.int64()),
                                 "user": pa.array(user, pa.string()),
                                 "item": pa.array(item, pa.int64()),
                                 "price": pa.array(price, pa.float64())}),
                       tmp_path / f"{name}.parquet", row_group_size=n)
        (tmp_path / f"{name}.csv").write_text("y,user,item,price\n" + "".join(
            f"{y[i]},{user[i]},{item[i]},{price[i]!r}\n" for i in range(n)))
    common = ["--model", "fm", "--epochs", "2", "--batch-size", "100", "--quiet",
              "--early-stopping-patience", "0"]
    code, parquet = run(tmp_path, *common, "--format", "parquet", "--label", "y",
                        "--data", tmp_path / "train.parquet",
                        "--valid", tmp_path / "valid.parquet", name="pq.json")
    assert code == 0
    code, csv = run(tmp_path, *common, "--format", "csv", "--schema", tmp_path / "schema.toml",
                    "--data", tmp_path / "train.csv", "--valid", tmp_path / "valid.csv",
                    name="csv.json")
    assert code == 0
    assert parquet["history"][-1]["num_examples"] == 200 and parquet["global_step"] == 12
    for key in ("auc", "logloss", "global_step", "history"):
        assert parquet[key] == csv[key], key
