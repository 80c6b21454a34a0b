"""Every reader parses its real sample in ../shared/datasets/ (never copied here)."""
from pathlib import Path

import numpy as np
import pytest

from sparse_train.data import open_dataset

from _data_reference import SHARED, collect

SCHEMAS = Path(__file__).resolve().parents[2] / "datasets"

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


def test_criteo_csv_sample():
    ds = open_dataset(SHARED / "deepctr" / "criteo_sample.txt", "criteo")
    _, dense, sparse = check_batches(ds, 200, 49)
    assert ds.spec.num_dense == 13 and len(ds.spec.sparse_features) == 26
    # row 1: I2 = 3, I3 = 260.0 -> log(1 + x); C1 = 05db9164 is a known token
    np.testing.assert_array_equal(dense[0, 1:3], np.float32([np.log1p(3.0), np.log1p(260.0)]))
    assert sparse["C1"][0][0] == ds.vocabulary["C1"].lookup(["05db9164"])[0] >= 2
    assert (sparse["C20"][0] == 0).any()  # empty cells are the missing id


@pytest.mark.parametrize("sample, schema, rows, positives", [
    ("deepctr/movielens_sample.txt", "movielens_schema.toml", 200, None),
    ("deepctr/avazu_sample.txt", "avazu_schema.toml", 100, 20),
    ("fuxictr_taobao_tiny/train_sample.csv", "taobao_schema.toml", 100, None),
])
def test_schema_samples(sample, schema, rows, positives):
    ds = open_dataset(SHARED / sample, "csv", schema=SCHEMAS / schema)
    if positives is None:  # count from the file with the csv module
        import csv
        with open(SHARED / sample, newline="") as f:
            records = list(csv.DictReader(f))
        if ds.parser.schema.threshold is None:
            positives = sum(float(r[ds.parser.schema.label]) for r in records)
        else:
            positives = sum(float(r[ds.parser.schema.label]) >= ds.parser.schema.threshold
                            for r in records)
    check_batches(ds, rows, positives)


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


def test_libsvm_ipinyou_sample_positional_fields():
    train = open_dataset(SHARED / "ipinyou_deepctr" / "train.fm.txt", "libsvm", num_fields=16)
    check_batches(train, 26_773, 255)
    test = open_dataset(SHARED / "ipinyou_deepctr" / "test.fm.txt", "libsvm", num_fields=16,
                        like=train)
    check_batches(test, 21_150, 50)


def test_libsvm_ipinyou_sample_featindex():
    folder = SHARED / "ipinyou_deepctr"
    ds = open_dataset(folder / "train.fm.txt", "libsvm", featindex=folder / "featindex.txt",
                      on_bad_line="skip")
    # featindex.txt line 43 reads "20:1-10<TAB>42悠易互通.": not an integer index
    assert [line for _, line, _ in ds.bad_line_examples] == [43]
    labels, _, sparse = collect(ds, batch_size=4096)
    assert labels.shape == (26_773,) and labels.sum() == 255
    assert ds.skipped_lines == 1
