"""Reading text files in chunks of whole lines, never the whole file.

A chunk is a NumPy view of raw bytes plus the span and the (1-based) line
number of each non-blank line in it. ``.gz`` files are decompressed on the fly.
"""
import gzip
from dataclasses import dataclass
from pathlib import Path

import numpy as np

__all__ = ["LineChunk", "iter_line_chunks", "open_binary", "first_line"]


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
    """Open a file for reading bytes, through gzip when it ends in ``.gz``."""
    path = Path(path)
    if path.suffix == ".gz":
        return gzip.open(path, "rb")
    return open(path, "rb")


def first_line(path):
    """The first line of a file, decoded (UTF-8, a byte-order mark dropped),
    without its line ending; None for an empty file."""
    with open_binary(path) as f:
        raw = f.readline()
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


def iter_line_chunks(paths, chunk_bytes, skip_first_line=False):
    """Yield ``LineChunk``s of about ``chunk_bytes`` bytes over the files in
    order. Blank lines are dropped (they still count in line numbers); a last
    line without a newline is read; a line longer than ``chunk_bytes`` makes
    a larger chunk. ``skip_first_line`` drops each file's line 1 (a header).

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
                data = f.read(chunk_bytes)
                if not data:
                    if not carry:
                        break
                    data = b"\n"
                buf = carry + data if carry else data
                cut = buf.rfind(b"\n")
                if cut < 0:
                    carry = buf
                    continue
                body, carry = buf[:cut + 1], buf[cut + 1:]
                chunk, num_lines = _chunk(path, file_index, body, number)
                number += num_lines
                if skip_first_line and len(chunk) and chunk.line_numbers[0] == 1:
                    chunk = chunk.select(slice(1, None))
                if len(chunk):
                    yield chunk
