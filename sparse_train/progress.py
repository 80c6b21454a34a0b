"""A small progress bar for long loops (stderr, one line, rate-limited)."""
import sys
import time

import numpy as np

__all__ = ["Progress", "progress_interval"]


class Progress:
    """Progress over ``total`` units (examples, steps, bytes).

    ``update(n, **stats)`` advances and shows the rate (units/s) and the
    given running statistics; redraws at most ``interval`` seconds apart.
    On a terminal it redraws one line; otherwise it prints a line per
    ``interval`` so logs stay readable.

    >>> bar = Progress(100, "train", unit="ex", file=None)
    >>> bar.update(50, loss=0.5)
    >>> bar.count
    50
    """

    def __init__(self, total, desc="", unit="it", file=sys.stderr, interval=0.5, width=24):
        self.total, self.desc, self.unit = total, desc, unit
        self.file, self.interval, self.width = file, interval, width
        self.count = 0
        self.start = self._last = time.perf_counter()
        self._tty = bool(file is not None and getattr(file, "isatty", lambda: False)())
        self.stats = {}

    def update(self, n=1, **stats):
        self.count += n
        self.stats.update(stats)
        now = time.perf_counter()
        if self.file is not None and now - self._last >= self.interval:
            self._last = now
            self._draw(now)

    @property
    def rate(self):
        elapsed = time.perf_counter() - self.start
        return self.count / elapsed if elapsed > 0 else 0.0

    def _draw(self, now):
        elapsed = now - self.start
        rate = self.count / elapsed if elapsed > 0 else 0.0
        if self.total:
            done = min(self.count / self.total, 1.0)
            filled = int(done * self.width)
            bar = f"[{'#' * filled}{'.' * (self.width - filled)}] {100 * done:5.1f}%"
        else:
            bar = f"{self.count}"
        stats = " ".join(f"{k}={v:.4g}" if isinstance(v, (float, np.floating)) else f"{k}={v}"
                         for k, v in self.stats.items())
        line = f"{self.desc} {bar} {rate:,.0f} {self.unit}/s {elapsed:.1f}s {stats}".rstrip()
        print(("\r" + line) if self._tty else line, end="" if self._tty else "\n",
              file=self.file, flush=True)

    def close(self):
        if self.file is not None:
            self._draw(time.perf_counter())
            if self._tty:
                print(file=self.file)


def progress_interval(stream):
    """Seconds between progress lines on ``stream``: a terminal redraws one
    line twice a second; a log file (not a terminal) gets a line every
    10 s, not a thousand lines a run."""
    return 0.5 if getattr(stream, "isatty", lambda: False)() else 10.0
