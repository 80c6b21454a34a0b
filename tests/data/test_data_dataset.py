"""The common interface: splits by seed, shared ids, saved vocabularies,
shuffling, row limits."""
import numpy as np
import pytest

from sparse_train.data import held_out_rows, open_dataset

from _data_reference import assert_same_batches, collect


def write_csv(path, num_rows, seed=0):
    rng = np.random.default_rng(seed)
    lines = ["y,item,tags,price"]
    for i in range(num_rows):
        tags = "|".join(f"t{x}" for x in rng.integers(0, 6, rng.integers(0, 4)))
        lines.append(f"{int(rng.random() < 0.3)},i{rng.zipf(1.6) % 40},{tags},{rng.random() * 9:.3f}")
    path.write_text("\n".join(lines) + "\n")
    return path


SCHEMA = """
[label]
column = "y"
[[features]]
name = "item"
type = "categorical"
[[features]]
name = "tags"
type = "multi_hot"
separator = "|"
[[features]]
name = "price"
type = "numeric"
"""


@pytest.fixture
def csv_data(tmp_path):
    (tmp_path / "s.toml").write_text(SCHEMA)
    return write_csv(tmp_path / "d.csv", 300), tmp_path / "s.toml"


def test_held_out_rows_is_deterministic_and_near_fraction():
    lines = np.arange(1, 20001)
    mask = held_out_rows(0, lines, 0.2, seed=3)
    assert abs(mask.mean() - 0.2) < 0.015
    np.testing.assert_array_equal(mask, held_out_rows(0, lines, 0.2, seed=3))
    assert (mask != held_out_rows(0, lines, 0.2, seed=4)).any()
    assert (mask != held_out_rows(1, lines, 0.2, seed=3)).any()
    # a larger fraction holds out a superset: the split is a threshold on u
    assert (held_out_rows(0, lines, 0.3, seed=3) >= mask).all()


def test_split_partitions_rows_and_fits_vocabulary_on_train(csv_data):
    data, schema = csv_data
    full = open_dataset(data, "csv", schema=schema)
    train, valid = full.split(0.25, seed=1)
    labels, _, _ = collect(full)
    held = held_out_rows(0, np.arange(2, 302), 0.25, seed=1)  # data lines 2..301
    train_labels, train_dense, _ = collect(train)
    valid_labels, valid_dense, _ = collect(valid)
    np.testing.assert_array_equal(train_labels, labels[~held])
    np.testing.assert_array_equal(valid_labels, labels[held])
    assert train.num_examples == (~held).sum() and valid.num_examples == held.sum()
    # ids come from the train rows only, and valid uses the very same encoders
    assert valid.vocabulary is train.vocabulary
    assert train.vocabulary["item"].counts.sum() == (~held).sum()
    assert valid.spec == train.spec


def test_split_does_not_depend_on_chunking(csv_data):
    data, schema = csv_data
    a = open_dataset(data, "csv", schema=schema, batch_size=16).split(0.3, seed=2)
    b = open_dataset(data, "csv", schema=schema, batch_size=16, chunk_bytes=50,
                     prefetch=0).split(0.3, seed=2)
    for x, y in zip(a, b):
        assert_same_batches(list(x), list(y))


def test_like_and_saved_vocabulary_give_the_same_ids(csv_data, tmp_path):
    data, schema = csv_data
    train = open_dataset(data, "csv", schema=schema, min_count=2)
    other = write_csv(tmp_path / "other.csv", 50, seed=9)
    by_like = list(open_dataset(other, "csv", schema=schema, like=train))
    train.save_vocabulary(tmp_path / "vocab.json")
    by_file = list(open_dataset(other, "csv", schema=schema, vocabulary=tmp_path / "vocab.json"))
    assert_same_batches(by_like, by_file)
    refit = open_dataset(other, "csv", schema=schema, min_count=2)
    assert refit.vocabulary["item"] != train.vocabulary["item"]


def test_vocabulary_file_missing_a_feature(csv_data, tmp_path):
    from sparse_train.data import DataError, HashBuckets, save_vocabulary
    data, schema = csv_data
    save_vocabulary(tmp_path / "v.json", {"item": HashBuckets(8)})
    with pytest.raises(DataError, match=r"v.json: the vocabulary has no ids for feature\(s\) \['tags'\]"):
        open_dataset(data, "csv", schema=schema, vocabulary=tmp_path / "v.json")


def test_shuffle_permutes_rows_within_a_pass(csv_data):
    data, schema = csv_data
    ds = open_dataset(data, "csv", schema=schema, batch_size=64)
    plain = collect(ds)
    shuffled = collect(ds, shuffle=True, seed=5)
    again = collect(ds, shuffle=True, seed=5)
    np.testing.assert_array_equal(shuffled[1], again[1])
    assert not np.array_equal(shuffled[1], plain[1])
    order = np.argsort(plain[1][:, 0], kind="stable")
    np.testing.assert_array_equal(np.sort(shuffled[1][:, 0]), plain[1][order, 0])


def test_max_examples_and_drop_last(csv_data):
    data, schema = csv_data
    ds = open_dataset(data, "csv", schema=schema, batch_size=40, max_examples=100, chunk_bytes=64)
    assert [b.size for b in ds] == [40, 40, 20]
    assert [b.size for b in ds.batches(drop_last=True)] == [40, 40]
    assert ds.num_examples == 100  # rows in one pass (the progress bar's total)


def test_take_slice_concat_rows_against_python_lists():
    """The row operations every batch goes through, against lists of bags:
    random rows (repeats, any order), empty bags, per-id weights."""
    from sparse_train import Ragged
    from sparse_train.data import Batch
    from sparse_train.data._batching import concat, slice_rows, take_rows

    rng = np.random.default_rng(5)
    n = 50
    bags = [list(rng.integers(0, 99, rng.integers(0, 4))) for _ in range(n)]
    weights = [list(rng.random(len(b)).astype(np.float32)) for b in bags]
    ragged = Ragged.from_lengths(np.array(sum(bags, []), np.int64), [len(b) for b in bags],
                                 np.array(sum(weights, []), np.float32))
    batch = Batch(np.arange(n, dtype=np.float32), np.arange(2 * n, dtype=np.float32).reshape(n, 2),
                  {"f": ragged})

    def as_lists(b):
        r = b.sparse["f"]
        cut = [(r.offsets[i], r.offsets[i + 1]) for i in range(b.size)]
        return (b.labels.tolist(), b.dense.tolist(), [r.values[s:e].tolist() for s, e in cut],
                [r.weights[s:e].tolist() for s, e in cut])

    rows = rng.integers(0, n, 30)
    assert as_lists(take_rows(batch, rows)) == (
        [float(i) for i in rows], [[2.0 * i, 2.0 * i + 1] for i in rows],
        [[int(v) for v in bags[i]] for i in rows], [[float(w) for w in weights[i]] for i in rows])
    part = as_lists(slice_rows(batch, 7, 19))
    assert part[2] == [[int(v) for v in b] for b in bags[7:19]]
    joined = as_lists(concat([slice_rows(batch, 0, 20), slice_rows(batch, 20, n)]))
    assert joined == as_lists(batch)
