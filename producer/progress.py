"""A dependency-free progress bar on stderr: redrawn in place on a terminal, a line every few seconds in logs."""

from __future__ import annotations

import sys
import time
from typing import TextIO


class ProgressBar:
    def __init__(self, label: str, total: int, stream: TextIO | None = None, width: int = 30) -> None:
        self.label, self.total, self.width = label, max(total, 0), width
        self.stream = stream or sys.stderr
        self.tty = self.stream.isatty()
        self.started = time.monotonic()
        self._last_line = 0.0
        self._done = 0

    def advance(self, n: int) -> None:
        self.update(self._done + n)

    def update(self, done: int, detail: str = "") -> None:
        self._done = done
        now = time.monotonic()
        if not self.tty and now - self._last_line < 5 and done < self.total:
            return
        self._last_line = now
        frac = done / self.total if self.total else 1.0
        filled = int(self.width * min(frac, 1.0))
        elapsed = now - self.started
        rate = done / elapsed if elapsed > 0 else 0.0
        eta = (self.total - done) / rate if rate > 0 else 0.0
        text = (f"{self.label} [{'#' * filled}{'.' * (self.width - filled)}] {done}/{self.total} "
                f"{frac:4.0%} {rate:6.1f}/s eta {eta:4.0f}s {detail}")
        if self.tty:
            self.stream.write("\r" + text + "\x1b[K")
        else:
            self.stream.write(text + "\n")
        self.stream.flush()

    def close(self) -> None:
        if self.tty:
            self.stream.write("\n")
            self.stream.flush()
