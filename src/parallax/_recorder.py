"""What every run records while it goes, and ``monitor()``, which collects it.

Recording is cheap: a run keeps one small record per *chunk* (who ran it,
when, CPU time, per-item end times when items were slow enough to time).
The run's :class:`~parallax.Stats` (``_stats.py``, with its derived views)
is made from those records only when someone reads it: an active
:func:`monitor` when the run ends, ``Executor.stats``, ``recorder.stats``.
A run nobody looks at never loads the views (nor ``dataclasses``, which they
use), which keeps a script's first call light.
"""

from __future__ import annotations

import heapq
import itertools
import threading
from contextlib import contextmanager
from time import perf_counter, time

from ._units import ChunkRecord

TYPE_CHECKING = False  # not typing's: keeps this module light
if TYPE_CHECKING:
    from collections.abc import Callable, Iterable, Iterator
    from pathlib import Path
    from typing import Any

    from ._stats import Stats
    from ._units import ChunkResult

__all__ = ["MAX_CHUNK_RECORDS", "Monitor", "StatsRecorder", "monitor"]

#: chunk records a run keeps at most (about 330 bytes each): an endless
#: ``imap`` keeps counting, but stops adding records past this
MAX_CHUNK_RECORDS = 100_000

_ties = itertools.count()


class StatsRecorder:
    """Collects one run's records while it goes; publishes a Stats at the end.

    The recorder owns what it accumulates (chunk records, attempts, the
    slowest items, counts); the run's :class:`Stats`, made when first read,
    only reads them.
    """

    def __init__(
        self, mode: str, reason: str | Callable[[], str], workers: int, chunksize: int | str, *,
        tasks: bool = True,
    ) -> None:
        """``reason``: why this mode, or a function that says it when first
        asked (the Stats are made)."""
        self._mode = mode
        self._reason = reason
        self._workers = workers
        self._chunksize = chunksize
        self._keep_records = tasks
        self._origin = 0.0  # perf_counter() when the run began
        self._started_at = 0.0  # time.time() when the run began
        self._busy = 0.0
        self._chunks: list[ChunkRecord] = []
        self._truncated = False
        self._attempts: dict[int, int] = {}
        #: heap of (seconds, index, tie-breaker, input) of the slowest timed items
        self._slowest: list[tuple[float, int, int, Any]] = []
        self._failed = 0
        self._retried = 0
        self._lock = threading.Lock()
        self._ended = False
        self._items_done = 0
        self._wall_time = 0.0
        self._stats: Stats | None = None

    @property
    def stats(self) -> Stats:
        """The run's Stats, once it ended (made on first read).

        Raises:
            RuntimeError: the run has not ended yet.
        """
        with self._lock:
            if not self._ended:
                raise RuntimeError("a run's stats exist once it has ended")
            return self._made()

    def _made(self) -> Stats:
        """The Stats of the ended run, made once (under the lock)."""
        stats = self._stats
        if stats is None:
            from ._stats import Stats

            stats = self._stats = Stats(
                mode=self._mode,
                reason=self._reason if isinstance(self._reason, str) else self._reason(),
                workers=self._workers,
                chunksize=self._chunksize,
                tasks=self._items_done,
                failed=self._failed,
                retried=self._retried,
                wall_time=self._wall_time,
                started_at=self._started_at,
                _origin=self._origin,
                _chunks=self._chunks,
                _attempts=self._attempts,
                _slowest=self._slowest,
                _busy=self._busy,
                records_kept=self._keep_records,
                records_truncated=self._truncated,
            )
        return stats

    def begin(self, origin: float | None = None) -> None:
        """The run starts (or started at ``origin``, a perf_counter() reading:
        the auto-selector's probe is part of the run)."""
        now = perf_counter()
        origin = now if origin is None else min(origin, now)
        self._origin = origin
        self._started_at = time() - (now - origin)

    def add(self, result: ChunkResult) -> None:
        done = len(result.values)
        if not done:
            return
        self._busy += result.finished - result.started
        if not self._keep_records:
            return
        if len(self._chunks) >= MAX_CHUNK_RECORDS:
            self._truncated = True
            return
        if result.item_ends is not None:
            self._note_slowest(result)
        chunk = result.chunk
        self._chunks.append(ChunkRecord(
            chunk.submitted, chunk.start, chunk.positions, result.worker, result.started,
            result.finished, result.cpu, result.item_ends, result.item_starts, done,
            frozenset(result.failures or ()),
        ))

    def _note_slowest(self, result: ChunkResult, keep: int = 5) -> None:
        """Keep the few slowest items with a short repr of their input."""
        ends = result.item_ends
        assert ends is not None
        # Without start times, each item began when the one before it ended.
        starts = result.item_starts if result.item_starts is not None else [result.started,
                                                                             *ends[:-1]]
        durations = [end - begin for begin, end in zip(starts, ends, strict=False)]
        offsets: Iterable[int] = range(len(durations))
        if len(durations) > keep:
            # Only items at least as slow as the chunk's keep-th slowest can
            # stay in the heap (ties included: which of equals stays depends
            # on the order they come in, which is kept): the others are
            # skipped before the heap is touched.
            floor = heapq.nlargest(keep, durations)[-1]
            offsets = [offset for offset, seconds in enumerate(durations) if seconds >= floor]
        slowest = self._slowest
        for offset in offsets:
            seconds = durations[offset]
            if len(slowest) < keep or seconds > slowest[0][0]:
                chunk = result.chunk
                # The input itself is kept (described only when read): a
                # repr per candidate would cost more than the items it times.
                entry = (seconds, chunk.index_of(offset), next(_ties),
                         chunk.items[offset])
                if len(slowest) < keep:
                    heapq.heappush(slowest, entry)
                else:
                    heapq.heapreplace(slowest, entry)

    def failed(self, index: int, error: BaseException) -> None:
        self._failed += 1

    def retried(self, index: int) -> None:
        self._retried += 1
        self._attempts[index] = self._attempts.get(index, 1) + 1

    def finish(self, items_done: int, *, chunksize: int | str | None = None) -> None:
        """The run ended (again, if it went on): its totals; the first time,
        its Stats go to every active :func:`monitor` (a later call updates
        the same Stats)."""
        with self._lock:
            if chunksize is not None:
                self._chunksize = chunksize
            self._wall_time = perf_counter() - self._origin
            self._items_done = items_done
            stats = self._stats
            if stats is not None:
                stats.wall_time = self._wall_time
                stats.tasks = items_done
                stats.chunksize = self._chunksize
            if self._ended:
                return
            self._ended = True
            with _monitors_lock:
                active = list(_monitors)
            if not active:
                return
            stats = self._made()
        for active_monitor in active:
            active_monitor._add(stats)

    def end(self, items_done: int, *, chunksize: int | str | None = None) -> Stats:
        """:meth:`finish`, and the run's Stats."""
        self.finish(items_done, chunksize=chunksize)
        return self.stats


# -- monitor() ----------------------------------------------------------------------

_monitors: list[Monitor] = []
_monitors_lock = threading.Lock()


class Monitor:
    """Collects the Stats of every run that ends while it is active (any thread)."""

    def __init__(self) -> None:
        self.runs: list[Stats] = []
        self._lock = threading.Lock()

    def _add(self, stats: Stats) -> None:
        with self._lock:
            self.runs.append(stats)

    def _snapshot(self) -> list[Stats]:
        with self._lock:
            return list(self.runs)

    def to_chrome_trace(self, path: str | Path) -> Path:
        """Write every run of the block as Trace Event JSON (Perfetto,
        chrome://tracing): one process per run, a track per worker, all on
        one clock (seconds since the first run started)."""
        from ._stats import trace_runs

        return trace_runs(self._snapshot(), path)

    def plot_timeline(self, path: str | Path) -> Path:
        """Write a PNG of every run of the block on one time axis: a group of
        rows (its workers) per run (needs matplotlib)."""
        from ._stats import plot_runs

        return plot_runs(self._snapshot(), path)

    def summary(self) -> str:
        """A table with one line per run."""
        lines = [
            f"{'#':>3} {'mode':<14} {'tasks':>8} {'failed':>6} {'wall s':>9} "
            f"{'items/s':>12} {'eff':>5}"
        ]
        for number, run in enumerate(self.runs, start=1):
            lines.append(
                f"{number:>3} {run.mode:<14} {run.tasks:>8} {run.failed:>6} "
                f"{run.wall_time:>9.4f} {run.throughput:>12,.1f} {run.efficiency:>5.0%}"
            )
        return "\n".join(lines)


@contextmanager
def monitor() -> Iterator[Monitor]:
    """Collect the Stats of every run inside the block: ``mon.runs``, ``mon.summary()``."""
    collected = Monitor()
    with _monitors_lock:
        _monitors.append(collected)
    try:
        yield collected
    finally:
        with _monitors_lock:
            _monitors.remove(collected)
