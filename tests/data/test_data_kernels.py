"""The text kernels against plain Python: numbers, cells, tokens."""
import numpy as np
import pytest

from sparse_train.kernels import data_csv, data_libsvm


def parse(text):
    buf = np.frombuffer(text.encode(), np.uint8)
    values = np.empty(1)
    status = np.empty(1, np.int8)
    data_csv.parse_numbers(values, status, buf, np.array([0]), np.array([len(buf)]),
                           np.int64(ord('"')))
    return values[0], status[0]


@pytest.mark.parametrize("text", [
    "0", "-0", "1", "+7", "-1", "17668", "260.0", "2.5", ".5", "5.", "-3.25", "1e3", "1E-3",
    "6.02e23", "3.4e38", "1.5e-45", "1.2345678901234567e-20", "123456789012345", "0.1", "0.3",
    "3.14159265358979", "000123.4500", "1e-30", "9007199254740993", "  42 ", '"12"',
])
def test_parse_number_matches_float(text):
    value, status = parse(text)
    assert status == data_csv.NUMBER_OK
    expected = float(text.strip().strip('"'))
    if len(text.strip().lstrip("+-").replace(".", "").lstrip("0")) <= 15 and "e" not in text.lower():
        assert value == expected  # the fast path rounds correctly
    else:
        assert value == pytest.approx(expected, rel=1e-15, abs=0)  # within a few ulp


@pytest.mark.parametrize("text", ["abc", "1.2.3", "1e", "e5", "-", ".", "1,5", "nan", "inf",
                                  "0x10", "1 2", "--1"])
def test_parse_number_rejects(text):
    assert parse(text)[1] == data_csv.NUMBER_BAD


@pytest.mark.parametrize("text", ["", "   ", '""'])
def test_parse_number_missing(text):
    assert parse(text)[1] == data_csv.NUMBER_MISSING


def test_parse_number_overflow_is_not_finite():
    value, status = parse("1e400")
    assert status == data_csv.NUMBER_OK and np.isinf(value)


def split_reference(line, separator):
    tokens = [t for t in line.split(separator) if t]
    return tokens or [None]


@pytest.mark.parametrize("cells", [["a|b", "", "|x||y|", "z"], ["", ""], ["only"]])
def test_split_separated_and_gather(cells):
    text = ",".join(cells)
    buf = np.frombuffer(text.encode(), np.uint8)
    starts, ends, pos = [], [], 0
    for c in cells:
        starts.append(pos)
        ends.append(pos + len(c))
        pos += len(c) + 1
    starts, ends = np.array(starts, np.int64), np.array(ends, np.int64)
    sep, quote = np.int64(ord("|")), np.int64(-1)
    counts = np.empty(len(cells), np.int64)
    data_csv.count_separated(counts, buf, starts, ends, sep, quote)
    expected = [split_reference(c, "|") for c in cells]
    assert counts.tolist() == [len(e) for e in expected]
    offsets = np.concatenate([[0], np.cumsum(counts)])
    m = int(offsets[-1])
    ts, te, tq = np.empty(m, np.int64), np.empty(m, np.int64), np.empty(m, np.uint8)
    data_csv.split_separated(ts, te, tq, buf, starts, ends, offsets, sep, quote)
    got = [None if s < 0 else text[s:e] for s, e in zip(ts.tolist(), te.tolist())]
    assert got == [t for e in expected for t in e]


def test_group_by_feature_against_stable_sort():
    rng = np.random.default_rng(0)
    counts = rng.integers(0, 6, 50)
    offsets = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
    features = rng.integers(0, 4, int(offsets[-1])).astype(np.int64)
    order, feature_offsets = data_libsvm.group_by_feature(features, offsets, np.int64(4))
    rows = np.repeat(np.arange(50), counts)
    expected = np.lexsort((np.arange(features.size), rows, features))  # by feature, row, position
    np.testing.assert_array_equal(order, expected)
    for f in range(4):
        per_row = np.bincount(rows[features == f], minlength=50)
        np.testing.assert_array_equal(np.diff(feature_offsets[f]), per_row)
