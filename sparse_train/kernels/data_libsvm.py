"""libsvm (``label index:value ...``) and libffm (``label field:index:value
...``) lines over a chunk of raw bytes, and grouping their pairs by feature.

Tokens are separated by spaces or tabs; a line is ``buf[line_starts[i]:
line_ends[i]]`` without its newline. Fields and indices are non-negative
decimal integers; values and labels are decimal numbers (``parse_number``).
"""
import numpy as np

from ._jit import njit, njit_inline
from .data_csv import NUMBER_OK, parse_number

#: ``parse_pairs`` status codes (0 = the line is well formed).
PAIRS_OK = 0
PAIRS_BAD_LABEL = 1
PAIRS_BAD_TOKEN = 2
PAIRS_BAD_VALUE = 3


@njit_inline
def _is_space(c):
    return c == 32 or c == 9


@njit
def count_pairs(counts, buf, line_starts, line_ends):
    """In place: counts [n] int64, the number of tokens after the label of
    each line. buf [N] uint8; line_starts, line_ends [n] int64."""
    for i in range(line_starts.shape[0]):
        tokens = 0
        inside = False
        for p in range(line_starts[i], line_ends[i]):
            if _is_space(buf[p]):
                inside = False
            elif not inside:
                inside = True
                tokens += 1
        counts[i] = max(tokens - 1, 0)


@njit_inline
def _parse_index(buf, start, end):
    """Non-negative decimal integer in buf[start:end], or -1."""
    if start >= end or end - start > 18:
        return -1
    x = np.int64(0)
    for p in range(start, end):
        c = buf[p]
        if c < 48 or c > 57:
            return -1
        x = x * 10 + (c - 48)
    return x


@njit
def parse_pairs(buf, line_starts, line_ends, offsets, with_field):
    """Parse each line's label and pairs.

    Args: buf [N] uint8; line_starts, line_ends [n] int64; offsets [n+1]
    int64 from ``count_pairs`` (line i fills offsets[i]:offsets[i+1]);
    with_field: True for libffm ``field:index:value``.

    Returns (labels [n] float64, fields [m] int64 (-1 for libsvm), indices
    [m] int64, values [m] float64, status [n] int64, bad_token [n] int64:
    the 1-based number of the first bad token after the label, 0 if none).
    """
    n = line_starts.shape[0]
    m = offsets[n]
    labels = np.zeros(n, np.float64)
    fields = np.full(m, -1, np.int64)
    indices = np.zeros(m, np.int64)
    values = np.zeros(m, np.float64)
    status = np.zeros(n, np.int64)
    bad_token = np.zeros(n, np.int64)
    for i in range(n):
        end = line_ends[i]
        p = line_starts[i]
        while p < end and _is_space(buf[p]):
            p += 1
        s = p
        while p < end and not _is_space(buf[p]):
            p += 1
        label, code = parse_number(buf, s, p)
        labels[i] = label
        if code != NUMBER_OK:
            status[i] = PAIRS_BAD_LABEL
            continue
        k = offsets[i]
        number = 0
        while k < offsets[i + 1]:
            while p < end and _is_space(buf[p]):
                p += 1
            s = p
            colon1 = -1
            colon2 = -1
            colons = 0
            while p < end and not _is_space(buf[p]):
                if buf[p] == 58:  # :
                    colons += 1
                    if colons == 1:
                        colon1 = p
                    elif colons == 2:
                        colon2 = p
                p += 1
            number += 1
            if colons != (2 if with_field else 1):
                status[i] = PAIRS_BAD_TOKEN
                bad_token[i] = number
                break
            if with_field:
                field = _parse_index(buf, s, colon1)
                index = _parse_index(buf, colon1 + 1, colon2)
                value_start = colon2 + 1
            else:
                field = 0
                index = _parse_index(buf, s, colon1)
                value_start = colon1 + 1
            if field < 0 or index < 0:
                status[i] = PAIRS_BAD_TOKEN
                bad_token[i] = number
                break
            value, code = parse_number(buf, value_start, p)
            if code != NUMBER_OK:
                status[i] = PAIRS_BAD_VALUE
                bad_token[i] = number
                break
            if with_field:
                fields[k] = field
            indices[k] = index
            values[k] = value
            k += 1
    return labels, fields, indices, values, status, bad_token


@njit
def group_by_feature(features, offsets, num_features):
    """Group pairs by feature, keeping row order and the order within a row.

    Args: features [m] int64 in [0, num_features); offsets [n+1] int64 (row i
    holds pairs offsets[i]:offsets[i+1]).

    Returns (order [m] int64, feature_offsets [F, n+1] int64): feature f's
    pairs are ``order[base_f : base_f + feature_offsets[f, n]]`` where base_f
    sums the totals of the features before f, and its row i holds
    ``feature_offsets[f, i]:feature_offsets[f, i+1]`` of them.
    """
    n = offsets.shape[0] - 1
    feature_offsets = np.zeros((num_features, n + 1), np.int64)
    for i in range(n):
        for k in range(offsets[i], offsets[i + 1]):
            feature_offsets[features[k], i + 1] += 1
    cursor = np.zeros(num_features, np.int64)
    base = 0
    for f in range(num_features):
        for i in range(n):
            feature_offsets[f, i + 1] += feature_offsets[f, i]
        cursor[f] = base
        base += feature_offsets[f, n]
    order = np.empty(base, np.int64)
    for i in range(n):
        for k in range(offsets[i], offsets[i + 1]):
            f = features[k]
            order[cursor[f]] = k
            cursor[f] += 1
    return order, feature_offsets
