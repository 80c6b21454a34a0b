"""libsvm and libffm readers against a brute-force parse."""
import numpy as np
import pytest

from sparse_train.data import load_featindex, open_dataset

from _data_reference import (assert_same_batches, collect, parse_pairs_rows, reference_pairs)

LIBFFM = """1 0:0:0.3651 2:1163:0.3651 3:8672:0.3651 1:17:1
0 1:1988:0.3651 2:400:0.3651 1:5:0.5 1:17:0.25
-1 0:0:1 2:1163:2.5e-1
+1 2:400:1
0\t1:5:1   0:3:1
"""


def assert_pairs_match(sparse, expected):
    assert sorted(sparse) == sorted(expected)
    for name, (values, offsets, weights) in expected.items():
        np.testing.assert_array_equal(sparse[name][0], values, err_msg=name)
        np.testing.assert_array_equal(sparse[name][1], offsets, err_msg=name)
        np.testing.assert_array_equal(sparse[name][2], weights, err_msg=name)


@pytest.mark.parametrize("mode, min_count", [("vocabulary", 1), ("vocabulary", 2), ("hash", 1)])
def test_libffm(tmp_path, mode, min_count):
    path = tmp_path / "train.ffm"
    path.write_text(LIBFFM)
    ds = open_dataset(path, "libffm", batch_size=2, ids=mode, min_count=min_count,
                      hash_buckets=50)
    labels, dense, sparse = collect(ds)
    ref_labels, rows = parse_pairs_rows(LIBFFM, with_field=True)
    names = [f"field_{f}" for f in range(4)]
    expected = reference_pairs(rows, lambda k, field, index: field, names, mode, min_count, 50)
    np.testing.assert_array_equal(labels, ref_labels)
    assert dense.shape == (5, 0)
    assert_pairs_match(sparse, expected)
    spec = ds.spec
    assert [f.name for f in spec.sparse_features] == names  # num_fields found by a scan
    assert all(f.multi_hot and f.weighted for f in spec.sparse_features)
    # field 1 of row 2 repeats: a weighted multi-hot bag
    values, offsets, weights = sparse["field_1"]
    np.testing.assert_array_equal(weights[offsets[1]:offsets[2]], np.float32([0.3651, 0.5, 0.25]))


def test_libffm_num_fields_given_adds_empty_features(tmp_path):
    path = tmp_path / "train.ffm"
    path.write_text(LIBFFM)
    ds = open_dataset(path, "libffm", num_fields=6)
    _, _, sparse = collect(ds)
    assert sparse["field_5"][0].size == 0 and sparse["field_5"][1].tolist() == [0] * 6


LIBSVM = """1 3:1 7:0.5 12:1
0 7:1
-1 3:2 3:1 20:1
1 12:0.125
"""


def test_libsvm_one_feature(tmp_path):
    path = tmp_path / "d.svm"
    path.write_text(LIBSVM)
    labels, _, sparse = collect(open_dataset(path, "libsvm", batch_size=3))
    ref_labels, rows = parse_pairs_rows(LIBSVM, with_field=False)
    np.testing.assert_array_equal(labels, ref_labels)
    assert_pairs_match(sparse, reference_pairs(rows, lambda k, f, i: 0, ["features"]))


def test_libsvm_featindex_fields(tmp_path):
    (tmp_path / "d.svm").write_text(LIBSVM)
    (tmp_path / "featindex.txt").write_text(
        "truncate\t0\n1:other\t3\n2:a\t7\n1:b\t12\n3:x:y\t20\n")
    index = load_featindex(tmp_path / "featindex.txt")
    assert index.fields == ("1", "2", "3", "truncate")
    ds = open_dataset(tmp_path / "d.svm", "libsvm", featindex=tmp_path / "featindex.txt")
    _, _, sparse = collect(ds)
    field = {3: 0, 7: 1, 12: 0, 20: 2, 0: 3}
    names = ["field_1", "field_2", "field_3", "field_truncate"]
    _, rows = parse_pairs_rows(LIBSVM, with_field=False)
    assert_pairs_match(sparse, reference_pairs(rows, lambda k, f, i: field[i], names))


def test_libsvm_positional_fields(tmp_path):
    text = "1 1:1 6:1 31:1\n0 4:1 9:1\n0 1:1 7:1 30:0.5\n"
    (tmp_path / "d.svm").write_text(text)
    train = open_dataset(tmp_path / "d.svm", "libsvm", num_fields=3)
    _, _, sparse = collect(train)
    _, rows = parse_pairs_rows(text, with_field=False)
    names = ["field_0", "field_1", "field_2"]
    assert_pairs_match(sparse, reference_pairs(rows, lambda k, f, i: k, names))
    # a file read with like= uses the training ids: unseen indices are OOV
    (tmp_path / "v.svm").write_text("1 1:1 8:1 31:1\n")
    valid = open_dataset(tmp_path / "v.svm", "libsvm", num_fields=3, like=train)
    batch = next(iter(valid))
    assert batch.sparse["field_1"].values.tolist() == [1]
    assert batch.sparse["field_0"].values.tolist() == train.vocabulary["field_0"].lookup(["1"]).tolist()


@pytest.mark.parametrize("chunk_bytes", [1, 5, 33])
def test_streaming_chunk_size_does_not_change_batches(tmp_path, chunk_bytes):
    path = tmp_path / "train.ffm"
    path.write_text(LIBFFM * 7)
    big = list(open_dataset(path, "libffm", batch_size=4).batches())
    small = list(open_dataset(path, "libffm", batch_size=4, chunk_bytes=chunk_bytes,
                              prefetch=0).batches())
    assert_same_batches(big, small)


def test_unweighted(tmp_path):
    path = tmp_path / "d.svm"
    path.write_text(LIBSVM)
    ds = open_dataset(path, "libsvm", weighted=False)
    assert next(iter(ds)).sparse["features"].weights is None
    assert not ds.spec.feature("features").weighted
