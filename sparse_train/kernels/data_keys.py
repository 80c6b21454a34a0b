"""Raw int64 keys of tokens, for dynamic tables (``ids="dynamic"``).

A token's raw key (``data/hashing.py`` has the plain-Python definition):

    the token is the canonical decimal text of an int64   -> that integer
        (an optional "-", then "0" or digits without a leading zero,
        within [-2**63, 2**63 - 1]; "-0", "+5", "007", " 5" are not)
    any other token                                        -> the int64 with the
        bits of key(token) = fmix64(fnv1a64(utf-8 bytes))  (``data_hash.py``)
    a missing token (empty cell, null)                     -> key("") as int64

so integer ids reach a table as they are (negative and huge included) and
strings as a fixed, seedless 64-bit hash, never reduced modulo anything.
"""
import numpy as np

from ._jit import njit, njit_inline
from .data_hash import FNV_OFFSET, fmix64, span_key

#: The raw key of a missing token: key("") = 0xefd01f60ba992926 (17280346270528514342)
#: as int64 (``empty_token_key()`` computes it; tests check the two agree).
MISSING_RAW_KEY = np.int64(-1166397803181037274)

_INT64_MAX = np.uint64(9223372036854775807)
_INT64_MIN_MAGNITUDE = np.uint64(9223372036854775808)


@njit_inline
def decimal_int64(buf, start, end):
    """(value, ok): the int64 of buf[start:end] if it is canonical decimal
    text (see the module docstring), else (0, False)."""
    i = start
    negative = False
    if i < end and buf[i] == 45:  # "-"
        negative = True
        i += 1
    digits = end - i
    if digits < 1 or digits > 19:
        return np.int64(0), False
    if buf[i] == 48 and (digits > 1 or negative):  # leading zero, or "-0"
        return np.int64(0), False
    magnitude = np.uint64(0)
    for k in range(i, end):
        c = buf[k]
        if c < 48 or c > 57:
            return np.int64(0), False
        magnitude = magnitude * np.uint64(10) + np.uint64(c - 48)  # < 1e19 < 2**64
    if negative:
        if magnitude > _INT64_MIN_MAGNITUDE:
            return np.int64(0), False
        return np.int64(np.uint64(0) - magnitude), True  # two's complement wrap
    if magnitude > _INT64_MAX:
        return np.int64(0), False
    return np.int64(magnitude), True


@njit
def raw_token_keys(keys, buf, token_starts, token_ends, token_quoted, quote, missing_key):
    """In place: keys [m] int64, the raw key of each token span (module
    docstring); ``missing_key`` where token_starts < 0. buf [N] uint8;
    token_starts, token_ends [m] int64; token_quoted [m] uint8 (1: unescape
    doubled ``quote`` bytes before hashing; a quoted token is decimal only
    if its text is)."""
    for k in range(keys.shape[0]):
        s = token_starts[k]
        if s < 0:
            keys[k] = missing_key
            continue
        value, ok = decimal_int64(buf, s, token_ends[k])
        if ok:
            keys[k] = value
        else:
            q = quote if token_quoted[k] else -1
            keys[k] = np.int64(span_key(buf, s, token_ends[k], q))


@njit
def empty_token_key():
    """key("") as int64: fmix64 of the FNV-1a offset basis."""
    return np.int64(fmix64(FNV_OFFSET))
