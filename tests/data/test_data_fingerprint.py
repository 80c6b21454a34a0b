"""Dataset.fingerprint against a brute-force recomputation from the file,
and check_fingerprint naming the feature that differs."""
import hashlib
import struct

import pytest

from sparse_train.data import DataError, Vocabulary, open_dataset, write_criteo_like


def brute_force(tokens):
    """The documented digest, spelt out: 8-byte little-endian length, then
    the UTF-8 bytes, of every token in id order."""
    raw = b"".join(struct.pack("<Q", len(t.encode())) + t.encode() for t in tokens)
    return hashlib.sha256(raw).hexdigest()


def test_fingerprint_of_a_vocabulary_and_of_hash_buckets(tmp_path):
    path = tmp_path / "day.tsv"
    write_criteo_like(path, 300, seed=11)
    data = open_dataset(str(path), "criteo")
    fingerprint = data.fingerprint()
    rows = [line.rstrip("\n").split("\t") for line in path.read_text().splitlines()]
    for k in (1, 7, 26):
        name = f"C{k}"
        tokens = data.vocabulary[name].tokens
        # the tokens are exactly the column's non-empty cells, each once
        assert sorted(tokens) == sorted({r[13 + k] for r in rows if r[13 + k]})
        assert fingerprint[name] == {"type": "vocabulary", "size": len(tokens),
                                     "sha256": brute_force(tokens)}
    assert set(fingerprint) == {f"C{k}" for k in range(1, 27)}
    hashed = open_dataset(str(path), "criteo", ids="hash", hash_buckets=64).fingerprint()
    assert hashed["C3"] == {"type": "hash", "buckets": 64}


def test_the_order_of_the_tokens_counts():
    """Two vocabularies of the same tokens in another id order map rows to
    other tokens: other fingerprints."""
    a, b = brute_force(["x", "y"]), brute_force(["y", "x"])
    assert a != b and brute_force(["xy"]) != brute_force(["x", "y"])


def test_check_fingerprint_names_the_feature(tmp_path):
    one, two = tmp_path / "a.tsv", tmp_path / "b.tsv"
    write_criteo_like(one, 200, seed=1)
    write_criteo_like(two, 200, seed=2)
    a, b = open_dataset(str(one), "criteo"), open_dataset(str(two), "criteo")
    a.check_fingerprint(a.fingerprint())  # the same data passes
    with pytest.raises(DataError, match=r"categorical feature 'C1': this data's vocabulary "
                                        r"\(\d+ tokens, sha256 [0-9a-f]{12}\) differs from "
                                        r"the run's"):
        b.check_fingerprint(a.fingerprint(), where="the run")
    hashed = open_dataset(str(one), "criteo", ids="hash", hash_buckets=8)
    with pytest.raises(DataError, match=r"'C1': this data's ids \(hash, 8 buckets\) differ "
                                        r"from the checkpoint's \(vocabulary of \d+ tokens\)"):
        hashed.check_fingerprint(a.fingerprint())
    missing = {k: v for k, v in a.fingerprint().items() if k != "C26"}
    with pytest.raises(DataError, match="categorical feature 'C26' is new"):
        a.check_fingerprint(missing)
    assert isinstance(a.vocabulary["C1"], Vocabulary)
