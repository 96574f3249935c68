"""Progress of a long data job: samples, tokens/s and the time left, measured in input bytes.

On a terminal a tqdm bar (as the converters show); in a log (stderr not a terminal) one line
every ``interval`` seconds, since a bar's carriage returns make one unreadable line in a file.
"""

from __future__ import annotations

import sys
import time
from typing import TextIO

LOG_INTERVAL_SECONDS = 30.0


def _duration(seconds: float) -> str:
    seconds = int(seconds)
    if seconds >= 3600:
        return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"
    if seconds >= 60:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds}s"


class Progress:
    """``advance(samples, input_bytes, tokens)`` as work is done; ``close()`` at the end."""

    def __init__(self, name: str, total_bytes: int, enabled: bool | None = None,
                 stream: TextIO | None = None, interval: float = LOG_INTERVAL_SECONDS):
        self.name = name
        self.total_bytes = max(total_bytes, 1)
        self.stream = stream or sys.stderr
        self.interval = interval
        self.samples = self.bytes = self.tokens = 0
        self.start = self._last_line = time.monotonic()
        terminal = self.stream.isatty()
        self.enabled = terminal if enabled is None else enabled
        self._bar = None
        if self.enabled and terminal:
            from tqdm import tqdm

            self._bar = tqdm(total=total_bytes, unit="B", unit_scale=True, desc=name,
                             file=self.stream, dynamic_ncols=True)

    def advance(self, samples: int, input_bytes: int, tokens: int) -> None:
        self.samples += samples
        self.bytes += input_bytes
        self.tokens += tokens
        if not self.enabled:
            return
        if self._bar is not None:
            self._bar.set_postfix_str(f"{self.samples:,} samples, {self._rate():,.0f} tok/s",
                                      refresh=False)
            self._bar.update(input_bytes)
        elif time.monotonic() - self._last_line >= self.interval:
            self._last_line = time.monotonic()
            print(self.line(), file=self.stream, flush=True)

    def _rate(self) -> float:
        return self.tokens / max(time.monotonic() - self.start, 1e-9)

    def line(self) -> str:
        elapsed = time.monotonic() - self.start
        done = min(self.bytes / self.total_bytes, 1.0)
        eta = elapsed * (1 - done) / done if done > 0 else float("nan")
        left = _duration(eta) if done > 0 else "?"
        return (f"{self.name}: {self.samples:,} samples, {self.tokens:,} tokens "
                f"({self._rate():,.0f} tok/s), {100 * done:.0f}% of the input, "
                f"{_duration(elapsed)} elapsed, ETA {left}")

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None
