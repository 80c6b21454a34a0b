"""ids="dynamic": every reader gives raw int64 keys (integers as they are,
strings by the fixed 64-bit hash), checked against a plain-Python reference
written here from the documented rule (data/hashing.py), not the library's."""
import numpy as np
import pytest

from sparse_train.data import (MISSING_RAW_KEY, RawKeys, Schema, SchemaError, load_vocabulary,
                               open_dataset, raw_key, save_vocabulary)
from sparse_train.kernels.data_keys import MISSING_RAW_KEY as KERNEL_MISSING, empty_token_key

MASK = (1 << 64) - 1


def fnv1a_fmix64(data):
    """FNV-1a 64 then MurmurHash3's fmix64, from their definitions."""
    h = 14695981039346656037
    for byte in data:
        h = ((h ^ byte) * 1099511628211) & MASK
    for shift, mul in ((33, 0xFF51AFD7ED558CCD), (33, 0xC4CEB9FE1A85EC53), (33, None)):
        h ^= h >> shift
        if mul:
            h = (h * mul) & MASK
    return h


def reference_key(token):
    """The documented raw key: canonical decimal int64 text -> the int,
    anything else -> the hash's bits as a signed int64; missing -> key("")."""
    if token is None:
        token = ""
    text = token
    sign, digits = (-1, text[1:]) if text.startswith("-") else (1, text)
    if digits and all("0" <= c <= "9" for c in digits) and (digits == "0" and sign == 1
                                                             or digits[0] != "0"):
        value = sign * int(digits)
        if -2 ** 63 <= value < 2 ** 63:
            return value
    h = fnv1a_fmix64(text.encode("utf-8"))
    return h - 2 ** 64 if h >= 2 ** 63 else h


TOKENS = ["0", "42", "-7", "9223372036854775807", "-9223372036854775808",
          "9223372036854775808", "-0", "007", "+5", "05db9164", "abc", "é"]


def test_the_reference_rule_and_the_missing_key():
    assert [raw_key(t) for t in TOKENS] == [reference_key(t) for t in TOKENS]
    assert reference_key("42") == 42 and reference_key("-9223372036854775808") == -2 ** 63
    # out of range, "-0", leading zeros and "+" are strings, hashed
    for t in ("9223372036854775808", "-0", "007", "+5"):
        assert reference_key(t) == raw_key(t) != int(t)
    assert MISSING_RAW_KEY == KERNEL_MISSING == empty_token_key() == reference_key("")
    assert raw_key(12) == 12 and raw_key(None) == MISSING_RAW_KEY


def _csv(tmp_path, text):
    path = tmp_path / "log.csv"
    path.write_text(text)
    schema = Schema.from_dict({
        "data": {"header": True}, "label": {"column": "y"},
        "features": [{"name": "u", "type": "categorical"},
                     {"name": "g", "type": "multi_hot", "separator": "|"},
                     {"name": "x", "type": "numeric", "normalizer": "standard"}]})
    return path, schema


def test_csv_keys_match_the_reference(tmp_path):
    rows = [("1", "-9223372036854775808", "a|12|", "1.5"), ("0", "9223372036854775807", "", "2"),
            ("1", "abc", "-3|007", ""), ("0", "", '"x,y"', "3"), ("1", '"17"', "0", "4")]
    path, schema = _csv(tmp_path, "y,u,g,x\n" + "".join(",".join(r) + "\n" for r in rows))
    ds = open_dataset(path, "csv", schema=schema, ids="dynamic", batch_size=10)
    assert [f.num_embeddings for f in ds.spec.sparse_features] == [None, None]
    batch = next(iter(ds))

    def unquote(cell):
        return cell[1:-1] if cell.startswith('"') else cell
    expected_u = [reference_key(unquote(r[1]) or None) for r in rows]
    assert batch.sparse["u"].values.tolist() == expected_u
    assert batch.sparse["u"].values.dtype == np.int64
    bags = [[t for t in unquote(r[2]).split("|") if t] or [None] for r in rows]
    assert batch.sparse["g"].values.tolist() == [reference_key(t) for bag in bags for t in bag]
    assert np.diff(batch.sparse["g"].offsets).tolist() == [len(b) for b in bags]
    # numeric statistics are fitted as with a vocabulary (the same training rows)
    vocabulary_mode = open_dataset(path, "csv", schema=schema, batch_size=10)
    assert ds.preprocessing_state() == vocabulary_mode.preprocessing_state()
    np.testing.assert_array_equal(batch.dense, next(iter(vocabulary_mode)).dense)
    assert ds.fingerprint()["u"]["type"] == "dynamic"


def test_criteo_needs_no_pass_without_statistics(tmp_path):
    """log1p needs no statistics: opening and fitting read nothing, so a bad
    line far down the file surfaces only when the batches reach it."""
    cells = ["1"] + ["3"] * 13 + ["05db9164", ""] + ["-12"] * 24
    good = "\t".join(cells) + "\n"
    path = tmp_path / "day.tsv"
    path.write_text(good * 3 + "not a line\n")
    ds = open_dataset(path, "criteo", ids="dynamic", batch_size=2)
    ds.build_ids()
    assert ds.num_examples is None  # no pass was made
    assert ds.spec.feature("C1").num_embeddings is None
    with pytest.raises(Exception, match="day.tsv:4"):
        list(ds)
    ds = open_dataset(path, "criteo", ids="dynamic", batch_size=2, on_bad_line="skip")
    batch = next(iter(ds))
    assert batch.sparse["C1"].values.tolist() == [reference_key("05db9164")] * 2
    assert batch.sparse["C2"].values.tolist() == [MISSING_RAW_KEY] * 2
    assert batch.sparse["C26"].values.tolist() == [-12, -12]


def test_libsvm_and_libffm_indices_pass_unchanged(tmp_path):
    svm = tmp_path / "a.svm"
    svm.write_text(f"1 3:1 {2 ** 40}:0.5\n0 0:2\n")
    batch = next(iter(open_dataset(svm, "libsvm", ids="dynamic")))
    assert batch.sparse["features"].values.tolist() == [3, 2 ** 40, 0]
    assert batch.sparse["features"].weights.tolist() == [1.0, 0.5, 2.0]
    ffm = tmp_path / "a.ffm"
    ffm.write_text("1 0:5:1 1:123456789012:1\n0 1:7:1\n")
    batch = next(iter(open_dataset(ffm, "libffm", ids="dynamic")))
    assert batch.sparse["field_0"].values.tolist() == [5]
    assert batch.sparse["field_1"].values.tolist() == [123456789012, 7]


def test_parquet_integers_as_they_are_strings_hashed(tmp_path):
    pa = pytest.importorskip("pyarrow", reason="parquet reading needs pyarrow")
    import pyarrow.parquet as pq
    table = pa.table({"y": [1, 0, 1], "u": pa.array([-5, None, 2 ** 62], pa.int64()),
                      "s": ["x", "", "42"], "l": [[1, -2], [], [9]]})
    path = tmp_path / "a.parquet"
    pq.write_table(table, path)
    batch = next(iter(open_dataset(path, "parquet", label="y", ids="dynamic")))
    assert batch.sparse["u"].values.tolist() == [-5, MISSING_RAW_KEY, 2 ** 62]
    assert batch.sparse["s"].values.tolist() == [reference_key("x"), MISSING_RAW_KEY, 42]
    assert batch.sparse["l"].values.tolist() == [1, -2, MISSING_RAW_KEY, 9]


def test_synthetic_ids_become_raw_keys():
    static = open_dataset(format="synthetic", num_examples=300, seed=3)
    dynamic = open_dataset(format="synthetic", num_examples=300, seed=3, ids="dynamic")
    assert dynamic.dynamic_ids and not static.dynamic_ids
    assert all(f.num_embeddings is None for f in dynamic.spec.sparse_features)
    for a, b in zip(static, dynamic):
        for name in a.sparse:
            np.testing.assert_array_equal(a.sparse[name].values, b.sparse[name].values)


def test_given_ids_carry_over_and_conflicts_are_refused(tmp_path):
    path, schema = _csv(tmp_path, "y,u,g,x\n1,5,a,1\n0,6,b,2\n")
    train = open_dataset(path, "csv", schema=schema, ids="dynamic")
    valid = open_dataset(path, "csv", schema=schema, like=train)  # ids follow like=
    assert valid.dynamic_ids and next(iter(valid)).sparse["u"].values.tolist() == [5, 6]
    saved = tmp_path / "ids.json"
    save_vocabulary(saved, train.vocabulary)
    assert load_vocabulary(saved)["u"] == RawKeys()
    again = open_dataset(path, "csv", schema=schema, vocabulary=saved)
    assert next(iter(again)).sparse["u"].values.tolist() == [5, 6]
    hashed = Schema.from_dict({"data": {"header": True}, "label": {"column": "y"},
                               "features": [{"name": "u", "type": "categorical", "ids": "hash"}]})
    with pytest.raises(SchemaError, match="feature 'u'.*ids='dynamic'"):
        open_dataset(path, "csv", schema=hashed, ids="dynamic")
    with pytest.raises(ValueError, match="ids must be"):
        open_dataset(path, "csv", schema=schema, ids="raw")
