"""Progress for long runs: a live bar on a terminal, a plain line every so often elsewhere (CI logs)."""

from __future__ import annotations

import sys
import time


def _clock(seconds: float) -> str:
    seconds = int(max(seconds, 0))
    h, rem = divmod(seconds, 3600)
    m, s = divmod(rem, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m:02d}:{s:02d}"


class Progress:
    def __init__(self, total: int, label: str = "scan", quiet: bool = False, stream=None, every: float = 15.0):
        self.total = total
        self.label = label
        self.quiet = quiet
        self.stream = stream or sys.stderr
        self.tty = bool(getattr(self.stream, "isatty", lambda: False)())
        self.every = every
        self.done = 0
        self.start = time.perf_counter()
        self._last = self.start
        if self.tty and not quiet:
            self.update(0)  # show the bar before the first batch, which can take a while

    def rate(self) -> float:
        elapsed = time.perf_counter() - self.start
        return self.done / elapsed if elapsed > 0 else 0.0

    def line(self) -> str:
        rate = self.rate()
        eta = (self.total - self.done) / rate if rate > 0 else float("nan")
        pct = 100.0 * self.done / self.total if self.total else 100.0
        eta_text = _clock(eta) if eta == eta else "--:--"
        return (f"{self.label} {self.done}/{self.total} ({pct:3.0f}%) {rate:.2f} images/s "
                f"elapsed {_clock(time.perf_counter() - self.start)} eta {eta_text}")

    def update(self, n: int) -> None:
        self.done += n
        if self.quiet:
            return
        now = time.perf_counter()
        if self.tty:
            width = 24
            filled = int(width * self.done / self.total) if self.total else width
            self.stream.write(f"\r[{'#' * filled}{'.' * (width - filled)}] {self.line()}\x1b[K")
            self.stream.flush()
        elif now - self._last >= self.every or self.done >= self.total:
            self.stream.write(self.line() + "\n")
            self.stream.flush()
            self._last = now

    def close(self) -> None:
        if self.tty and not self.quiet:
            self.stream.write("\n")
            self.stream.flush()


def waited(items, phases: dict[str, float], key: str):
    """The items of an iterable, with the time spent waiting for each added to phases[key]."""
    it = iter(items)
    while True:
        start = time.perf_counter()
        item = next(it, None)
        phases[key] += time.perf_counter() - start
        if item is None:
            return
        yield item
