"""Errors raised on bad input: a malformed line, an invalid schema."""

__all__ = ["DataError", "SchemaError"]


class DataError(ValueError):
    """Malformed input, reported with its file and (1-based) line number.

    Attributes:
        path: the file (str), or None.
        line: the line number in that file, or None when the problem is not
            one line's (e.g. a header without a required column).
        reason: what is wrong, without the location.

    >>> str(DataError("expected 40 cells, got 39", "day_0.tsv", 7))
    'day_0.tsv:7: expected 40 cells, got 39'
    """

    def __init__(self, reason, path=None, line=None):
        self.reason = reason
        self.path = None if path is None else str(path)
        self.line = line
        where = ""
        if self.path is not None:
            where = self.path if line is None else f"{self.path}:{line}"
        super().__init__(f"{where}: {reason}" if where else reason)


class SchemaError(DataError):
    """An invalid TOML schema (or reader options): what is wrong and where,
    e.g. ``movielens.toml: [[features]] #2 ('genres'): separator must be
    one character, got '||'``."""
