"""Stable token keys: the same 64-bit key for a token on every machine and run.

    key(token)  = fmix64(fnv1a64(utf-8 bytes of the token))
    key(index)  = key(str(index))            (libsvm / libffm integer indices)

FNV-1a 64: ``h = 0xcbf29ce484222325; for byte: h = (h ^ byte) * 0x100000001b3
mod 2**64``. fmix64 (MurmurHash3's finaliser): ``h ^= h >> 33; h *= 0xff51afd7
ed558ccd; h ^= h >> 33; h *= 0xc4ceb9fe1a85ec53; h ^= h >> 33`` (mod 2**64).
Key 0 stands for a missing value. Hash buckets use ``1 + key % num_buckets``
(id 0 = missing); vocabularies map keys to ids. Python's ``hash()`` is salted
per process and is never used.

Raw keys (``ids="dynamic"``: dynamic tables take any int64, no vocabulary,
no modulo)::

    raw_key(token) = int(token)        if the token is the canonical decimal
                                       text of an int64 ("-12", "0", "42";
                                       not "007", "-0", "+5", " 5")
                   = key(token) as int64 (two's complement) otherwise
    raw_key(missing) = key("") as int64 = -1166397803181037274

so integer ids (libsvm indices, integer Parquet columns, decimal CSV cells)
reach a table as they are, and strings as a fixed 64-bit hash.

The readers compute keys in Numba (``kernels/data_hash.py``); ``token_key``
here is the plain-Python definition, for reference and tests.
"""
import numpy as np

from ..kernels import data_hash as _kernels

__all__ = ["token_key", "token_keys", "raw_key", "MISSING_RAW_KEY"]

_MASK = (1 << 64) - 1
#: raw_key of a missing token (an empty cell, a null).
MISSING_RAW_KEY = -1166397803181037274


def _fmix64(h):
    h ^= h >> 33
    h = (h * 0xFF51AFD7ED558CCD) & _MASK
    h ^= h >> 33
    h = (h * 0xC4CEB9FE1A85EC53) & _MASK
    h ^= h >> 33
    return h


def _as_bytes(token):
    if isinstance(token, bytes):
        return token
    if isinstance(token, (int, np.integer)) and not isinstance(token, bool):
        if token < 0:
            raise ValueError(f"an integer token must be >= 0, got {token}")
        return str(int(token)).encode()
    if isinstance(token, str):
        return token.encode("utf-8", "surrogateescape")
    raise TypeError(f"a token is str, bytes or a non-negative int, got {type(token).__name__}")


def token_key(token):
    """The stable 64-bit key of one token (str, bytes or int index).

    >>> token_key("05db9164")
    566101051579089404
    >>> token_key(1163) == token_key("1163")
    True
    """
    h = 0xCBF29CE484222325
    for byte in _as_bytes(token):
        h = ((h ^ byte) * 0x100000001B3) & _MASK
    return _fmix64(h)


def token_keys(tokens):
    """Keys [n] uint64 of a sequence of tokens (vectorised ``token_key``).

    >>> int(token_keys(["05db9164", "a"])[0]) == token_key("05db9164")
    True
    """
    encoded = [t.encode("utf-8", "surrogateescape") if type(t) is str else _as_bytes(t)
               for t in tokens]
    lengths = np.fromiter((len(b) for b in encoded), np.int64, len(encoded))
    ends = np.cumsum(lengths)
    buf = np.frombuffer(b"".join(encoded), np.uint8) if encoded else np.empty(0, np.uint8)
    keys = np.empty(len(encoded), np.uint64)
    _kernels.token_keys(keys, np.ascontiguousarray(buf), ends - lengths, ends,
                        np.zeros(len(encoded), np.uint8), np.int64(-1))
    return keys


def _canonical_int64(text):
    """The int of canonical decimal int64 text, else None."""
    digits = text[1:] if text.startswith("-") else text
    if not digits or not digits.isascii() or not digits.isdigit() or len(digits) > 19:
        return None
    if digits[0] == "0" and (len(digits) > 1 or text.startswith("-")):
        return None
    value = int(text)
    return value if -(1 << 63) <= value < (1 << 63) else None


def raw_key(token):
    """The raw int64 key of one token (str, bytes, int; None = missing), as
    dynamic tables get it from the readers (module docstring).

    >>> raw_key("-12"), raw_key(2 ** 63 - 1), raw_key(None) == raw_key("")
    (-12, 9223372036854775807, True)
    >>> raw_key("05db9164") == token_key("05db9164") - 2 ** 64 * (token_key("05db9164") >= 2 ** 63)
    True
    """
    if token is None:
        return MISSING_RAW_KEY
    if isinstance(token, (int, np.integer)) and not isinstance(token, bool):
        if not -(1 << 63) <= int(token) < (1 << 63):
            raise ValueError(f"an integer id must fit in int64, got {token}")
        return int(token)
    text = token.decode("utf-8", "surrogateescape") if isinstance(token, bytes) else token
    if not isinstance(text, str):
        raise TypeError(f"a token is str, bytes or int, got {type(token).__name__}")
    value = _canonical_int64(text)
    if value is not None:
        return value
    key = token_key(token)
    return key - (1 << 64) if key >= 1 << 63 else key
