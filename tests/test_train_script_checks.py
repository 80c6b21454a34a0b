"""scripts/train.py: validation rows checked before the first step, and the
data limits as flags (issue 12, items 4 and 5)."""
import importlib.util
from pathlib import Path

import pytest

from sparse_train.data import _lines, libsvm, vocabulary

ROOT = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location("train_script_checks", ROOT / "scripts" / "train.py")
train_script = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(train_script)

SCHEMA = """[data]
delimiter = ","
header = true
[label]
column = "y"
[[features]]
name = "a"
type = "categorical"
"""


def test_the_limit_flags_default_to_the_readers_limits():
    """--help shows the readers' own limits (the script cannot import them
    before it shares the cores between MPI ranks)."""
    assert {k: v[0] for k, v in train_script.DATA_LIMITS.items()} == {
        "max_vocabulary_size": vocabulary.MAX_VOCABULARY_SIZE,
        "max_line_bytes": _lines.MAX_LINE_BYTES, "max_fields": libsvm.MAX_FIELDS,
        "max_bag_length": libsvm.MAX_BAG_LENGTH, "max_index": libsvm.MAX_INDEX}


def _csv(path, rows):
    path.write_text("y,a\n" + "".join(f"{y},{a}\n" for y, a in rows))
    return path


def test_a_bad_last_validation_line_fails_before_the_first_step(tmp_path, capsys):
    """Before: the bad label of the validation file's last line surfaced at
    the end of epoch 1; now the check runs before training (exit 2, no
    checkpoint written)."""
    schema = tmp_path / "s.toml"
    schema.write_text(SCHEMA)
    train = _csv(tmp_path / "train.csv", [(i % 2, f"t{i % 7}") for i in range(400)])
    valid = _csv(tmp_path / "valid.csv", [(i % 2, f"t{i % 7}") for i in range(40)] + [(0.5, "t1")])
    ckpt = tmp_path / "ckpt"
    code = train_script.main(["--format", "csv", "--schema", str(schema), "--data", str(train),
                              "--valid", str(valid), "--model", "lr", "--quiet",
                              "--checkpoint-dir", str(ckpt)])
    assert code == 2
    err = capsys.readouterr().err
    assert f"{valid}:42:" in err and "0.5" in err
    assert not ckpt.exists() or not any(ckpt.glob("ckpt-*"))


@pytest.mark.parametrize("flag, value, message", [
    ("--max-vocabulary-size", "3", "max_vocabulary_size"),
    ("--max-line-bytes", "2", "max_line_bytes"),
])
def test_a_limit_flag_reaches_the_reader(tmp_path, capsys, flag, value, message):
    schema = tmp_path / "s.toml"
    schema.write_text(SCHEMA)
    train = _csv(tmp_path / "train.csv", [(i % 2, f"token{i % 7}") for i in range(100)])
    code = train_script.main(["--format", "csv", "--schema", str(schema), "--data", str(train),
                              "--model", "lr", "--quiet", flag, value])
    assert code == 2
    assert message in capsys.readouterr().err


def test_a_limit_flag_is_refused_with_synthetic_data(capsys):
    assert train_script.main(["--max-fields", "10"]) == 2
    assert "--max-fields only applies with a file --format" in capsys.readouterr().err


@pytest.mark.parametrize("value, expected", [("auto", "auto"), ("1", 1), ("2", 2)])
def test_blas_threads_flag_is_auto_or_a_count(value, expected):
    assert train_script.parse_args(["--blas-threads", value]).blas_threads == expected
    assert train_script.parse_args([]).blas_threads == "auto"


@pytest.mark.parametrize("value", ["0", "-1", "1.5", "two", ""])
def test_a_bad_blas_threads_flag_is_refused(capsys, value):
    assert train_script.main(["--blas-threads", value]) == 2
    assert "--blas-threads must be 'auto' or an integer >= 1" in capsys.readouterr().err
