"""Bad input: malformed lines with file and line number, skipping and counting,
and what fails before any batch (missing file, unknown column, invalid schema)."""
import numpy as np
import pytest

from sparse_train.data import DataError, Schema, SchemaError, open_dataset

GOOD = "\t".join(["0"] + ["1"] * 13 + ["a"] * 26)


def criteo_file(tmp_path, bad_lines, total=12, blank_line_after=None):
    """A Criteo TSV whose lines (1-based) in ``bad_lines`` are replaced."""
    lines = []
    for number in range(1, total + 1):
        lines.append(bad_lines.get(number, GOOD))
        if number == blank_line_after:
            lines.append("")
    path = tmp_path / "day.tsv"
    path.write_text("\n".join(lines) + "\n")
    return path


CRITEO_BAD = {
    "short": ("\t".join(["0"] + ["1"] * 13 + ["a"] * 25), "expected 40 cells"),
    "number": ("\t".join(["0", "12abc"] + ["1"] * 12 + ["a"] * 26), "numeric column 'I1': '12abc'"),
    "label": ("\t".join(["x"] + ["1"] * 13 + ["a"] * 26), "label column 'label': 'x' is not a number"),
    "label_range": ("\t".join(["3"] + ["1"] * 13 + ["a"] * 26), "label column 'label': 3 is not 0 or 1"),
    "label_half": ("\t".join(["0.5"] + ["1"] * 13 + ["a"] * 26),
                   "label column 'label': 0.5 is not 0 or 1 .*threshold"),
    "label_empty": ("\t".join([""] + ["1"] * 13 + ["a"] * 26), "label column 'label' is empty"),
    "quote": ("\t".join(["0"] + ["1"] * 13 + ['"a'] + ["a"] * 25), "unterminated quote"),
    "huge": ("\t".join(["0", "1e39"] + ["1"] * 12 + ["a"] * 26), "float32 range"),
}


@pytest.mark.parametrize("kind", sorted(CRITEO_BAD))
def test_bad_line_error_names_file_and_line(tmp_path, kind):
    line, message = CRITEO_BAD[kind]
    # a blank line after line 3 still counts: the bad text is on line 8
    path = criteo_file(tmp_path, {7: line}, blank_line_after=3)
    ds = open_dataset(path, "criteo", numeric_transform="none")
    with pytest.raises(DataError, match=message) as info:
        ds.spec  # the vocabulary pass reads every line before any batch
    assert info.value.path == str(path) and info.value.line == 8
    assert str(info.value).startswith(f"{path}:8: ")


def test_bad_line_error_in_hash_mode_during_iteration(tmp_path):
    path = criteo_file(tmp_path, {5: CRITEO_BAD["short"][0]})
    ds = open_dataset(path, "criteo", ids="hash", batch_size=2, chunk_bytes=300)
    with pytest.raises(DataError, match=r"day.tsv:5: expected 40 cells") as info:
        list(ds)
    assert info.value.line == 5


def test_skip_counts_and_keeps_good_rows(tmp_path):
    bad = {2: CRITEO_BAD["short"][0], 5: CRITEO_BAD["number"][0], 11: CRITEO_BAD["label"][0]}
    path = criteo_file(tmp_path, bad)
    ds = open_dataset(path, "criteo", on_bad_line="skip", batch_size=4, chunk_bytes=200)
    sizes = [b.size for b in ds]
    assert sum(sizes) == 9 and sizes == [4, 4, 1]
    assert ds.skipped_lines == 3
    assert [(line, reason.split(":")[0]) for _, line, reason in ds.bad_line_examples] == [
        (2, "expected 40 cells separated by '\\t', got 39"), (5, "numeric column 'I1'"),
        (11, "label column 'label'")]
    # counted again, not accumulated, on the next pass
    list(ds)
    assert ds.skipped_lines == 3


LIBSVM_BAD = {
    "no_colon": ("1 3:1 7", "token 2 '7' is not index:value"),
    "bad_index": ("1 x:1", "token 1 'x:1' is not index:value"),
    "bad_value": ("1 3:abc", "token 1 '3:abc' is not index:value"),
    "label": ("yes 3:1", "label 'yes' is not a number"),
    "label_range": ("2 3:1", "label 2 is not 0/1"),
    "label_half": ("0.5 3:1", "label 0.5 is not 0/1 or -1/\\+1"),
    "negative_index": ("1 -3:1", "token 1 '-3:1'"),
}


@pytest.mark.parametrize("kind", sorted(LIBSVM_BAD))
def test_libsvm_bad_lines(tmp_path, kind):
    line, message = LIBSVM_BAD[kind]
    path = tmp_path / "d.svm"
    path.write_text("1 3:1\n0 4:1\n" + line + "\n1 5:1\n")
    with pytest.raises(DataError, match=message) as info:
        open_dataset(path, "libsvm").spec
    assert info.value.line == 3
    skipping = open_dataset(path, "libsvm", on_bad_line="skip")
    assert sum(b.size for b in skipping) == 3 and skipping.skipped_lines == 1


def test_libffm_bad_lines(tmp_path):
    path = tmp_path / "d.ffm"
    path.write_text("1 0:1:1 1:2:1\n0 0:1:1 1:2\n1 5:1:1\n")
    with pytest.raises(DataError, match=r"d.ffm:2: token 2 '1:2' is not field:index:value"):
        open_dataset(path, "libffm", num_fields=2).spec
    fields = tmp_path / "e.ffm"
    fields.write_text("1 0:1:1\n0 1:2:1\n1 5:1:1\n")
    with pytest.raises(DataError, match=r"e.ffm:3: field 5 is not in \[0, num_fields = 2\)"):
        list(open_dataset(fields, "libffm", num_fields=2, ids="hash", chunk_bytes=1))
    ds = open_dataset(path, "libffm", num_fields=2, on_bad_line="skip")
    assert sum(b.size for b in ds) == 1 and ds.skipped_lines == 2


def test_libsvm_index_missing_from_featindex(tmp_path):
    (tmp_path / "d.svm").write_text("1 3:1\n0 99:1\n")
    (tmp_path / "fi.txt").write_text("1:a\t3\n")
    with pytest.raises(DataError, match=r"d.svm:2: index 99 is not in the featindex"):
        open_dataset(tmp_path / "d.svm", "libsvm", featindex=tmp_path / "fi.txt").spec


def test_positional_fields_too_many_pairs(tmp_path):
    (tmp_path / "d.svm").write_text("1 3:1 4:1\n0 3:1 4:1 5:1\n")
    with pytest.raises(DataError, match=r"d.svm:2: 3 pairs, more than num_fields = 2"):
        open_dataset(tmp_path / "d.svm", "libsvm", num_fields=2).spec


def test_bad_featindex_line(tmp_path):
    (tmp_path / "d.svm").write_text("1 3:1\n")
    (tmp_path / "fi.txt").write_text("1:a\t3\n2:b\t4x\nno tab here\n")
    with pytest.raises(DataError, match=r"fi.txt:2: index '4x' is not a non-negative integer"):
        open_dataset(tmp_path / "d.svm", "libsvm", featindex=tmp_path / "fi.txt")
    ds = open_dataset(tmp_path / "d.svm", "libsvm", featindex=tmp_path / "fi.txt",
                      on_bad_line="skip")
    assert ds.skipped_lines == 2
    assert [line for _, line, _ in ds.bad_line_examples] == [2, 3]
    assert next(iter(ds)).size == 1


def test_bad_featindex_line_is_counted_once_over_train_and_valid(tmp_path):
    """The featindex belongs to the data, not to a view of it: a held-out
    split and a validation file read ``like=`` the training data do not
    count its malformed line again."""
    rows = "".join(f"{i % 2} {3 + i % 2}:1\n" for i in range(40))
    (tmp_path / "d.svm").write_text(rows)
    (tmp_path / "v.svm").write_text(rows[:24])
    (tmp_path / "fi.txt").write_text("1:a\t3\n2:b\t4\nno tab here\n")
    full = open_dataset(tmp_path / "d.svm", "libsvm", featindex=tmp_path / "fi.txt",
                        on_bad_line="skip")
    train, held_out = full.split(0.3, seed=0)
    valid = open_dataset(tmp_path / "v.svm", "libsvm", featindex=tmp_path / "fi.txt",
                         on_bad_line="skip", like=train)
    for ds in (train, held_out, valid):
        list(ds)
    assert (train.skipped_lines, held_out.skipped_lines, valid.skipped_lines) == (1, 0, 0)
    assert [line for _, line, _ in train.bad_line_examples] == [3]
    assert sum(b.size for b in train) + sum(b.size for b in held_out) == 40


def test_errors_raised_through_prefetch_thread(tmp_path):
    path = criteo_file(tmp_path, {30: CRITEO_BAD["short"][0]}, total=40)
    ds = open_dataset(path, "criteo", ids="hash", batch_size=4, chunk_bytes=256, prefetch=2)
    seen = 0
    with pytest.raises(DataError, match=":30: expected 40 cells"):
        for batch in ds:
            seen += batch.size
    assert seen < 30
    # closing early stops the thread without reading on
    batches = ds.batches()
    next(batches)
    batches.close()


# -- failures before any batch -------------------------------------------------

def test_missing_files(tmp_path):
    with pytest.raises(FileNotFoundError, match="data file not found: .*nope.tsv"):
        open_dataset(tmp_path / "nope.tsv", "criteo")
    (tmp_path / "d.svm").write_text("1 3:1\n")
    with pytest.raises(FileNotFoundError, match="featindex file not found"):
        open_dataset(tmp_path / "d.svm", "libsvm", featindex=tmp_path / "fi.txt")
    with pytest.raises(FileNotFoundError, match="schema file not found"):
        open_dataset(tmp_path / "d.svm", "csv", schema=tmp_path / "s.toml")


def test_unknown_column(tmp_path):
    (tmp_path / "s.toml").write_text(
        '[label]\ncolumn = "click"\n[[features]]\nname = "site"\ntype = "categorical"\n')
    (tmp_path / "d.csv").write_text("click,site_id\n1,a\n")
    with pytest.raises(SchemaError, match=r"s.toml: \[\[features\]\] 'site' reads column 'site', "
                                          r"which the header of .*d.csv does not have"):
        open_dataset(tmp_path / "d.csv", "csv", schema=tmp_path / "s.toml")


def test_criteo_header_without_expected_columns(tmp_path):
    (tmp_path / "d.csv").write_text("click,I1\n1,2\n")
    with pytest.raises(SchemaError, match=r"\[label\] column reads column 'label'"):
        open_dataset(tmp_path / "d.csv", "criteo")


def test_names_count_differs_from_first_line(tmp_path):
    schema = Schema.from_dict({"data": {"header": False, "names": ["y", "a"]},
                               "label": {"column": "y"},
                               "features": [{"name": "a", "type": "categorical"}]})
    (tmp_path / "d.csv").write_text("1,a,b\n")
    with pytest.raises(DataError, match=r"d.csv:1: line 1 has 3 cells, but the schema"):
        open_dataset(tmp_path / "d.csv", "csv", schema=schema)


VALID = {"data": {"delimiter": ",", "header": True}, "label": {"column": "y"},
         "features": [{"name": "g", "type": "multi_hot", "separator": "|"}]}


def broken(change):
    import copy
    doc = copy.deepcopy(VALID)
    change(doc)
    return doc


SCHEMA_ERRORS = [
    (lambda d: d["features"][0].update(type="multihot"), r"\[\[features\]\] #1 \('g'\): type must be one of"),
    (lambda d: d["features"][0].pop("separator"), r"#1 \('g'\): multi_hot needs separator"),
    (lambda d: d["features"][0].update(separator="||"), "separator = one single-byte character"),
    (lambda d: d["features"][0].update(seperator="|"), r"unknown key\(s\) \['seperator'\]"),
    (lambda d: d["features"][0].update(transform="log1p"), "transform applies to numeric"),
    (lambda d: d["features"].append({"name": "n", "type": "numeric", "transform": "log"}),
     r"#2 \('n'\): transform must be one of none, log1p"),
    (lambda d: d["features"].append({"name": "g", "type": "categorical"}), "duplicates: \\['g'\\]"),
    (lambda d: d["features"].append({"name": "y", "type": "categorical"}), "reads the label column"),
    (lambda d: d["features"].clear(), r"at least one \[\[features\]\]"),
    (lambda d: d.pop("label"), r"missing \[label\] table"),
    (lambda d: d["label"].update(threshold="4"), "threshold must be a number"),
    (lambda d: d["data"].update(header=False), "header = false needs names"),
    (lambda d: d["data"].update(delimiter=", "), "delimiter must be one single-byte character"),
    (lambda d: d["data"].update(names=["y", "y"]), "names has duplicates"),
    (lambda d: d["data"].update(names=["y", "h"]), r"\[\[features\]\] 'g' reads column 'g', which "
                                                   r"\[data\] names does not have"),
    (lambda d: d.update(extra={}), r"unknown table\(s\) \['extra'\]"),
    (lambda d: d["features"][0].update(min_count=0), "min_count must be a positive integer"),
    (lambda d: d["features"][0].update(ids="bloom"), "ids must be one of vocabulary, hash"),
]


@pytest.mark.parametrize("change, message", SCHEMA_ERRORS)
def test_invalid_schema_says_what_and_where(change, message):
    with pytest.raises(SchemaError, match=message) as info:
        Schema.from_dict(broken(change), source="my.toml")
    assert str(info.value).startswith("my.toml: ")


def test_invalid_toml_syntax(tmp_path):
    path = tmp_path / "s.toml"
    path.write_text('[label]\ncolumn = "y\n')
    with pytest.raises(SchemaError, match=r"s.toml: invalid TOML: .*line 2"):
        open_dataset(tmp_path / "s.toml", "csv", schema=path)


@pytest.mark.parametrize("kwargs, message", [
    (dict(format="orc"), "format must be one of"),
    (dict(format="criteo", on_bad_line="warn"), "on_bad_line must be"),
    (dict(format="criteo", batch_size=0), "batch_size must be"),
    (dict(format="criteo", ids="bloom"), "ids must be"),
    (dict(format="criteo", featindex="x"), "featindex applies to format libsvm"),
    (dict(format="libffm", schema="x"), "schema applies to format csv"),
    (dict(format="csv"), "needs schema="),
    (dict(format="criteo", min_count=0), "min_count must be a positive integer"),
])
def test_bad_options(tmp_path, kwargs, message):
    path = criteo_file(tmp_path, {})
    with pytest.raises(ValueError, match=message):
        open_dataset(path, **kwargs)


def test_empty_file(tmp_path):
    (tmp_path / "d.tsv").write_text("")
    with pytest.raises(DataError, match="d.tsv: the file is empty"):
        open_dataset(tmp_path / "d.tsv", "criteo")


# ---------------------------------------------------------------- click labels
def test_click_labels_must_be_0_or_1_in_every_reader(tmp_path):
    """0.5 (AUC needs 0/1) is refused at read time with file:line, the
    column and the value, in csv, criteo, libsvm and libffm; -1/+1 stay
    libsvm's 0/1; "skip" counts the line; a threshold binarises."""
    schema = Schema.from_dict({"label": {"column": "y"},
                               "features": [{"name": "u", "type": "categorical"}]})
    (tmp_path / "d.csv").write_text("y,u\n1,a\n0.0,b\n1.0,a\n0.5,c\n0,a\n")
    cases = [(tmp_path / "d.csv", "csv", {"schema": schema}, 5,
              r"d\.csv:5: label column 'y': 0\.5 is not 0 or 1"),
             (criteo_file(tmp_path, {4: "\t".join(["0.5"] + ["1"] * 13 + ["a"] * 26)}),
              "criteo", {}, 4, r"day\.tsv:4: label column 'label': 0\.5 is not 0 or 1")]
    (tmp_path / "d.svm").write_text("+1 3:1\n-1 4:1\n0.5 3:1\n1 5:1\n")
    (tmp_path / "d.ffm").write_text("1 0:1:1\n0 1:2:1\n1 0:3:1\n0.25 1:1:1\n")
    cases += [(tmp_path / "d.svm", "libsvm", {}, 3, r"d\.svm:3: label 0\.5 is not 0/1"),
              (tmp_path / "d.ffm", "libffm", {"num_fields": 2}, 4,
               r"d\.ffm:4: label 0\.25 is not 0/1")]
    for path, fmt, options, line, message in cases:
        with pytest.raises(DataError, match=message) as info:
            open_dataset(path, fmt, **options).spec
        assert info.value.line == line
        skipping = open_dataset(path, fmt, on_bad_line="skip", **options)
        labels = np.concatenate([b.labels for b in skipping])
        assert skipping.skipped_lines == 1 and skipping.bad_line_examples[0][1] == line
        assert set(labels.tolist()) <= {0.0, 1.0}, fmt
    svm = open_dataset(tmp_path / "d.svm", "libsvm", on_bad_line="skip")
    assert np.concatenate([b.labels for b in svm]).tolist() == [1.0, 0.0, 1.0]
    rated = Schema.from_dict({"label": {"column": "y", "threshold": 0.5},
                              "features": [{"name": "u", "type": "categorical"}]})
    binarised = open_dataset(tmp_path / "d.csv", "csv", schema=rated)
    assert np.concatenate([b.labels for b in binarised]).tolist() == [1, 0, 1, 1, 0]


def test_parquet_click_label_must_be_0_or_1(tmp_path):
    pa = pytest.importorskip("pyarrow", reason="the 'parquet' extra (pyarrow) is not installed")
    pq = pytest.importorskip("pyarrow.parquet", reason="the 'parquet' extra is not installed")
    path = tmp_path / "d.parquet"
    pq.write_table(pa.table({"y": pa.array([1.0, 0.0, 0.5, 1.0]),
                             "u": pa.array(["a", "b", "a", "c"])}), path)
    with pytest.raises(DataError, match=r"d\.parquet:3: row group 0: label column 'y': "
                                        r"0\.5 is not 0 or 1"):
        open_dataset(path, "parquet", label="y").spec
    skipping = open_dataset(path, "parquet", label="y", on_bad_line="skip")
    assert sum(b.size for b in skipping) == 3 and skipping.skipped_lines == 1
    flags = tmp_path / "b.parquet"
    pq.write_table(pa.table({"y": pa.array([True, False]), "u": pa.array(["a", "b"])}), flags)
    assert next(iter(open_dataset(flags, "parquet", label="y"))).labels.tolist() == [1.0, 0.0]


# ------------------------------------------------------------- Dataset.check
def valid_csv(tmp_path, name, last):
    rows = [f"{i % 2},u{i % 5},{i * 0.5}" for i in range(40)] + [last]
    (tmp_path / name).write_text("y,user,x\n" + "\n".join(rows) + "\n")
    return tmp_path / name


CHECK_SCHEMA = Schema.from_dict({"label": {"column": "y"}, "features": [
    {"name": "user", "type": "categorical"}, {"name": "x", "type": "numeric"}]})


def test_check_reads_validation_rows_before_training(tmp_path):
    """A validation file whose last line is bad fails at check() time,
    named by file:line, before any training batch is drawn."""
    train = open_dataset(valid_csv(tmp_path, "train.csv", "1,u9,3.5"), "csv",
                         schema=CHECK_SCHEMA, batch_size=8)
    for last, message in [("0.5,u1,2.0", r"valid\.csv:42: label column 'y': 0\.5 is not 0 or 1"),
                          ("1,u1,abc", r"valid\.csv:42: numeric column 'x': 'abc'"),
                          ("1,u1", r"valid\.csv:42: expected 3 cells")]:
        valid = open_dataset(valid_csv(tmp_path, "valid.csv", last), "csv",
                             schema=CHECK_SCHEMA, like=train, chunk_bytes=64)
        with pytest.raises(DataError, match=message) as info:
            valid.check()
        assert info.value.line == 42
    skipping = open_dataset(tmp_path / "valid.csv", "csv", schema=CHECK_SCHEMA, like=train,
                            on_bad_line="skip")
    assert skipping.check() == 40 and skipping.skipped_lines == 1
    good = open_dataset(valid_csv(tmp_path, "good.csv", "0,u7,1.0"), "csv",
                        schema=CHECK_SCHEMA, like=train)
    assert good.check() == 41 and good.skipped_lines == 0
    # a dataset fitting its own vocabulary: the counting pass is the check
    alone = open_dataset(tmp_path / "valid.csv", "csv", schema=CHECK_SCHEMA, ids="hash")
    with pytest.raises(DataError, match=r"valid\.csv:42"):
        alone.check()
    fitted = open_dataset(tmp_path / "valid.csv", "csv", schema=CHECK_SCHEMA)
    with pytest.raises(DataError, match=r"valid\.csv:42"):
        fitted.check()


def test_check_of_a_split_view_reads_its_held_out_rows(tmp_path):
    path = valid_csv(tmp_path, "all.csv", "0.5,u1,2.0")
    data = open_dataset(path, "csv", schema=CHECK_SCHEMA, on_bad_line="skip")
    train, valid = data.split(0.3, seed=0)
    checked = train.check() + valid.check()
    assert checked == 40 and train.skipped_lines + valid.skipped_lines == 1
    strict_train, strict_valid = open_dataset(path, "csv", schema=CHECK_SCHEMA).split(0.3, 0)
    side = [strict_train, strict_valid]
    bad_side = [len(v.bad_line_examples) for v in (train, valid)].index(1)
    with pytest.raises(DataError, match=r"all\.csv:42"):
        side[bad_side].check()
    assert side[1 - bad_side].check() == (train, valid)[1 - bad_side].num_examples
