"""Progress reporting: item-accurate, for terminals, logs and GUIs.

``progress=True`` draws a tqdm bar when tqdm is installed (the ``progress``
extra) and otherwise a plain line on stderr that also reads well in a log
file (no carriage returns when stderr is not a terminal). ``progress=callable``
receives a :class:`ProgressUpdate` instead, for notebooks and GUIs.
"""

from __future__ import annotations

import sys
import threading
from collections.abc import Callable
from dataclasses import dataclass
from time import monotonic
from typing import Any, TextIO

__all__ = ["ProgressUpdate", "Reporter", "make_reporter"]

#: plain-text updates are drawn at most this often
PLAIN_INTERVAL = 0.2
PLAIN_LOG_INTERVAL = 5.0


@dataclass(frozen=True, slots=True)
class ProgressUpdate:
    """How far a run is: items finished (done, failed or skipped) of ``total``."""

    done: int
    total: int | None
    elapsed: float
    finished: bool = False

    @property
    def rate(self) -> float:
        """Items per second so far."""
        return self.done / self.elapsed if self.elapsed > 0 else 0.0

    @property
    def eta(self) -> float | None:
        """Seconds left at the current rate, when the total is known."""
        if self.total is None or self.rate <= 0:
            return None
        return max(0.0, (self.total - self.done) / self.rate)


class Reporter:
    """Counts finished items and forwards updates to a sink."""

    def __init__(self, sink: Callable[[ProgressUpdate], None], total: int | None,
                 interval: float = 0.0) -> None:
        self._sink = sink
        self.total = total
        self.done = 0
        self._started = monotonic()
        self._interval = interval
        self._last = 0.0
        self._lock = threading.Lock()
        self._closed = False

    def advance(self, count: int) -> None:
        with self._lock:
            self.done += count
            now = monotonic()
            if now - self._last < self._interval:
                return
            self._last = now
            update = ProgressUpdate(self.done, self.total, now - self._started)
        self._sink(update)

    def close(self) -> None:
        with self._lock:
            if self._closed:
                return
            self._closed = True
            update = ProgressUpdate(self.done, self.total, monotonic() - self._started, True)
        self._sink(update)


def _format_seconds(seconds: float | None) -> str:
    if seconds is None:
        return "?"
    minutes, secs = divmod(int(seconds + 0.5), 60)
    return f"{minutes:d}:{secs:02d}"


class _PlainLine:
    def __init__(self, stream: TextIO, label: str) -> None:
        self.stream = stream
        self.label = label
        self.tty = bool(getattr(stream, "isatty", lambda: False)())

    def __call__(self, update: ProgressUpdate) -> None:
        total = f"/{update.total}" if update.total is not None else ""
        percent = (
            f" {100 * update.done / update.total:5.1f}%" if update.total else ""
        )
        line = (
            f"{self.label}: {update.done}{total} items{percent} "
            f"[{_format_seconds(update.elapsed)} elapsed, {update.rate:,.1f} items/s, "
            f"eta {_format_seconds(update.eta)}]"
        )
        if self.tty:
            self.stream.write("\r" + line + ("\n" if update.finished else ""))
        else:
            self.stream.write(line + "\n")
        self.stream.flush()


class _Tqdm:
    def __init__(self, total: int | None, label: str) -> None:
        from tqdm.auto import tqdm

        self.bar = tqdm(total=total, desc=label, unit="item")
        self.shown = 0

    def __call__(self, update: ProgressUpdate) -> None:
        self.bar.update(update.done - self.shown)
        self.shown = update.done
        if update.finished:
            self.bar.close()


def make_reporter(progress: Any, total: int | None, label: str = "parallax") -> Reporter | None:
    """A reporter for ``progress=`` (False, True or a callable)."""
    if progress is False or progress is None:
        return None
    if callable(progress):
        return Reporter(progress, total)
    try:
        return Reporter(_Tqdm(total, label), total)
    except ImportError:
        stream = sys.stderr
        plain = _PlainLine(stream, label)
        return Reporter(plain, total, PLAIN_INTERVAL if plain.tty else PLAIN_LOG_INTERVAL)
