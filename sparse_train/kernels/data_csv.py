"""Delimited text (CSV / TSV) over a chunk of raw bytes: cells, numbers, tokens.

A chunk is ``buf`` [N] uint8 holding whole lines; line i is
``buf[line_starts[i]:line_ends[i]]`` without its newline. A cell may be
quoted (RFC 4180): it then runs to the closing quote, a doubled quote inside
stands for one, and the delimiter and separator inside it are plain text.
Newlines inside quotes are not supported (the line reports a quote error).
Cells are not trimmed. ``quote < 0`` turns quoting off.
"""
import numpy as np

from ._jit import njit, njit_inline
from .data_hash import span_key

#: ``parse_delimited`` cell count of a line with an unterminated quote or
#: text after a closing quote.
BAD_QUOTE = -1

#: ``parse_delimited`` roles of a column.
ROLE_SKIP = 0
ROLE_NUMBER = 1
ROLE_TOKEN = 2

#: 10**k for k <= 22, exact in float64 (so one multiply or divide by them
#: rounds correctly: the classic fast path of decimal-to-binary conversion).
_POWERS_OF_TEN = np.array([10.0 ** k for k in range(23)])

#: ``parse_number`` status codes.
NUMBER_OK = 0
NUMBER_MISSING = 1
NUMBER_BAD = 2


@njit_inline
def _unquote(buf, start, end, quote):
    """(start, end, quoted) of the text inside a quoted span, else the span."""
    if end - start >= 2 and buf[start] == quote and buf[end - 1] == quote:
        return start + 1, end - 1, 1
    return start, end, 0


@njit_inline
def parse_number(buf, start, end):
    """(value float64, status) of the decimal number in buf[start:end]:
    ``[+-]digits[.digits][(e|E)[+-]digits]`` (either digit run may be empty,
    not both), spaces around it ignored. Correctly rounded when the
    significand has at most 15 digits and the scaled exponent is within 22
    (the usual fast path); within one ulp otherwise."""
    while start < end and buf[start] == 32:
        start += 1
    while end > start and buf[end - 1] == 32:
        end -= 1
    if start >= end:
        return 0.0, NUMBER_MISSING
    i = start
    negative = False
    if buf[i] == 45 or buf[i] == 43:  # - +
        negative = buf[i] == 45
        i += 1
    mantissa = np.int64(0)
    digits = 0
    exponent = 0
    seen = 0
    while i < end and 48 <= buf[i] <= 57:
        seen += 1
        if digits < 18:
            mantissa = mantissa * 10 + (buf[i] - 48)
            if mantissa > 0:
                digits += 1
        else:
            exponent += 1
        i += 1
    if i < end and buf[i] == 46:  # .
        i += 1
        while i < end and 48 <= buf[i] <= 57:
            seen += 1
            if digits < 18:
                mantissa = mantissa * 10 + (buf[i] - 48)
                exponent -= 1
                if mantissa > 0:
                    digits += 1
            i += 1
    if seen == 0:
        return 0.0, NUMBER_BAD
    if i < end and (buf[i] == 101 or buf[i] == 69):  # e E
        i += 1
        sign = 1
        if i < end and (buf[i] == 45 or buf[i] == 43):
            sign = -1 if buf[i] == 45 else 1
            i += 1
        if i >= end:
            return 0.0, NUMBER_BAD
        e = 0
        while i < end and 48 <= buf[i] <= 57:
            if e < 100000:
                e = e * 10 + (buf[i] - 48)
            i += 1
        exponent += sign * e
    if i != end:
        return 0.0, NUMBER_BAD
    value = float(mantissa)
    if mantissa == 0:
        value = 0.0
    elif exponent > 0:
        if exponent <= 22:
            value *= _POWERS_OF_TEN[exponent]
        else:
            value = value * 10.0 ** min(exponent, 400)
    elif exponent < 0:
        if exponent >= -22:
            value /= _POWERS_OF_TEN[-exponent]
        elif exponent < -400:
            value = 0.0
        else:
            value = value / 1e22 / 10.0 ** (-exponent - 22)
    if negative:
        value = -value
    return value, NUMBER_OK


@njit
def parse_numbers(values, status, buf, starts, ends, quote):
    """In place: values [n] float64 and status [n] int8 (``NUMBER_OK``,
    ``NUMBER_MISSING`` for an empty cell, ``NUMBER_BAD``) of the cells
    buf[starts[i]:ends[i]] ([n] int64); a quoted cell is read inside its
    quotes."""
    for i in range(values.shape[0]):
        s, e, _ = _unquote(buf, starts[i], ends[i], quote)
        value, code = parse_number(buf, s, e)
        values[i] = value
        status[i] = code


@njit
def cell_tokens(token_starts, token_ends, token_quoted, buf, starts, ends, quote):
    """One token a cell. In place: token_starts, token_ends [n] int64 (the
    text inside quotes; start -1 for an empty cell = missing), token_quoted
    [n] uint8. buf [N] uint8; starts, ends [n] int64 cell spans."""
    for i in range(starts.shape[0]):
        s, e, q = _unquote(buf, starts[i], ends[i], quote)
        token_starts[i] = s if e > s else -1
        token_ends[i] = e
        token_quoted[i] = q


@njit
def count_separated(counts, buf, starts, ends, separator, quote):
    """In place: counts [n] int64, the number of tokens of each cell split on
    ``separator``; empty tokens are dropped, and a cell without any token
    counts 1 (its missing token)."""
    for i in range(starts.shape[0]):
        s, e, _ = _unquote(buf, starts[i], ends[i], quote)
        count = 0
        length = 0
        for p in range(s, e):
            if buf[p] == separator:
                if length > 0:
                    count += 1
                length = 0
            else:
                length += 1
        if length > 0:
            count += 1
        counts[i] = max(count, 1)


@njit
def split_separated(token_starts, token_ends, token_quoted, buf, starts, ends, offsets, separator, quote):
    """Tokens of each cell split on ``separator``, in order. In place:
    token_starts, token_ends [m] int64 (start -1 for the missing token of a
    cell with none), token_quoted [m] uint8; cell i fills
    offsets[i]:offsets[i+1] (offsets [n+1] int64 from ``count_separated``)."""
    for i in range(starts.shape[0]):
        s, e, q = _unquote(buf, starts[i], ends[i], quote)
        k = offsets[i]
        t = s
        for p in range(s, e + 1):
            if p == e or buf[p] == separator:
                if p > t:
                    token_starts[k] = t
                    token_ends[k] = p
                    token_quoted[k] = q
                    k += 1
                t = p + 1
        if k == offsets[i]:
            token_starts[k] = -1
            token_ends[k] = -1
            token_quoted[k] = 0


@njit
def gather_tokens(out, out_offsets, buf, token_starts, token_ends, token_quoted, quote):
    """Copy token bytes out of a chunk, unescaping doubled quotes of quoted
    tokens; returns the number of bytes written. In place: out [>= total
    length] uint8, out_offsets [m+1] int64 (token k is
    out[out_offsets[k]:out_offsets[k+1]]). token_* [m] as in ``cell_tokens``."""
    w = 0
    out_offsets[0] = 0
    for k in range(token_starts.shape[0]):
        i = token_starts[k]
        end = token_ends[k]
        q = quote if token_quoted[k] else -1
        while i < end:
            c = buf[i]
            if c == q and i + 1 < end and buf[i + 1] == q:
                i += 1
            out[w] = c
            w += 1
            i += 1
        out_offsets[k + 1] = w
    return w


@njit
def parse_delimited(numbers, number_status, keys, spans, buf, lines, plan, marks):
    """Split lines into cells and read the cells of each column's role, in one
    pass a line (the line stays in cache); returns the cell count of each
    line [n] int64 (``BAD_QUOTE`` on a quote error).

    In place: spans [n, S, 2] int64, start and end (quotes included) of the
    cells of the columns given a span slot (cells a short line lacks stay as
    they were; row-major, so a line's writes stay together);
    numbers [S, n] float64 and number_status [S, n] int8 (``parse_number``)
    of ``ROLE_NUMBER`` columns; keys [K, n] uint64 (``span_key`` inside the
    quotes, 0 for an empty cell) of ``ROLE_TOKEN`` columns.
    buf [N] uint8; lines [2, n] int64 line starts and ends; plan [C, 3] int64
    (role, slot: the row of numbers or of keys, span slot or -1); marks [2]
    int64 (delimiter, quote or -1).
    """
    n = lines.shape[1]
    num_cols = plan.shape[0]
    delimiter = marks[0]
    quote = marks[1]
    counts = np.empty(n, np.int64)
    for i in range(n):
        p = lines[0, i]
        end = lines[1, i]
        c = 0
        while True:
            s = p
            inner_quote = -1  # the quote byte while inside quotes, else -1
            if p < end and buf[p] == quote:
                p += 1
                closed = False
                while p < end:
                    if buf[p] == quote:
                        if p + 1 < end and buf[p + 1] == quote:
                            p += 2
                            continue
                        closed = True
                        p += 1
                        break
                    p += 1
                if not closed or (p < end and buf[p] != delimiter):
                    c = BAD_QUOTE
                    break
                inner_quote = quote
            else:
                while p < end and buf[p] != delimiter:
                    p += 1
            if c < num_cols:
                if plan[c, 2] >= 0:
                    spans[i, plan[c, 2], 0] = s
                    spans[i, plan[c, 2], 1] = p
                # the text inside the quotes (reading it from the scan: a
                # second look at the bytes costs ~40% of the kernel)
                a = s if inner_quote < 0 else s + 1
                b = p if inner_quote < 0 else p - 1
                role = plan[c, 0]
                if role == ROLE_NUMBER:
                    value, code = parse_number(buf, a, b)
                    numbers[plan[c, 1], i] = value
                    number_status[plan[c, 1], i] = code
                elif role == ROLE_TOKEN:
                    if b > a:
                        keys[plan[c, 1], i] = span_key(buf, a, b, inner_quote)
                    else:
                        keys[plan[c, 1], i] = np.uint64(0)
            c += 1
            if p >= end:
                break
            p += 1
        counts[i] = c
    return counts
