"""Token keys: the documented hash, stable across runs and machines."""
import struct

import numpy as np
import pytest

from sparse_train.data import HashBuckets, token_key, token_keys


def independent_key(data: bytes) -> int:
    """FNV-1a 64 then MurmurHash3 fmix64, written from their specifications
    (FNV: IETF draft-eastlake-fnv; fmix64: MurmurHash3.cpp), with the
    arithmetic done through struct packing rather than masks."""
    h = 14695981039346656037  # FNV-1a 64 offset basis
    for byte in data:
        h ^= byte
        h = struct.unpack("<Q", struct.pack("<Q", (h * 1099511628211) % 2 ** 64))[0]
    for multiplier in (0xFF51AFD7ED558CCD, 0xC4CEB9FE1A85EC53):
        h ^= h >> 33
        h = (h * multiplier) % 2 ** 64
    h ^= h >> 33
    return h


TOKENS = ["05db9164", "", "a", "Comedy|Drama", "héllo", "x" * 300, "0", "1163"]


@pytest.mark.parametrize("token", TOKENS)
def test_key_matches_independent_definition(token):
    assert token_key(token) == independent_key(token.encode("utf-8"))


def test_hard_reference_values():
    # Computed once from the definition; a change here changes every id of
    # every saved model and vocabulary.
    assert token_key("05db9164") == 566101051579089404
    assert token_key("") == independent_key(b"") == 17280346270528514342
    assert token_key(1163) == token_key("1163") == 3917408494885247712


def test_vectorised_keys_equal_scalar_keys():
    keys = token_keys(TOKENS + [0, 7, 10, 123456789012])
    expected = [token_key(t) for t in TOKENS + [0, 7, 10, 123456789012]]
    assert keys.dtype == np.uint64
    assert keys.tolist() == expected


def test_integer_index_keys_equal_decimal_string_keys():
    from sparse_train.kernels.data_hash import index_keys
    indices = np.array([0, 1, 9, 10, 99, 100, 1163, 2 ** 40 + 3], np.int64)
    keys = np.empty(indices.shape[0], np.uint64)
    index_keys(keys, indices)
    assert keys.tolist() == [token_key(str(i)) for i in indices.tolist()]


def test_hash_buckets_ids():
    buckets = HashBuckets(97)
    ids = buckets.lookup(["05db9164", None, "", "a"])
    assert ids.tolist() == [1 + 566101051579089404 % 97, 0, 0, 1 + token_key("a") % 97]
    assert buckets.num_embeddings == 98
    with pytest.raises(ValueError, match="num_buckets"):
        HashBuckets(0)
