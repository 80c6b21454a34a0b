"""Numeric features: normalizers and quantile buckets fitted on the training
rows, against a float64 NumPy reference fitted on the same rows."""
import json

import numpy as np
import pytest

from sparse_train.data import DataError, Schema, SchemaError, open_dataset
from sparse_train.data.numeric import NumericEncoder, NumericStatistics, numeric_encoder

from _data_reference import collect, parse_csv_rows, reference_numeric

# x: heavy-tailed, negative values and missing cells; a duplicated boundary
TRAIN = """y,x,c
1,3,a
0,,b
1,-2.5,a
0,120,b
1,0,a
0,7,b
1,7,a
0,7,
1,99999,a
0,1.5,b
"""
VALID = """y,x,c
1,4,a
0,,b
1,100000,a
0,-7,b
0,7,a
"""


def schema(**numeric):
    return Schema.from_dict({"data": {"header": True}, "label": {"column": "y"},
                             "features": [{"name": "c", "type": "categorical"},
                                          {"name": "x", "type": "numeric", **numeric}]})


def files(tmp_path):
    (tmp_path / "train.csv").write_text(TRAIN)
    (tmp_path / "valid.csv").write_text(VALID)
    return tmp_path / "train.csv", tmp_path / "valid.csv"


def cells(text):
    return [r["x"] for r in parse_csv_rows(text, ",", header=True)[1]]


@pytest.mark.parametrize("kind", ["none", "log1p", "standard", "minmax", "log_standard", None])
def test_normalizer_values_train_and_valid(tmp_path, kind):
    train_path, valid_path = files(tmp_path)
    s = schema() if kind is None else schema(normalizer=kind)
    train = open_dataset(train_path, "csv", schema=s, batch_size=4)
    valid = open_dataset(valid_path, "csv", schema=s, like=train)
    _, dense, _ = collect(train)
    np.testing.assert_allclose(dense[:, 0], reference_numeric(cells(TRAIN), kind),
                               rtol=1e-6, atol=1e-6)
    # validation rows: the TRAINING statistics (never their own)
    _, dense, _ = collect(valid)
    expected = reference_numeric(cells(VALID), kind, fit=cells(TRAIN))
    np.testing.assert_allclose(dense[:, 0], expected, rtol=1e-6, atol=1e-6)
    if kind in ("standard", "log_standard", None):
        assert dense[1, 0] == 0.0  # missing: the training mean
    assert train.spec.dense_features == ("x",)


def test_statistics_are_numpy_float64(tmp_path):
    train_path, _ = files(tmp_path)
    state = open_dataset(train_path, "csv", schema=schema(normalizer="standard"))\
        .preprocessing_state()
    x = np.array([float(c) for c in cells(TRAIN) if c], np.float64)
    assert state["x"] == {"type": "numeric", "normalizer": "standard",
                          "mean": float(np.mean(x)), "std": float(np.std(x))}
    state = open_dataset(train_path, "csv", schema=schema(normalizer="minmax"))\
        .preprocessing_state()
    assert (state["x"]["min"], state["x"]["max"]) == (-2.5, 99999.0)


def test_bucketize_ids_and_spec(tmp_path):
    train_path, valid_path = files(tmp_path)
    s = schema(bucketize=4)
    train = open_dataset(train_path, "csv", schema=s, batch_size=3)
    valid = open_dataset(valid_path, "csv", schema=s, like=train)
    x = np.array([float(c) for c in cells(TRAIN) if c])
    edges = np.unique(np.quantile(x, [0.25, 0.5, 0.75]))
    assert train.preprocessing_state()["x"]["boundaries"] == edges.tolist()
    # the column became a categorical feature named like it, after the others
    spec = train.spec
    assert [f.name for f in spec.sparse_features] == ["c", "x"]
    assert spec.feature("x").num_embeddings == len(edges) + 2 and spec.dense_features == ()
    for data, text in ((train, TRAIN), (valid, VALID)):
        _, dense, sparse = collect(data)
        assert dense.shape[1] == 0
        values, offsets = sparse["x"][:2]
        np.testing.assert_array_equal(values, reference_numeric(cells(text), "bucketize", 4,
                                                                fit=cells(TRAIN)))
        np.testing.assert_array_equal(offsets, np.arange(len(values) + 1))
    # bucket edges: a value equal to a boundary opens the next bucket
    enc = NumericEncoder("bucketize", boundaries=[1.0, 7.0])
    assert enc.ids(np.array([0.99, 1.0, 6.99, 7.0, 1e9, np.nan])).tolist() == [1, 2, 2, 3, 3, 0]


def test_state_round_trip_and_vocabulary_file(tmp_path):
    train_path, valid_path = files(tmp_path)
    s = schema(normalizer="log_standard")
    train = open_dataset(train_path, "csv", schema=s)
    state = json.loads(json.dumps(train.preprocessing_state()))
    assert {n: NumericEncoder.from_dict(d).to_dict() for n, d in state.items()} == state
    train.check_preprocessing(state)  # the same: no error
    train.save_vocabulary(tmp_path / "vocab.json")
    restored = open_dataset(valid_path, "csv", schema=s, vocabulary=tmp_path / "vocab.json")
    like = open_dataset(valid_path, "csv", schema=s, like=train)
    assert restored.preprocessing_state() == state
    np.testing.assert_array_equal(collect(restored)[1], collect(like)[1])
    # other training rows give other statistics: refused, naming the feature
    other = open_dataset(valid_path, "csv", schema=s)
    with pytest.raises(DataError, match="numeric feature 'x'"):
        other.check_preprocessing(state)


def test_statistics_independent_of_chunks_and_batches(tmp_path):
    train_path, _ = files(tmp_path)
    states = [open_dataset(train_path, "csv", schema=schema(bucketize=3), chunk_bytes=c,
                           batch_size=b).preprocessing_state() for c, b in ((16, 1), (1 << 20, 64))]
    assert states[0] == states[1]


def test_statistics_on_the_first_rows_only():
    stat = NumericStatistics("standard", limit=4)
    values = np.array([1.0, np.nan, 5.0, 2.0, 1000.0, -50.0])
    stat.add(values[:3])
    stat.add(values[3:])
    first = np.array([1.0, 5.0, 2.0])  # the first 4 rows, the missing one dropped
    assert stat.encoder().mean == float(first.mean()) and stat.encoder().std == float(first.std())
    # a constant column: spread 1, values 0
    assert numeric_encoder("standard", np.array([3.0, 3.0])).apply(np.array([3.0])).tolist() \
        == [0.0]


def test_transform_is_an_alias_of_normalizer(tmp_path):
    train_path, _ = files(tmp_path)
    a = collect(open_dataset(train_path, "csv", schema=schema(transform="log1p")))[1]
    b = collect(open_dataset(train_path, "csv", schema=schema(normalizer="log1p")))[1]
    np.testing.assert_array_equal(a, b)
    assert schema(transform="log1p").features[1].normalizer == "log1p"


def test_default_normalizer_override(tmp_path):
    train_path, _ = files(tmp_path)
    ds = open_dataset(train_path, "csv", schema=schema(), normalizer="standard")
    assert ds.preprocessing_state()["x"]["normalizer"] == "standard"
    with pytest.raises(ValueError, match="normalizer must be one of"):
        open_dataset(train_path, "csv", schema=schema(), normalizer="zscore")


@pytest.mark.parametrize("entry, message", [
    ({"normalizer": "zscore"}, r"#2 \('x'\): normalizer must be one of"),
    ({"bucketize": 1}, r"#2 \('x'\): bucketize must be an integer >= 2"),
    ({"bucketize": 4, "normalizer": "standard"}, "bucketize or normalizer"),
    ({"transform": "log1p", "normalizer": "standard"}, "disagree"),
])
def test_schema_errors_name_the_feature(entry, message):
    with pytest.raises(SchemaError, match=message):
        schema(**entry)
    with pytest.raises(SchemaError, match="applies to numeric features only"):
        Schema.from_dict({"label": {"column": "y"},
                          "features": [{"name": "c", "type": "categorical", "bucketize": 3}]})


def test_bad_value_names_file_line_and_column(tmp_path):
    path = tmp_path / "bad.csv"
    path.write_text("y,c,x\n1,a,3\n0,b,12abc\n")
    with pytest.raises(DataError, match=r"bad.csv:3: numeric column 'x': '12abc'"):
        open_dataset(path, "csv", schema=schema(normalizer="standard")).spec


def test_vocabulary_without_statistics_is_refused(tmp_path):
    train_path, valid_path = files(tmp_path)
    plain = open_dataset(train_path, "csv", schema=schema(normalizer="log1p"))
    plain.save_vocabulary(tmp_path / "v.json")
    # log1p fits nothing: fine; standard needs the training statistics
    open_dataset(valid_path, "csv", schema=schema(normalizer="log1p"),
                 vocabulary=tmp_path / "v.json")
    with pytest.raises(DataError, match="numeric feature 'x': the vocabulary preprocesses"):
        open_dataset(valid_path, "csv", schema=schema(normalizer="standard"),
                     vocabulary=tmp_path / "v.json")
    with pytest.raises(SchemaError, match="numeric feature 'x': like= preprocesses it"):
        open_dataset(valid_path, "csv", schema=schema(normalizer="standard"), like=plain)


@pytest.mark.parametrize("kind, bad", [("standard", True), ("none", True), ("minmax", True),
                                       ("log1p", False), ("log_standard", False)])
def test_beyond_float32_is_bad_unless_a_log_takes_it(tmp_path, kind, bad):
    path = tmp_path / "big.csv"
    path.write_text("y,c,x\n1,a,3\n0,b,1e39\n1,a,\n")
    ds = open_dataset(path, "csv", schema=schema(normalizer=kind))
    if bad:
        with pytest.raises(DataError, match=r"big.csv:3: numeric column 'x': '1e39' is not a "
                                            r"number within float32 range"):
            ds.spec
    else:
        dense = collect(ds)[1][:, 0]
        np.testing.assert_allclose(dense, reference_numeric(["3", "1e39", ""], kind), rtol=1e-6)
