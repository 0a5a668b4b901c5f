"""A dependency-free progress line: fraction, count, elapsed, ETA, rate and live values."""

from __future__ import annotations

import sys
import time
from typing import TextIO

_CLEAR = "\r\x1b[K"  # back to the line's start, erase it


def format_seconds(seconds: float) -> str:
    seconds = max(0, int(round(seconds)))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes:02d}:{secs:02d}"


class Progress:
    """`with Progress(total, "fit") as bar: bar.update(n, loss=0.1)` prints one updating line.

    On a terminal the line is rewritten in place; otherwise (logs, CI) a line is
    printed at most every `log_interval` seconds and once at the end.
    """

    def __init__(
        self,
        total: int,
        desc: str,
        unit: str = "it",
        stream: TextIO | None = None,
        log_interval: float = 10.0,
    ):
        self.total = max(int(total), 1)
        self.desc = desc
        self.unit = unit
        self.stream = stream if stream is not None else sys.stderr
        self.count = 0
        self.values: dict[str, object] = {}
        self.start = time.perf_counter()
        self._interactive = _on_terminal(self.stream)
        self._interval = 0.2 if self._interactive else log_interval
        self._last = -float("inf")

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def update(self, n: int = 1, **values) -> None:
        self.count = min(self.count + n, self.total)
        self.values.update(values)
        now = time.perf_counter()
        if now - self._last >= self._interval or self.count == self.total:
            self._last = now
            self._write(now)

    def line(self, now: float | None = None) -> str:
        now = time.perf_counter() if now is None else now
        elapsed = now - self.start
        rate = self.count / elapsed if elapsed > 0 else 0.0
        eta = (self.total - self.count) / rate if rate > 0 else float("nan")
        eta_text = format_seconds(eta) if eta == eta else "?"
        parts = [
            f"{self.desc} {100 * self.count / self.total:3.0f}% {self.count}/{self.total}",
            f"[{format_seconds(elapsed)}<{eta_text}, {rate:.2f} {self.unit}/s]",
        ]
        parts += [f"{k}={_fmt(v)}" for k, v in self.values.items()]
        return " ".join(parts)

    def _write(self, now: float) -> None:
        end = "" if self._interactive else "\n"
        self.stream.write((_CLEAR if self._interactive else "") + self.line(now) + end)
        self.stream.flush()

    def close(self) -> None:
        if self._interactive:
            self.stream.write("\n")
            self.stream.flush()


def say(log: TextIO, text: str) -> None:
    """Writes one line of a log. On a terminal the progress line has no newline yet: it is
    cleared first, and redrawn at the next update."""
    log.write((_CLEAR if _on_terminal(log) else "") + text + "\n")
    log.flush()


def _on_terminal(stream: TextIO) -> bool:
    return hasattr(stream, "isatty") and stream.isatty()


def _fmt(value: object) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)
