"""Vocabularies: min count, out-of-vocabulary and missing ids, JSON round trip."""
import json
from collections import Counter

import numpy as np
import pytest

from sparse_train.data import (DataError, HashBuckets, Vocabulary, load_vocabulary,
                               save_vocabulary, token_key, token_keys)
from sparse_train.data.vocabulary import KeyCounter


def test_from_counts_min_count_order_oov_missing():
    counts = {"a": 3, "b": 5, "c": 1, "d": 3}
    v = Vocabulary.from_counts(counts, min_count=2)
    # decreasing count, ties by increasing key
    tied = sorted(["a", "d"], key=token_key)
    assert v.tokens == ("b", *tied)
    assert v.counts.tolist() == [5, 3, 3]
    assert v.num_embeddings == 5
    assert v.lookup(["b", tied[0], tied[1], "c", "zzz", None, ""]).tolist() == [2, 3, 4, 1, 1, 0, 0]


def test_key_counter_matches_counter_over_chunks():
    rng = np.random.default_rng(0)
    tokens = [f"t{x}" for x in rng.zipf(1.5, 30_000) % 5000]
    counter = KeyCounter(min_count=3)
    for start in range(0, len(tokens), 1777):  # forces several table growths
        part = tokens[start:start + 1777]
        counter.add(token_keys(part), lambda positions, part=part: [part[k] for k in positions])
    expected = Counter(tokens)
    v = counter.vocabulary()
    assert v == Vocabulary.from_counts(expected, min_count=3)
    assert v.counts.tolist() == [expected[t] for t in v.tokens]
    assert counter.num_distinct == len(expected)


def test_key_counter_ignores_missing_keys():
    counter = KeyCounter(min_count=1)
    keys = token_keys(["a", "b", "a"])
    keys[1] = 0
    counter.add(keys, lambda positions: [["a", "b", "a"][k] for k in positions])
    assert counter.vocabulary().tokens == ("a",)


def test_save_load_round_trip(tmp_path):
    encoders = {"genre": Vocabulary(["Drama", "Comedy", 'say "hi"', "héllo"], [4, 3, 2, 1], 1),
                "user": HashBuckets(64)}
    path = tmp_path / "vocab.json"
    save_vocabulary(path, encoders)
    loaded = load_vocabulary(path)
    assert loaded["genre"] == encoders["genre"] and loaded["user"] == encoders["user"]
    assert loaded["genre"].lookup(["héllo", 'say "hi"', "nope"]).tolist() == [5, 4, 1]
    assert loaded["genre"].counts.tolist() == [4, 3, 2, 1]
    doc = json.loads(path.read_text(encoding="utf-8"))
    assert doc["features"]["genre"]["tokens"][0] == "Drama"  # readable tokens


@pytest.mark.parametrize("text, match", [
    ("{not json", "not valid JSON"),
    ('{"format": "other"}', "not a sparse_train.vocabulary file"),
    ('{"format": "sparse_train.vocabulary", "features": {"f": {"type": "bloom"}}}',
     "feature 'f': type must be"),
    ('{"format": "sparse_train.vocabulary", "features": {"f": {"type": "hash"}}}',
     "feature 'f'"),
])
def test_load_rejects_bad_files(tmp_path, text, match):
    path = tmp_path / "vocab.json"
    path.write_text(text)
    with pytest.raises(DataError, match=match) as info:
        load_vocabulary(path)
    assert str(path) in str(info.value)


def test_load_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="vocabulary file not found"):
        load_vocabulary(tmp_path / "nope.json")


def test_duplicate_tokens_rejected():
    with pytest.raises(ValueError, match="unique"):
        Vocabulary(["a", "a"])
