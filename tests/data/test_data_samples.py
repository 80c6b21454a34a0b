"""Every reader parses its real sample in ../shared/datasets/ (never copied
here), value for value against the plain-Python parse of ``_data_reference``
(Python's csv module, str.split, float), plus counts taken from the files."""
import csv
import sys
from pathlib import Path

import numpy as np
import pytest

from sparse_train.data import open_dataset

from _data_reference import (SHARED, collect, parse_csv_rows, parse_pairs_rows,
                             reference_delimited, reference_pairs)

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

SCHEMAS = Path(__file__).resolve().parents[2] / "datasets"

#: Rows of the iPinYou sample held against the reference (its 26,773 take
#: seconds in plain Python).
HEAD = 3000


def _head(path, lines=HEAD):
    """The first ``lines`` lines of a text file."""
    with open(path) as f:
        return "".join(next(f) for _ in range(lines))


pytestmark = pytest.mark.skipif(
    not SHARED.is_dir(), reason=f"real samples not available: {SHARED} is absent")


def check_batches(ds, rows, positives):
    labels, dense, sparse = collect(ds, batch_size=64)
    assert labels.shape == (rows,) and labels.sum() == positives
    assert dense.shape == (rows, ds.spec.num_dense) and np.isfinite(dense).all()
    for feature in ds.spec.sparse_features:
        values, offsets, weights = sparse[feature.name]
        assert offsets.shape == (rows + 1,)
        assert values.size == 0 or (values.min() >= 0 and values.max() < feature.num_embeddings)
        assert (weights is not None) == feature.weighted
    assert ds.skipped_lines == 0
    return labels, dense, sparse


def assert_same_parse(got, expected, weighted=False):
    """(labels, dense, sparse) of the reader equal the reference's, exactly."""
    labels, dense, sparse = got
    ref_labels, ref_dense, ref_sparse = expected
    np.testing.assert_array_equal(labels, ref_labels)
    np.testing.assert_allclose(dense, ref_dense, rtol=1e-6, atol=1e-6)  # z-scores: float64 rounding
    assert list(sparse) == list(ref_sparse)
    for name, ref in ref_sparse.items():
        for what, a, b in zip(("values", "offsets", "weights"), sparse[name], ref):
            np.testing.assert_array_equal(a, b, err_msg=f"{name} {what}")
        assert (sparse[name][2] is not None) == weighted


def test_criteo_csv_sample():
    path = SHARED / "deepctr" / "criteo_sample.txt"
    ds = open_dataset(path, "criteo")
    _, dense, sparse = check_batches(ds, 200, 49)
    assert ds.spec.num_dense == 13 and len(ds.spec.sparse_features) == 26
    _, rows = parse_csv_rows(path.read_text(), ",", header=True)
    features = [(f"I{i}", "numeric", None, "log1p") for i in range(1, 14)]
    features += [(f"C{i}", "categorical", None, None) for i in range(1, 27)]
    assert_same_parse(collect(ds), reference_delimited(rows, "label", None, features))
    # spot checks by hand: row 1 has I2 = 3, I3 = 260.0, C1 = 05db9164; C20 has empty cells
    np.testing.assert_array_equal(dense[0, 1:3], np.float32([np.log1p(3.0), np.log1p(260.0)]))
    assert sparse["C1"][0][0] == ds.vocabulary["C1"].lookup(["05db9164"])[0] >= 2
    assert (sparse["C20"][0] == 0).any()  # empty cells are the missing id


@pytest.mark.parametrize("sample, schema, rows", [
    ("deepctr/movielens_sample.txt", "movielens_schema.toml", 200),
    ("deepctr/avazu_sample.txt", "avazu_schema.toml", 100),
    ("fuxictr_taobao_tiny/train_sample.csv", "taobao_schema.toml", 100),
])
@pytest.mark.parametrize("ids", ["vocabulary", "hash"])
def test_schema_samples(sample, schema, rows, ids):
    ds = open_dataset(SHARED / sample, "csv", schema=SCHEMAS / schema, ids=ids,
                      hash_buckets=1000)
    doc = tomllib.loads((SCHEMAS / schema).read_text())
    label, threshold = doc["label"]["column"], doc["label"].get("threshold")
    with open(SHARED / sample, newline="") as f:
        records = list(csv.DictReader(f))
    positives = sum((float(r[label]) >= threshold) if threshold is not None else float(r[label])
                    for r in records)
    check_batches(ds, rows, positives)
    features = [(f["name"], f["type"], f.get("separator"),
                 f.get("normalizer", f.get("transform"))) for f in doc["features"]]
    numeric = [f for f in features if f[1] == "numeric"]
    ordered = [f for f in features if f[1] != "numeric"]  # the reader's feature order
    expected = reference_delimited(records, label, threshold, numeric + ordered, ids,
                                   buckets=1000)
    assert_same_parse(collect(ds), (expected[0], expected[1],
                                    {f[0]: expected[2][f[0]] for f in ordered}))


def test_movielens_genres_multi_hot():
    ds = open_dataset(SHARED / "deepctr" / "movielens_sample.txt", "csv",
                      schema=SCHEMAS / "movielens_schema.toml")
    _, _, sparse = collect(ds)
    values, offsets, _ = sparse["genres"]
    # row 1 is "Comedy|Drama"
    assert values[offsets[0]:offsets[1]].tolist() == ds.vocabulary["genres"].lookup(
        ["Comedy", "Drama"]).tolist()


@pytest.mark.parametrize("split", ["train", "test"])
def test_libffm_xlearn_sample(split):
    path = SHARED / "xlearn" / f"criteo_ctr_small_{split}.txt"
    ds = open_dataset(path, "libffm", num_fields=18)
    positives = sum(line.split()[0] == "1" for line in open(path))
    _, _, sparse = check_batches(ds, 200, positives)
    lengths = np.stack([np.diff(sparse[f.name][1]) for f in ds.spec.sparse_features])
    assert lengths.max() > 1  # some rows repeat a field: weighted multi-hot bags
    labels, rows = parse_pairs_rows(path.read_text(), with_field=True)
    names = [f"field_{f}" for f in range(18)]
    expected = reference_pairs(rows, lambda k, field, index: field, names)
    assert_same_parse(collect(ds), (labels, np.zeros((200, 0), np.float32), expected),
                      weighted=True)


def test_libsvm_ipinyou_sample_positional_fields():
    folder = SHARED / "ipinyou_deepctr"
    train = open_dataset(folder / "train.fm.txt", "libsvm", num_fields=16)
    check_batches(train, 26_773, 255)
    test = open_dataset(folder / "test.fm.txt", "libsvm", num_fields=16, like=train)
    check_batches(test, 21_150, 50)
    # values against the reference on the first rows (the whole file: seconds in Python)
    head = open_dataset(folder / "train.fm.txt", "libsvm", num_fields=16, max_examples=HEAD)
    names = [f"field_{f}" for f in range(16)]
    labels, rows = parse_pairs_rows(_head(folder / "train.fm.txt"), with_field=False)
    expected = reference_pairs(rows, lambda k, field, index: k, names)
    assert_same_parse(collect(head, batch_size=512),
                      (labels, np.zeros((HEAD, 0), np.float32), expected), weighted=True)


def test_libsvm_ipinyou_sample_featindex():
    folder = SHARED / "ipinyou_deepctr"
    ds = open_dataset(folder / "train.fm.txt", "libsvm", featindex=folder / "featindex.txt",
                      on_bad_line="skip")
    # featindex.txt line 43 reads "20:1-10<TAB>42悠易互通.": not an integer index
    assert [line for _, line, _ in ds.bad_line_examples] == [43]
    got = collect(ds, batch_size=4096)
    assert got[0].shape == (26_773,) and got[0].sum() == 255
    assert ds.skipped_lines == 1
    # the reference: index -> field label from the file's well-formed lines, by str.split
    field_of_index = {}
    for line in (folder / "featindex.txt").read_text(encoding="utf-8").splitlines():
        key, _, index = line.rpartition("\t")
        if index.isdigit():
            field_of_index[int(index)] = key.split(":", 1)[0]
    labels_sorted = sorted(set(field_of_index.values()),
                           key=lambda f: (0, int(f), "") if f.isdigit() else (1, 0, f))
    feature = {label: k for k, label in enumerate(labels_sorted)}
    names = [f"field_{label}" for label in labels_sorted]
    head = open_dataset(folder / "train.fm.txt", "libsvm", featindex=folder / "featindex.txt",
                        on_bad_line="skip", max_examples=HEAD)
    labels, rows = parse_pairs_rows(_head(folder / "train.fm.txt"), with_field=False)
    expected = reference_pairs(rows, lambda k, field, index: feature[field_of_index[index]],
                               names)
    assert_same_parse(collect(head, batch_size=512),
                      (labels, np.zeros((HEAD, 0), np.float32), expected), weighted=True)
