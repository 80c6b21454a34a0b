"""Criteo and schema-described CSV / TSV readers against a brute-force parse."""
import gzip

import numpy as np
import pytest

from sparse_train.data import Schema, open_dataset

from _data_reference import (assert_same_batches, collect, log1p_transform,
                             parse_csv_rows, reference_delimited,
                             reference_numeric)

CRITEO_NAMES = ["label"] + [f"I{i}" for i in range(1, 14)] + [f"C{i}" for i in range(1, 27)]


def criteo_lines(num_rows, seed, missing=0.2):
    """Criteo-shaped rows with repeats (for min_count), empty cells, floats,
    negatives."""
    rng = np.random.default_rng(seed)
    rows = []
    for _ in range(num_rows):
        cells = [str(int(rng.random() < 0.3))]
        for _ in range(13):
            x = rng.choice(["", "0", "-1", "3", "17", "2.5", "260.0", "1e3", "17668"],
                           p=[missing, 0.1, 0.05, 0.15, 0.1, 0.1, 0.1, 0.1, 0.3 - missing])
            cells.append(str(x))
        for j in range(26):
            if rng.random() < missing:
                cells.append("")
            else:
                cells.append(f"{int(rng.zipf(1.5)) % (5 + j):08x}")
        rows.append(cells)
    return rows


def criteo_reference(rows, transform=True, mode="vocabulary", min_count=1, buckets=None):
    dict_rows = [dict(zip(CRITEO_NAMES, r)) for r in rows]
    features = [(f"I{i}", "numeric", None, "log1p" if transform else "none") for i in range(1, 14)]
    features += [(f"C{i}", "categorical", None, None) for i in range(1, 27)]
    return reference_delimited(dict_rows, "label", None, features, mode, min_count, buckets)


def assert_matches(got, expected):
    labels, dense, sparse = got
    ref_labels, ref_dense, ref_sparse = expected
    np.testing.assert_array_equal(labels, ref_labels)
    np.testing.assert_allclose(dense, ref_dense, rtol=1e-6, atol=1e-6)  # z-scores: float64 rounding
    assert sorted(sparse) == sorted(ref_sparse)
    for name, (values, offsets) in ref_sparse.items():
        np.testing.assert_array_equal(sparse[name][0], values, err_msg=name)
        np.testing.assert_array_equal(sparse[name][1], offsets, err_msg=name)
        assert sparse[name][2] is None


@pytest.mark.parametrize("min_count", [1, 3])
def test_criteo_tsv_vocabulary(tmp_path, min_count):
    rows = criteo_lines(120, seed=0)
    path = tmp_path / "day_0.tsv"
    path.write_text("\n".join("\t".join(r) for r in rows) + "\n")
    ds = open_dataset(path, "criteo", batch_size=32, min_count=min_count)
    assert_matches(collect(ds), criteo_reference(rows, min_count=min_count))
    spec = ds.spec
    assert [f.name for f in spec.sparse_features] == CRITEO_NAMES[14:]
    assert spec.dense_features == tuple(CRITEO_NAMES[1:14])
    assert ds.num_examples == 120


def test_criteo_csv_with_header_hash_ids_no_transform(tmp_path):
    rows = criteo_lines(50, seed=1)
    path = tmp_path / "sample.csv"
    path.write_text(",".join(CRITEO_NAMES) + "\n" + "\n".join(",".join(r) for r in rows))
    ds = open_dataset(path, "criteo", ids="hash", hash_buckets=1000, numeric_transform="none")
    assert_matches(collect(ds), criteo_reference(rows, transform=False, mode="hash", buckets=1000))
    assert all(f.num_embeddings == 1001 for f in ds.spec.sparse_features)


def test_criteo_numeric_transform_values(tmp_path):
    # label, I1..I13 = the listed values, C* empty
    values = ["", "0", "-1", "1", "2.5", "260.0", "1e3", "17668", "0.5", "-3.5", "7", "8", "9"]
    path = tmp_path / "day.tsv"
    path.write_text("\t".join(["1"] + values + [""] * 26) + "\n")
    batch = next(iter(open_dataset(path, "criteo")))
    expected = [log1p_transform(float(v)) if v else 0.0 for v in values]
    np.testing.assert_array_equal(batch.dense[0], np.float32(expected))
    assert batch.sparse["C1"].values.tolist() == [0]  # missing id


SCHEMA = """
[data]
delimiter = ","
header = true
[label]
column = "rating"
threshold = 4
[[features]]
name = "user_id"
type = "categorical"
[[features]]
name = "genres"
type = "multi_hot"
separator = "|"
[[features]]
name = "age"
type = "numeric"
transform = "log1p"
[[features]]
name = "title"
type = "categorical"
[[features]]
name = "score"
type = "numeric"
"""

CSV = """user_id,rating,title,genres,age,score
3299,4,Ed Wood (1994),Comedy|Drama,25,0.5
3630,3,"American President, The (1995)",Action|Thriller,18,-2
3299,5,"Say ""Anything"" (1989)",Drama,,1e-3
17,2,,,56,
17,5,Ed Wood (1994),|Comedy||Drama|,1,3
"""


def test_schema_csv_against_csv_module(tmp_path):
    (tmp_path / "s.toml").write_text(SCHEMA)
    (tmp_path / "r.csv").write_text(CSV)
    ds = open_dataset(tmp_path / "r.csv", "csv", schema=tmp_path / "s.toml", batch_size=2)
    _, rows = parse_csv_rows(CSV, ",", header=True)
    features = [("user_id", "categorical", None, None), ("genres", "multi_hot", "|", None),
                ("age", "numeric", None, "log1p"), ("title", "categorical", None, None),
                ("score", "numeric", None, None)]  # score declares nothing: the default
    expected = reference_delimited(rows, "rating", 4, features)
    assert_matches(collect(ds), expected)
    spec = ds.spec
    assert spec.feature("genres").multi_hot and not spec.feature("user_id").multi_hot
    assert spec.dense_features == ("age", "score")
    # quoted cells are read inside their quotes, doubled quotes unescaped
    assert 'Say "Anything" (1989)' in ds.vocabulary["title"].tokens
    assert "American President, The (1995)" in ds.vocabulary["title"].tokens
    # the multi-hot bag of row 5 holds Comedy and Drama, empty tokens dropped
    genres = ds.vocabulary["genres"]
    _, _, sparse = collect(ds)
    values, offsets, _ = sparse["genres"]
    assert values[offsets[4]:offsets[5]].tolist() == genres.lookup(["Comedy", "Drama"]).tolist()
    assert values[offsets[3]:offsets[4]].tolist() == [0]  # empty cell: one missing id


def test_schema_tsv_with_names_and_no_header(tmp_path):
    schema = Schema.from_dict({
        "data": {"delimiter": "\t", "header": False, "names": ["y", "a", "b", "unused"]},
        "label": {"column": "y"},
        "features": [{"name": "a", "type": "categorical", "ids": "hash", "hash_buckets": 7},
                     {"name": "b", "type": "multi_hot", "separator": ","},
                     {"name": "b_count", "column": "a", "type": "numeric"}]})
    text = "1\t5\tx,y\tq\n0\t\tz\tq\n1\t6\t\tq\n"
    path = tmp_path / "d.tsv"
    path.write_text(text)
    labels, dense, sparse = collect(open_dataset(path, "csv", schema=schema))
    _, rows = parse_csv_rows(text, "\t", header=False, names=["y", "a", "b", "unused"])
    ref_labels, _, ref_sparse = reference_delimited(
        rows, "y", None, [("b", "multi_hot", ",", None)])
    np.testing.assert_array_equal(labels, ref_labels)
    np.testing.assert_array_equal(sparse["b"][0], ref_sparse["b"][0])
    from sparse_train.data import token_key
    assert sparse["a"][0].tolist() == [1 + token_key("5") % 7, 0, 1 + token_key("6") % 7]
    # the column "a" feeds a categorical and a numeric feature (the default
    # normalizer: signed log, then z-score; the empty cell -> 0, the mean)
    np.testing.assert_allclose(dense[:, 0], reference_numeric(["5", "", "6"]), rtol=1e-6)
    assert dense[1, 0] == 0.0


def test_quoted_separator_and_crlf(tmp_path):
    schema = Schema.from_dict({
        "data": {"header": True}, "label": {"column": "y"},
        "features": [{"name": "tags", "type": "multi_hot", "separator": ";"}]})
    path = tmp_path / "q.csv"
    path.write_bytes(b'y,tags\r\n1,"a,b;c"\r\n0,d\r\n')
    ds = open_dataset(path, "csv", schema=schema)
    _, _, sparse = collect(ds)
    assert sparse["tags"][0].tolist() == ds.vocabulary["tags"].lookup(["a,b", "c", "d"]).tolist()


@pytest.mark.parametrize("chunk_bytes", [1, 7, 64, 1000])
def test_streaming_chunk_size_does_not_change_batches(tmp_path, chunk_bytes):
    rows = criteo_lines(80, seed=2)
    path = tmp_path / "day.tsv"
    path.write_text("\n".join("\t".join(r) for r in rows))  # no final newline
    big = list(open_dataset(path, "criteo", batch_size=9, chunk_bytes=1 << 20).batches())
    small = list(open_dataset(path, "criteo", batch_size=9, chunk_bytes=chunk_bytes,
                              prefetch=0).batches())
    assert_same_batches(big, small)
    assert [b.size for b in big] == [9] * 8 + [8]


def test_gzip_and_multiple_files(tmp_path):
    rows = criteo_lines(30, seed=3)
    text = "\n".join("\t".join(r) for r in rows) + "\n"
    (tmp_path / "a.tsv").write_text(text)
    with gzip.open(tmp_path / "a.tsv.gz", "wt") as f:
        f.write(text)
    plain = list(open_dataset(tmp_path / "a.tsv", "criteo", batch_size=8))
    zipped = list(open_dataset(tmp_path / "a.tsv.gz", "criteo", batch_size=8))
    assert_same_batches(plain, zipped)
    both = open_dataset([tmp_path / "a.tsv", tmp_path / "a.tsv.gz"], "criteo", batch_size=60)
    batch = next(iter(both))
    assert batch.size == 60 and both.vocabulary["C1"].counts.sum() == 2 * sum(
        1 for r in rows if r[14])


def test_multiple_csv_files_skip_each_header(tmp_path):
    (tmp_path / "s.toml").write_text(SCHEMA)
    (tmp_path / "a.csv").write_text(CSV)
    (tmp_path / "b.csv").write_text(CSV)
    ds = open_dataset([tmp_path / "a.csv", tmp_path / "b.csv"], "csv", schema=tmp_path / "s.toml")
    labels, _, _ = collect(ds)
    assert labels.shape == (10,)


def test_header_with_byte_order_mark(tmp_path):
    schema = Schema.from_dict({"label": {"column": "y"},
                               "features": [{"name": "a", "type": "categorical"}]})
    path = tmp_path / "bom.csv"
    path.write_bytes("y,a\n1,x\n".encode("utf-8-sig"))
    batch = next(iter(open_dataset(path, "csv", schema=schema)))
    assert batch.labels.tolist() == [1.0] and batch.sparse["a"].values.tolist() == [2]
