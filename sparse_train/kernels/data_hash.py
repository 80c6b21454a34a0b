"""Stable 64-bit token keys and the open-addressing table that maps them.

A token's *key* is the same on every machine and run (unlike Python's
``hash``, which is salted per process):

    key(token bytes)  = fmix64(fnv1a64(bytes))
    key(int index)    = key(its decimal digits)   (libsvm / libffm indices)

FNV-1a 64 (Fowler, Noll, Vo; offset basis 0xcbf29ce484222325, prime
0x100000001b3) reads the bytes; MurmurHash3's ``fmix64`` finaliser (Appleby)
then mixes every input bit into the low bits, which FNV-1a alone leaves weak
(bit 0 of FNV-1a is the parity of the bytes' bit 0), so ``key % buckets`` and
``key & mask`` are uniform. Key 0 is reserved for "missing" (fmix64 is a
bijection with fmix64(0) = 0, so only a token whose FNV-1a is 0 collides).

The table is linear probing over ``key & mask``; ``filled`` marks used slots,
so every key (0 included) can be stored.
"""
import numpy as np

from ._jit import njit, njit_inline

FNV_OFFSET = np.uint64(0xCBF29CE484222325)
FNV_PRIME = np.uint64(0x100000001B3)
_M1 = np.uint64(0xFF51AFD7ED558CCD)
_M2 = np.uint64(0xC4CEB9FE1A85EC53)
_S33 = np.uint64(33)


@njit_inline
def fmix64(h):
    """MurmurHash3 fmix64 of a uint64 (a bijection on 64 bits)."""
    h ^= h >> _S33
    h *= _M1
    h ^= h >> _S33
    h *= _M2
    h ^= h >> _S33
    return h


@njit_inline
def span_key(buf, start, end, quote):
    """Key of the bytes buf[start:end]; when ``quote >= 0`` a doubled quote
    ``""`` counts as one quote byte (RFC 4180 unescaping)."""
    h = FNV_OFFSET
    if quote < 0:  # the common case, without a test per byte
        for i in range(start, end):
            h ^= np.uint64(buf[i])
            h *= FNV_PRIME
        return fmix64(h)
    i = start
    while i < end:
        c = buf[i]
        if c == quote and i + 1 < end and buf[i + 1] == quote:
            i += 1
        h ^= np.uint64(c)
        h *= FNV_PRIME
        i += 1
    return fmix64(h)


@njit
def token_keys(keys, buf, token_starts, token_ends, token_quoted, quote):
    """In place: keys [m] uint64, the key of each token span; 0 where
    token_starts < 0 (missing). buf [N] uint8; token_starts, token_ends [m]
    int64; token_quoted [m] uint8 (1: unescape doubled ``quote`` bytes)."""
    for k in range(keys.shape[0]):
        s = token_starts[k]
        if s < 0:
            keys[k] = np.uint64(0)
        else:
            q = quote if token_quoted[k] else -1
            keys[k] = span_key(buf, s, token_ends[k], q)


@njit
def index_keys(keys, indices):
    """In place: keys [m] uint64, the key of the decimal digits of indices
    [m] int64 >= 0 (so index 1163 has the key of the token "1163")."""
    for k in range(keys.shape[0]):
        x = indices[k]
        power = np.int64(1)
        while power <= x // 10:
            power *= 10
        h = FNV_OFFSET
        while power > 0:
            digit = (x // power) % 10
            h ^= np.uint64(48 + digit)
            h *= FNV_PRIME
            power //= 10
        keys[k] = fmix64(h)


@njit
def count_keys(table_keys, table_counts, table_filled, reached, keys, start, limit, min_count):
    """Count keys[start:] into the table until it holds ``limit`` keys.

    In place: table_keys [C] uint64, table_counts [C] int64, table_filled [C]
    uint8 (C a power of two); reached [m] int64 receives the positions k whose
    key's count became exactly ``min_count`` there. keys [m] uint64.
    Returns (next position to count, number of new keys, number reached); the
    caller grows the table and calls again while next < m.
    """
    mask = np.uint64(table_keys.shape[0] - 1)
    added = 0
    num_reached = 0
    k = start
    while k < keys.shape[0]:
        if added >= limit:
            break
        key = keys[k]
        slot = key & mask
        while table_filled[slot] and table_keys[slot] != key:
            slot = (slot + np.uint64(1)) & mask
        if not table_filled[slot]:
            table_filled[slot] = 1
            table_keys[slot] = key
            table_counts[slot] = 0
            added += 1
        table_counts[slot] += 1
        if table_counts[slot] == min_count:
            reached[num_reached] = k
            num_reached += 1
        k += 1
    return k, added, num_reached


@njit
def insert_keys(table_keys, table_values, table_filled, keys, values):
    """In place: table_keys [C] uint64, table_values [C] int64, table_filled
    [C] uint8 get key -> value for keys [m] uint64, values [m] int64 (a later
    duplicate overwrites). The caller keeps the load below 1/2."""
    mask = np.uint64(table_keys.shape[0] - 1)
    for k in range(keys.shape[0]):
        key = keys[k]
        slot = key & mask
        while table_filled[slot] and table_keys[slot] != key:
            slot = (slot + np.uint64(1)) & mask
        table_filled[slot] = 1
        table_keys[slot] = key
        table_values[slot] = values[k]


@njit
def lookup_keys(out, table_keys, table_values, table_filled, keys, missing_value, absent_value):
    """In place: out [m] int64 = the table's value of keys [m] uint64;
    ``missing_value`` for key 0, ``absent_value`` for a key not in the table."""
    mask = np.uint64(table_keys.shape[0] - 1)
    for k in range(keys.shape[0]):
        key = keys[k]
        if key == np.uint64(0):
            out[k] = missing_value
            continue
        slot = key & mask
        value = absent_value
        while table_filled[slot]:
            if table_keys[slot] == key:
                value = table_values[slot]
                break
            slot = (slot + np.uint64(1)) & mask
        out[k] = value


@njit
def bucket_ids(out, keys, num_buckets):
    """In place: out [m] int64 = 1 + keys % num_buckets, and 0 for key 0
    (missing). keys [m] uint64."""
    b = np.uint64(num_buckets)
    for k in range(keys.shape[0]):
        key = keys[k]
        if key == np.uint64(0):
            out[k] = 0
        else:
            out[k] = np.int64(key % b) + 1
