"""Odd and hostile files: gzip by content not name, truncated gzip, lines
without end, libffm fields and featindex indices that would size huge
arrays (reproduced under a memory cap)."""
import gzip
import os
import subprocess
import sys
import textwrap

import pytest

from sparse_train.data import DataError, open_dataset
from sparse_train.data._lines import first_line, iter_line_chunks
from sparse_train.data.libsvm import PairsParser, load_featindex, scan_num_fields

ROWS = b"1 0:3:1 1:4:1\n0 0:5:1 1:2:1\n" * 50


def _lines(path, **options):
    return [bytes(c.buf[s:e]) for c in iter_line_chunks([path], 64, **options)
            for s, e in zip(c.line_starts, c.line_ends)]


def test_gzip_is_recognised_by_content_not_name(tmp_path):
    plain, hidden, named = tmp_path / "a.ffm", tmp_path / "b.ffm", tmp_path / "c.ffm.gz"
    plain.write_bytes(ROWS)
    hidden.write_bytes(gzip.compress(ROWS))  # gzip named without .gz
    named.write_bytes(ROWS)                  # plain text named .gz
    expected = ROWS.splitlines()
    assert _lines(plain) == _lines(hidden) == _lines(named) == expected
    assert first_line(hidden) == first_line(named) == "1 0:3:1 1:4:1"


@pytest.mark.parametrize("damage", ["truncated", "flipped"])
def test_damaged_gzip_names_the_file(tmp_path, damage):
    data = bytearray(gzip.compress(ROWS * 20))
    if damage == "truncated":
        data = data[:len(data) // 2]
    else:
        data[-6] ^= 0xFF  # the CRC / length trailer
    path = tmp_path / "day.ffm.gz"
    path.write_bytes(bytes(data))
    with pytest.raises(DataError, match=r"day.ffm.gz: .*gzip data is truncated or damaged"):
        _lines(path)
    ds = open_dataset(path, "libffm", num_fields=2, batch_size=8)
    with pytest.raises(DataError, match="gzip data is truncated or damaged"):
        next(iter(ds))


def test_a_line_longer_than_the_limit_names_file_and_line(tmp_path):
    path = tmp_path / "x.svm"
    path.write_bytes(b"1 1:1\n" + b"1" + b" 7:1" * 1000 + b"\n")
    assert len(_lines(path)) == 2
    with pytest.raises(DataError, match=r"x.svm:2: line is longer than max_line_bytes = 1000"):
        _lines(path, max_line_bytes=1000)
    path.write_bytes(b"a" * 5000)  # a very long first field, no newline
    with pytest.raises(DataError, match=r"x.svm:1: line 1 is longer than max_line_bytes = 100 "):
        first_line(path, max_line_bytes=100)


def test_a_huge_libffm_field_is_refused_with_file_line_and_limit(tmp_path):
    path = tmp_path / "day.ffm"
    path.write_bytes(b"1 0:3:1 1:4:1\n0 100000000:1:1\n")
    with pytest.raises(DataError, match=r"day.ffm:2: field 100000000 is not below max_fields = 1000"):
        scan_num_fields([path], 1 << 20)
    assert scan_num_fields([path], 1 << 20, max_fields=10 ** 9) == 100000001
    with pytest.raises(ValueError, match="num_fields = 5000 exceeds max_fields = 1000"):
        PairsParser(True, num_fields=5000)


def test_the_huge_field_no_longer_exhausts_memory(tmp_path):
    """Under a 3 GB address-space cap (never run uncapped: on today's main
    this allocated until the OOM killer), opening the file fails cleanly."""
    path = tmp_path / "day.ffm"
    path.write_bytes(b"1 0:3:1 1:4:1\n0 100000000:1:1\n")
    script = textwrap.dedent(f"""
        import resource
        resource.setrlimit(resource.RLIMIT_AS, (3 << 30, 3 << 30))
        from sparse_train.data import DataError, open_dataset
        try:
            ds = open_dataset({str(path)!r}, "libffm", batch_size=2)
            next(iter(ds))
        except DataError as error:
            print("DataError:", error)
    """)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path), NUMBA_NUM_THREADS="1")
    result = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True,
                            text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "day.ffm:2: field 100000000 is not below max_fields" in result.stdout


def test_a_huge_featindex_index_is_refused(tmp_path):
    path = tmp_path / "featindex.txt"
    path.write_text("1:a\t0\n2:b\t999999999999\n")
    with pytest.raises(DataError, match=r"featindex.txt:2: index 999999999999 exceeds max_index"):
        load_featindex(path)


def test_invalid_utf8_in_a_schema_names_file_and_line(tmp_path):
    from sparse_train.data import Schema, SchemaError
    path = tmp_path / "bad.toml"
    path.write_bytes(b'[[features]]\nname = "a\xff"\n')
    with pytest.raises(SchemaError, match=r"bad.toml:2: not UTF-8 text \(byte 0xff\)"):
        Schema.load(path)


def test_invalid_utf8_in_libsvm_data_is_a_bad_token_at_its_line(tmp_path):
    path = tmp_path / "x.svm"
    path.write_bytes(b"1 3:1 4:1\n0 \xff\xfe:1\n")
    with pytest.raises(DataError, match=r"x.svm:2: token 1 .* is not index:value"):
        next(iter(open_dataset(path, "libsvm", batch_size=2)))


def test_a_row_longer_than_max_bag_length_is_a_bad_line(tmp_path):
    from sparse_train.data._lines import iter_line_chunks as chunks
    path = tmp_path / "x.svm"
    path.write_bytes(b"1 3:1 4:1\n0" + b" 5:1" * 9 + b"\n1 6:1\n")
    chunk = next(chunks([path], 1 << 20))
    parsed = PairsParser(False, max_bag_length=8).parse(chunk)
    assert parsed.bad.tolist() == [False, True, False]
    assert "more than max_bag_length = 8 pairs" in parsed.reason(1)
    assert PairsParser(False, max_bag_length=9).parse(chunk).bad is None
