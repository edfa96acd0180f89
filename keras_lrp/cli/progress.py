"""The progress line of a long ``keras-lrp explain``: lines read (of how many, when known) and
lines per second, on stderr. On a terminal it is redrawn in place (at most 4 times a second);
elsewhere (a log, a pipe) a line is printed once a minute and at the end."""
from __future__ import annotations

import sys
import time
from typing import Optional, TextIO

from . import PROG


class Progress:
    """Call :meth:`update` as work is done and :meth:`close` at the end; disabled, it prints nothing."""

    def __init__(self, total_lines: Optional[int], enabled: bool = True, stream: Optional[TextIO] = None):
        self.total, self.enabled = total_lines, enabled
        self.stream = stream if stream is not None else sys.stderr
        try:
            self.tty = bool(self.stream.isatty())
        except (AttributeError, ValueError, OSError):
            self.tty = False
        self.start = time.perf_counter()
        self.shown = self.start
        self.lines = self.sentences = 0
        self.drawn = False

    def text(self) -> str:
        seconds = max(time.perf_counter() - self.start, 1e-9)
        of = f"/{self.total:,}" if self.total is not None else ""
        return (f"{PROG}: {self.lines:,}{of} lines, {self.sentences:,} sentences explained, "
                f"{self.lines / seconds:,.0f} lines/s, {seconds:.0f} s")

    def update(self, lines: int, sentences: int) -> None:
        """``lines`` input lines read so far, ``sentences`` explained."""
        self.lines, self.sentences = lines, sentences
        now = time.perf_counter()
        if not self.enabled or now - self.shown < (0.25 if self.tty else 60.0):
            return
        self.shown = now
        if self.tty:
            self.stream.write("\r" + self.text() + "\x1b[K")
            self.drawn = True
        else:
            self.stream.write(self.text() + "\n")
        self.stream.flush()

    def clear(self) -> None:
        """Remove the line from the terminal (before printing something else there)."""
        if self.drawn:
            self.stream.write("\r\x1b[K")
            self.stream.flush()
            self.drawn = False

    def close(self) -> None:
        """The final line."""
        if self.enabled:
            self.clear()
            self.stream.write(self.text() + "\n")
            self.stream.flush()
