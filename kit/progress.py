"""Progress bars for long operator work: tqdm's on a terminal; elsewhere (a CI log, a file) plain lines, one
every PLAIN_INTERVAL_S at most and the last one at the end, with no carriage-return frames."""

from __future__ import annotations

import sys
import time
from typing import IO, TYPE_CHECKING, Any

if TYPE_CHECKING:
    from tqdm import tqdm

PLAIN_INTERVAL_S = 30.0


class PlainLines:
    """A file for tqdm that turns its frames into lines: the latest frame is written once PLAIN_INTERVAL_S
    has passed since the last line, and when the bar closes (tqdm's final newline)."""

    def __init__(self, stream: IO[str], interval_s: float = PLAIN_INTERVAL_S):
        self.stream, self.interval_s = stream, interval_s
        self.pending = ""
        self.written = float("-inf")

    def write(self, text: str) -> int:
        frame = text.replace("\r", "").strip()
        if frame:
            self.pending = frame
        if self.pending and ("\n" in text or time.monotonic() - self.written >= self.interval_s):
            self.stream.write(self.pending + "\n")
            self.pending, self.written = "", time.monotonic()
        return len(text)

    def flush(self) -> None:
        self.stream.flush()


def progress(iterable: Any = None, **options: Any) -> tqdm[Any]:
    """tqdm(iterable, **options) on stderr: a live bar on a terminal, PlainLines elsewhere."""
    from tqdm import tqdm

    if sys.stderr.isatty():
        return tqdm(iterable, dynamic_ncols=True, **options)
    return tqdm(iterable, file=PlainLines(sys.stderr), ncols=100, mininterval=0, **options)
