"""Parquet reader: the same vocabulary, batches and trained model as the CSV
twin of the same rows (the CSV reader is tested against a brute-force
parse); types from the Arrow schema; bad rows named by file, row group and
row."""
import numpy as np
import pytest

pa = pytest.importorskip("pyarrow", reason="the 'parquet' extra (pyarrow) is not installed")
pq = pytest.importorskip("pyarrow.parquet", reason="the 'parquet' extra (pyarrow) is not installed")

from sparse_train import GlobalStep, collections, optim  # noqa: E402
from sparse_train.data import DataError, Schema, SchemaError, open_dataset  # noqa: E402
from sparse_train.models import build_model, train_step  # noqa: E402

from _data_reference import assert_same_batches  # noqa: E402

SCHEMA = Schema.from_dict({"label": {"column": "y"}, "features": [
    {"name": "user", "type": "categorical"},
    {"name": "item", "type": "categorical"},
    {"name": "tags", "type": "multi_hot", "separator": "|"},
    {"name": "age", "type": "numeric", "transform": "log1p"},
    {"name": "price", "type": "numeric"}]})


def rows(n, seed):
    """Columns with what CSV cells can say: missing cells, empty and null
    list items, repeats (for the vocabulary order), floats and negatives."""
    rng = np.random.default_rng(seed)
    user = [None if rng.random() < 0.1 else ("" if rng.random() < 0.05 else f"u{x}")
            for x in rng.zipf(1.6, n) % 40]
    item = [None if rng.random() < 0.1 else int(x) for x in rng.integers(-3, 25, n)]
    tags = []
    for _ in range(n):
        r = rng.random()
        tags.append(None if r < 0.05 else [] if r < 0.1 else
                    [None if rng.random() < 0.1 else "" if rng.random() < 0.05 else f"t{x}"
                     for x in rng.integers(0, 9, rng.integers(1, 5))])
    age = [None if rng.random() < 0.1 else float(x) for x in np.round(rng.uniform(-5, 90, n), 3)]
    # at most 15 significant digits: the CSV number parser is exact there
    # (kernels/data_csv.parse_number), so both twins hold the same doubles
    price = [float(x) for x in np.round(rng.standard_normal(n) * 100, 9)]
    return {"y": [int(v) for v in rng.integers(0, 2, n)], "user": user, "item": item,
            "tags": tags, "age": age, "price": price}


def write_twins(tmp_path, columns, row_group_size, name="log"):
    """The Parquet file and its CSV twin (same rows, same order)."""
    table = pa.table({"y": pa.array(columns["y"], pa.int64()),
                      "user": pa.array(columns["user"], pa.string()),
                      "item": pa.array(columns["item"], pa.int64()),
                      "tags": pa.array(columns["tags"], pa.list_(pa.string())),
                      "age": pa.array(columns["age"], pa.float64()),
                      "price": pa.array(columns["price"], pa.float64())})
    parquet = tmp_path / f"{name}.parquet"
    pq.write_table(table, parquet, row_group_size=row_group_size)
    lines = ["y,user,item,tags,age,price"]
    for i in range(len(columns["y"])):
        cells = [str(columns["y"][i]), columns["user"][i] or "",
                 "" if columns["item"][i] is None else str(columns["item"][i]),
                 "|".join(t or "" for t in columns["tags"][i] or []),
                 "" if columns["age"][i] is None else repr(columns["age"][i]),
                 repr(columns["price"][i])]
        lines.append(",".join(cells))
    csv = tmp_path / f"{name}.csv"
    csv.write_text("\n".join(lines) + "\n")
    return parquet, csv


@pytest.fixture(autouse=True)
def _fresh_collections():
    collections.reset_collections()
    yield
    collections.reset_collections()


def test_parquet_and_its_csv_twin_give_the_same_batches(tmp_path):
    parquet, csv = write_twins(tmp_path, rows(700, 0), row_group_size=128)
    # chunk_bytes 64 * 50: slices of 50 rows inside the row groups
    a = open_dataset(parquet, "parquet", schema=SCHEMA, batch_size=64, chunk_bytes=64 * 50,
                     min_count=2)
    b = open_dataset(csv, "csv", schema=SCHEMA, batch_size=64, min_count=2)
    assert a.spec == b.spec
    assert a.vocabulary == b.vocabulary
    batches = list(a)
    assert_same_batches(batches, list(b))
    tags = np.concatenate([x.sparse["tags"].values for x in batches])
    assert (tags == 0).any() and (tags > 1).any()  # missing bags and kept tokens both seen
    assert a.num_examples == 700


def test_string_column_split_on_the_separator(tmp_path):
    columns = rows(200, 1)
    parquet, csv = write_twins(tmp_path, columns, row_group_size=64)
    joined = pa.table({**{k: pq.read_table(parquet).column(k) for k in
                          ("y", "user", "item", "age", "price")},
                       "tags": pa.array(["|".join(t or "" for t in v or []) for v in
                                         columns["tags"]])})
    pq.write_table(joined, tmp_path / "joined.parquet", row_group_size=50)
    a = open_dataset(tmp_path / "joined.parquet", "parquet", schema=SCHEMA, batch_size=32)
    assert_same_batches(list(a), list(open_dataset(csv, "csv", schema=SCHEMA, batch_size=32)))


def test_same_trained_model_bit_for_bit(tmp_path):
    parquet, csv = write_twins(tmp_path, rows(400, 2), row_group_size=100)
    results = []
    for path, fmt in ((parquet, "parquet"), (csv, "csv")):
        collections.reset_collections()
        data = open_dataset(path, fmt, schema=SCHEMA, batch_size=50)
        model = build_model("deepfm", data.spec, embedding_dim=4, hidden_units=(6,), seed=1,
                            scope="twin")  # same scope: same initial values
        gs = GlobalStep()
        sparse, dense = optim.Adagrad(0.1), optim.Adam(0.01)
        losses = [train_step(model, batch, sparse, dense, gs) for batch in data]
        results.append((losses, [v.value.copy() for v in model.variables()]))
    (losses_a, values_a), (losses_b, values_b) = results
    assert losses_a == losses_b
    for x, y in zip(values_a, values_b):
        np.testing.assert_array_equal(x, y)


def test_types_from_the_arrow_schema(tmp_path):
    parquet, csv = write_twins(tmp_path, rows(150, 3), row_group_size=40)
    inferred = open_dataset(parquet, "parquet", label="y", batch_size=32)
    no_log = Schema.from_dict({"label": {"column": "y"}, "features": [
        {"name": "user", "type": "categorical"}, {"name": "item", "type": "categorical"},
        {"name": "tags", "type": "multi_hot", "separator": "|"},
        {"name": "age", "type": "numeric"}, {"name": "price", "type": "numeric"}]})
    assert [(f.name, f.multi_hot) for f in inferred.spec.sparse_features] == [
        ("user", False), ("item", False), ("tags", True)]
    assert inferred.spec.dense_features == ("age", "price")
    assert_same_batches(list(inferred), list(open_dataset(csv, "csv", schema=no_log,
                                                          batch_size=32)))


def test_files_and_globs_in_order(tmp_path):
    first, _ = write_twins(tmp_path, rows(90, 4), 30, name="part-0")
    second, _ = write_twins(tmp_path, rows(60, 5), 30, name="part-1")
    by_glob = open_dataset(str(tmp_path / "part-*.parquet"), "parquet", label="y",
                           batch_size=40)
    by_list = open_dataset([first, second], "parquet", label="y", batch_size=40)
    assert_same_batches(list(by_glob), list(by_list))
    assert by_glob.num_examples == 150
    with pytest.raises(FileNotFoundError, match="no Parquet file matches"):
        open_dataset(str(tmp_path / "nothing-*.parquet"), "parquet", label="y")


def test_split_views_partition_the_rows(tmp_path):
    parquet, _ = write_twins(tmp_path, rows(300, 6), 64)
    train, valid = open_dataset(parquet, "parquet", label="y", batch_size=1000).split(0.25, 0)
    assert type(train).__name__ == type(valid).__name__ == "ParquetDataset"
    n_train, n_valid = sum(b.size for b in train), sum(b.size for b in valid)
    assert n_train + n_valid == 300 and 30 < n_valid < 120


def bad_file(tmp_path, column, values, dtype, n=250, group=100):
    columns = rows(n, 7)
    table = pa.table({"y": pa.array(columns["y"], pa.float64()),
                      "user": pa.array(columns["user"], pa.string()),
                      "price": pa.array(columns["price"], pa.float64())})
    table = table.set_column(table.schema.get_field_index(column), column,
                             pa.array(values, dtype))
    path = tmp_path / "bad.parquet"
    pq.write_table(table, path, row_group_size=group)
    return path


def test_bad_rows_named_by_file_row_group_and_row(tmp_path):
    labels = [1.0] * 250
    labels[216] = None  # row 217 of the file, in row group 2 (rows 201-250)
    path = bad_file(tmp_path, "y", labels, pa.float64())
    with pytest.raises(DataError, match=r"bad\.parquet:217: row group 2: label column 'y' "
                                        r"is null") as err:
        list(open_dataset(path, "parquet", label="y", ids="hash"))
    assert err.value.line == 217
    labels[216] = 3.0
    path = bad_file(tmp_path, "y", labels, pa.float64())
    with pytest.raises(DataError, match=r":217: row group 2: label column 'y': 3.0 is not 0 or 1"):
        list(open_dataset(path, "parquet", label="y", ids="hash"))
    prices = [1.0] * 250
    prices[4] = float("nan")
    path = bad_file(tmp_path, "price", prices, pa.float64())
    with pytest.raises(DataError, match=r":5: row group 0: numeric column 'price': nan"):
        list(open_dataset(path, "parquet", label="y", ids="hash"))
    skipping = open_dataset(path, "parquet", label="y", ids="hash", on_bad_line="skip")
    assert sum(b.size for b in skipping) == 249 and skipping.skipped_lines == 1
    assert skipping.bad_line_examples[0][:2] == (str(path), 5)


def test_wrong_types_and_missing_columns_named_before_reading(tmp_path):
    path = bad_file(tmp_path, "price", [str(i) for i in range(250)], pa.string())
    wrong = Schema.from_dict({"label": {"column": "y"}, "features": [
        {"name": "price", "type": "numeric"}]})
    with pytest.raises(SchemaError, match=r"bad\.parquet: feature 'price': column 'price' has "
                                          r"type string; it must be integer or floating"):
        open_dataset(path, "parquet", schema=wrong)
    missing = Schema.from_dict({"label": {"column": "y"}, "features": [
        {"name": "age", "type": "numeric"}]})
    with pytest.raises(SchemaError, match=r"bad\.parquet: feature 'age' reads column 'age'"):
        open_dataset(path, "parquet", schema=missing)
    with pytest.raises(SchemaError, match="needs label="):
        open_dataset(path, "parquet")
    with pytest.raises(ValueError, match="label applies to format parquet"):
        open_dataset(path, "csv", schema=wrong, label="y")
    floats = pa.table({"y": [0, 1], "flags": pa.array([True, False])})
    pq.write_table(floats, tmp_path / "bool.parquet")
    with pytest.raises(SchemaError, match="column 'flags' has type bool"):
        open_dataset(tmp_path / "bool.parquet", "parquet", label="y")


def test_boolean_label_column(tmp_path):
    table = pa.table({"clicked": pa.array([True, False, None, True]),
                      "user": pa.array(["a", "b", "a", "c"])})
    pq.write_table(table, tmp_path / "b.parquet")
    with pytest.raises(DataError, match=r"b\.parquet:3: row group 0: label column 'clicked' "
                                        r"is null"):
        list(open_dataset(tmp_path / "b.parquet", "parquet", label="clicked"))
    data = open_dataset(tmp_path / "b.parquet", "parquet", label="clicked",
                        on_bad_line="skip")
    assert next(iter(data)).labels.tolist() == [1.0, 0.0, 1.0]
