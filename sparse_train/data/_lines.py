"""Reading text files in chunks of whole lines, never the whole file.

A chunk is a NumPy view of raw bytes plus the span and the (1-based) line
number of each non-blank line in it. Gzip files are decompressed on the fly,
recognised by their content (magic bytes), whatever their name.

Bad files are ``DataError``s naming the file (and line): a truncated or
damaged gzip stream, a line longer than ``max_line_bytes`` (a file without
newlines would otherwise be read whole into memory).
"""
import gzip
import zlib
from dataclasses import dataclass

import numpy as np

from .errors import DataError

__all__ = ["LineChunk", "iter_line_chunks", "open_binary", "first_line", "MAX_LINE_BYTES"]

#: Default longest line, in bytes (``max_line_bytes``): far beyond any real
#: row, small enough that a file without newlines cannot exhaust memory.
MAX_LINE_BYTES = 64 << 20
_GZIP_MAGIC = b"\x1f\x8b"
_GZIP_ERRORS = (EOFError, gzip.BadGzipFile, zlib.error)


@dataclass
class LineChunk:
    """Whole lines of one file: line i is ``buf[line_starts[i]:line_ends[i]]``
    (no newline, no trailing carriage return), at ``line_numbers[i]``."""
    path: str
    file_index: int
    buf: np.ndarray
    line_starts: np.ndarray
    line_ends: np.ndarray
    line_numbers: np.ndarray

    def __len__(self):
        return int(self.line_starts.shape[0])

    def select(self, rows):
        """The chunk restricted to ``rows`` (a bool mask or positions)."""
        return LineChunk(self.path, self.file_index, self.buf, self.line_starts[rows],
                         self.line_ends[rows], self.line_numbers[rows])

    def line_text(self, i, limit=200):
        """Line i decoded for an error message (cut at ``limit`` characters)."""
        raw = bytes(self.buf[self.line_starts[i]:self.line_ends[i]])
        text = raw.decode("utf-8", "replace")
        return text if len(text) <= limit else text[:limit] + "..."


def open_binary(path):
    """Open a file for reading bytes, through gzip when it starts with the
    gzip magic bytes (``.gz`` or not; a plain file named ``.gz`` reads as is)."""
    with open(path, "rb") as f:
        compressed = f.read(2) == _GZIP_MAGIC
    return gzip.open(path, "rb") if compressed else open(path, "rb")


def _gzip_error(path, error, line):
    where = f"after line {line - 1}: " if line > 1 else ""
    return DataError(f"{where}the gzip data is truncated or damaged ({error})", path)


def first_line(path, max_line_bytes=MAX_LINE_BYTES):
    """The first line of a file, decoded (UTF-8, a byte-order mark dropped),
    without its line ending; None for an empty file. ``DataError`` for a
    first line longer than ``max_line_bytes`` or damaged gzip data."""
    with open_binary(path) as f:
        try:
            raw = f.readline(max_line_bytes + 1)
        except _GZIP_ERRORS as error:
            raise _gzip_error(path, error, 1) from None
    if len(raw) > max_line_bytes and not raw.endswith(b"\n"):
        raise DataError(f"line 1 is longer than max_line_bytes = {max_line_bytes} bytes "
                        f"(not a text file of rows? raise the limit if it is)", path, 1)
    if not raw:
        return None
    return raw.rstrip(b"\r\n").decode("utf-8-sig", "replace")


def _chunk(path, file_index, body, first_number):
    """The ``LineChunk`` of whole lines ``body`` and its number of lines."""
    buf = np.frombuffer(body, np.uint8)
    ends = np.flatnonzero(buf == 10)
    starts = np.empty_like(ends)
    if ends.shape[0]:
        starts[0] = 0
        starts[1:] = ends[:-1] + 1
    has_cr = ends > starts
    has_cr[has_cr] = buf[ends[has_cr] - 1] == 13
    ends = ends - has_cr
    numbers = np.arange(first_number, first_number + ends.shape[0], dtype=np.int64)
    keep = ends > starts
    chunk = LineChunk(str(path), file_index, buf, starts[keep], ends[keep], numbers[keep])
    return chunk, int(numbers.shape[0])


def iter_line_chunks(paths, chunk_bytes, skip_first_line=False, max_line_bytes=MAX_LINE_BYTES):
    """Yield ``LineChunk``s of about ``chunk_bytes`` bytes over the files in
    order. Blank lines are dropped (they still count in line numbers); a last
    line without a newline is read; a line longer than ``chunk_bytes`` makes
    a larger chunk, one longer than ``max_line_bytes`` is a ``DataError``
    (file:line), as is truncated or damaged gzip data. ``skip_first_line``
    drops each file's line 1 (a header).

    >>> import tempfile, os
    >>> p = os.path.join(tempfile.mkdtemp(), "x.txt")
    >>> _ = open(p, "wb").write(b"a\\n\\nbb\\r\\nccc")
    >>> [c.line_numbers.tolist() for c in iter_line_chunks([p], 4)]
    [[1], [3], [4]]
    """
    for file_index, path in enumerate(paths):
        number = 1
        carry = b""
        with open_binary(path) as f:
            while True:
                try:
                    data = f.read(chunk_bytes)
                except _GZIP_ERRORS as error:
                    raise _gzip_error(path, error, number) from None
                if not data:
                    if not carry:
                        break
                    data = b"\n"
                buf = carry + data if carry else data
                cut = buf.rfind(b"\n")
                if cut < 0:
                    if len(buf) > max_line_bytes:
                        raise DataError(f"line is longer than max_line_bytes = {max_line_bytes} "
                                        f"bytes (no newline; raise the limit if the data "
                                        f"really has such lines)", path, number)
                    carry = buf
                    continue
                body, carry = buf[:cut + 1], buf[cut + 1:]
                chunk, num_lines = _chunk(path, file_index, body, number)
                number += num_lines
                if skip_first_line and len(chunk) and chunk.line_numbers[0] == 1:
                    chunk = chunk.select(slice(1, None))
                if len(chunk):
                    yield chunk
