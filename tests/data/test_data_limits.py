"""Limits against hostile input, given through ``open_dataset`` keywords:
each keyword reaches its check (a small limit trips it, naming file, line
or feature and the limit) and the default lets the same data through."""
import pytest

from sparse_train.data import DataError, Schema, open_dataset

SCHEMA = Schema.from_dict({"label": {"column": "y"}, "features": [
    {"name": "user", "type": "categorical"}, {"name": "item", "type": "categorical"}]})


def users_csv(tmp_path, num_users, repeats=1):
    rows = [f"{i % 2},u{i % num_users},i{i % 3}" for i in range(num_users * repeats)]
    path = tmp_path / f"u{num_users}x{repeats}.csv"
    path.write_text("y,user,item\n" + "\n".join(rows) + "\n")
    return path


def test_max_vocabulary_size(tmp_path):
    # 8 tokens + missing + out-of-vocabulary = 10 ids: at the limit, allowed
    spec = open_dataset(users_csv(tmp_path, 8), "csv", schema=SCHEMA,
                        max_vocabulary_size=10).spec
    assert spec.feature("user").num_embeddings == 10
    path = users_csv(tmp_path, 9)
    with pytest.raises(DataError, match=r"feature 'user': its vocabulary passes "
                                        r"max_vocabulary_size = 10 ids.*min_count.*hash") as info:
        open_dataset(path, "csv", schema=SCHEMA, max_vocabulary_size=10).spec
    assert info.value.path == str(path)
    # the limit is checked chunk by chunk, during the counting pass
    many = users_csv(tmp_path, 400)
    with pytest.raises(DataError, match=r"by line \d+ "):
        open_dataset(many, "csv", schema=SCHEMA, max_vocabulary_size=50, chunk_bytes=256).spec
    # min_count keeps rare tokens out of the ids; the train view of a split keeps the limit
    twice = users_csv(tmp_path, 9, repeats=2)
    ok = open_dataset(twice, "csv", schema=SCHEMA, max_vocabulary_size=10, min_count=3)
    assert ok.spec.feature("user").num_embeddings == 2
    train, _ = open_dataset(twice, "csv", schema=SCHEMA, max_vocabulary_size=5).split(0.2)
    with pytest.raises(DataError, match="max_vocabulary_size = 5"):
        train.spec
    with pytest.raises(ValueError, match=r"'user': hash_buckets = 64 .*max_vocabulary_size = 10"):
        open_dataset(path, "csv", schema=SCHEMA, ids="hash", hash_buckets=64,
                     max_vocabulary_size=10)
    # libsvm indices form a vocabulary too
    svm = tmp_path / "d.svm"
    svm.write_text("".join(f"1 {i}:1\n" for i in range(20)))
    with pytest.raises(DataError, match="feature 'features'.*max_vocabulary_size = 12"):
        open_dataset(svm, "libsvm", max_vocabulary_size=12).spec
    with pytest.raises(ValueError, match="max_vocabulary_size must be a positive integer"):
        open_dataset(path, "csv", schema=SCHEMA, max_vocabulary_size=0)


def test_max_line_bytes(tmp_path):
    path = tmp_path / "d.csv"
    path.write_text("y,user,item\n1,u1,i1\n0,u" + "x" * 300 + ",i2\n1,u2,i1\n")
    with pytest.raises(DataError, match=r"d\.csv:3: line is longer than max_line_bytes = 100"):
        open_dataset(path, "csv", schema=SCHEMA, max_line_bytes=100, chunk_bytes=32).spec
    assert open_dataset(path, "csv", schema=SCHEMA, chunk_bytes=32).spec  # default: read
    header = tmp_path / "h.tsv"  # line 1, read to detect the format / the header
    header.write_text("1\t" + "7" * 300 + "\n")
    with pytest.raises(DataError, match=r"h\.tsv.*line 1 is longer than max_line_bytes = 64"):
        open_dataset(header, "criteo", max_line_bytes=64)
    with pytest.raises(DataError, match=r"d\.csv:1: line 1 is longer than max_line_bytes = 8 "):
        open_dataset(path, "csv", schema=Schema.from_dict({
            "data": {"header": False, "names": ["y", "user", "item"]},
            "label": {"column": "y"}, "features": [{"name": "user", "type": "categorical"}]}),
            max_line_bytes=8)
    ffm = tmp_path / "d.ffm"  # the libffm field scan reads lines too
    ffm.write_text("1 0:1:1\n0 " + " ".join(f"1:{i}:1" for i in range(40)) + "\n")
    with pytest.raises(DataError, match=r"d\.ffm:2: line is longer than max_line_bytes = 50"):
        open_dataset(ffm, "libffm", max_line_bytes=50, chunk_bytes=16)


def test_max_fields(tmp_path):
    path = tmp_path / "d.ffm"
    path.write_text("1 0:1:1 3:2:1\n0 49:1:1\n")
    with pytest.raises(DataError, match=r"d\.ffm:2: field 49 is not below max_fields = 10"):
        open_dataset(path, "libffm", max_fields=10)
    assert len(open_dataset(path, "libffm").spec.sparse_features) == 50
    with pytest.raises(ValueError, match="num_fields = 20 exceeds max_fields = 10"):
        open_dataset(path, "libffm", num_fields=20, max_fields=10)


def test_max_bag_length(tmp_path):
    path = tmp_path / "d.svm"
    path.write_text("1 1:1 2:1\n0 " + " ".join(f"{i}:1" for i in range(5)) + "\n1 3:1\n")
    with pytest.raises(DataError, match=r"d\.svm:2: more than max_bag_length = 4 pairs"):
        open_dataset(path, "libsvm", max_bag_length=4).spec
    skipping = open_dataset(path, "libsvm", max_bag_length=4, on_bad_line="skip")
    assert sum(b.size for b in skipping) == 2 and skipping.skipped_lines == 1
    assert sum(b.size for b in open_dataset(path, "libsvm", max_bag_length=5)) == 3


def test_max_index(tmp_path):
    (tmp_path / "d.svm").write_text("1 3:1\n0 1000:1\n")
    (tmp_path / "fi.txt").write_text("1:a\t3\n2:b\t1000\n")
    with pytest.raises(DataError, match=r"fi\.txt:2: index 1000 exceeds max_index = 100"):
        open_dataset(tmp_path / "d.svm", "libsvm", featindex=tmp_path / "fi.txt", max_index=100)
    ds = open_dataset(tmp_path / "d.svm", "libsvm", featindex=tmp_path / "fi.txt")
    assert [f.name for f in ds.spec.sparse_features] == ["field_1", "field_2"]
