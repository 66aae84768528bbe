"""The unit of work and the worker loop every pool backend runs.

A run is split into :class:`Chunk` objects. A worker takes a chunk, runs every
item through the function, captures each value or exception, and hands back a
:class:`ChunkResult` with the chunk's timings. Threads and processes run the
very same :func:`worker_loop`; they differ only in how a task arrives (a shared
queue, a pipe) and how a result leaves (a callback, a pipe).

Each worker also owns a *mark*: three floats ``[chunk token, item position,
item start time]`` it updates as it goes. The pool reads it to name the item a
dead worker was running and to spot an item that has run past its timeout. For
process workers the mark lives in shared memory, so it survives the worker.
"""

from __future__ import annotations

import threading
from time import perf_counter, thread_time

from ._errors import TaskTimeoutError, describe_item
from ._units import SOMEWHERE, Chunk, ChunkResult, Failure

# Not typing's TYPE_CHECKING, and no dataclasses: a process worker imports
# this module, and ``typing`` and ``dataclasses`` (with ``inspect``) would add
# milliseconds to every worker's start-up.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import Any, Final

    #: a worker's mark: three floats in (possibly shared) memory
    Mark = memoryview[float]
else:
    Mark = memoryview

__all__ = [
    "STOP",
    "inside_worker",
    "run_chunk",
    "worker_loop",
]

#: The poison pill. ``None`` survives pickling unchanged, so the same sentinel
#: stops a thread reading a queue and a process reading a pipe.
STOP: Final = None

#: Items faster than this are not timed one by one: two clock reads would cost
#: more than the work. Their records use the chunk's average instead.
PER_ITEM_TIMING_THRESHOLD: Final = 20e-6

MARK_TOKEN, MARK_POSITION, MARK_STARTED = 0, 1, 2
MARK_SIZE: Final = 3

_worker_state = threading.local()


_process_is_worker = False


def inside_worker() -> bool:
    """True when called from code that a parallax worker is running."""
    return _process_is_worker or bool(getattr(_worker_state, "active", False))


def mark_process_as_worker() -> None:
    """Called once in a worker process: every thread of it counts as inside."""
    global _process_is_worker
    _process_is_worker = True


def set_inside_worker(active: bool) -> bool:
    """Mark this thread as (not) running worker code; returns the previous state."""
    previous = inside_worker()
    _worker_state.active = active
    return previous


def run_chunk(
    fn: Callable[[Any], Any],
    chunk: Chunk,
    mark: Mark,
    values: list[Any],
    *,
    watch_time: bool,
    track_position: bool = True,
    in_caller: bool = False,
    failures: dict[int, Failure] | None = None,
    stop_at_failure: bool = False,
) -> ChunkResult:
    """Run every item of ``chunk`` through ``fn``, appending to ``values``.

    Never raises for an exception of ``fn``: it is captured. The one
    exception is ``KeyboardInterrupt`` when ``in_caller`` (serial mode runs in
    the caller's thread, where Ctrl-C must stop the caller); in a worker it
    is just another exception of the item.

    ``watch_time`` (a timeout is set) records each item's start in the mark
    and stops early if the pool gives up on the chunk; ``track_position``
    records which item runs, for naming the item a dead process was running.
    Items faster than ``PER_ITEM_TIMING_THRESHOLD`` are neither timed nor
    marked one by one (the mark says ``SOMEWHERE``): should the process die
    among them, the run re-runs them one per chunk to find the culprit. The
    loops are written out per case: for tiny items the per-item work of this
    function is the whole overhead of parallax.

    ``stop_at_failure`` ends the chunk at its first failing item: the result
    then holds fewer values than the chunk has items, and no interruption.
    """
    # One iterator serves every loop below, and after a failure the next loop
    # resumes from it: no loop re-reads or copies the items (for tiny work,
    # touching every item once more costs as much as the work itself).
    remaining = iter(chunk.items)
    append = values.append
    # ``failures`` may be handed in (empty) so a pool can read it mid-chunk
    started = perf_counter()
    cpu_started = thread_time()
    ends: list[float] | None = []
    n = len(chunk.items)
    pos = 0
    first = True
    while pos < n:
        try:
            if watch_time:
                assert ends is not None
                for pos in range(pos, n):  # noqa: B020 - resumes after a failure
                    if mark[MARK_TOKEN] < 0:  # the pool gave up on this chunk
                        break
                    mark[MARK_POSITION] = pos
                    mark[MARK_STARTED] = perf_counter()
                    append(fn(next(remaining)))
                    ends.append(perf_counter())
                pos = len(values)
                if pos < n:  # abandoned
                    break
            elif first:
                # The first two items are always timed; they decide whether
                # the rest are worth a clock read each. Two, because one
                # hiccup (a page fault, a preemption) must not make a worker
                # time and ship back a timestamp per item of a huge chunk.
                first = False
                assert ends is not None
                previous = started
                for pos in range(min(2, n)):
                    mark[MARK_POSITION] = pos
                    append(fn(next(remaining)))
                    now = perf_counter()
                    ends.append(now)
                    if now - previous < PER_ITEM_TIMING_THRESHOLD:
                        ends = None
                        break
                    previous = now
                pos = len(values)
            elif ends is not None:
                for pos in range(pos, n):  # noqa: B020
                    mark[MARK_POSITION] = pos
                    append(fn(next(remaining)))
                    ends.append(perf_counter())
                pos = n
            else:
                if track_position:
                    mark[MARK_POSITION] = SOMEWHERE
                # C-speed loop; on an exception extend() keeps what it added
                # so far, so len(values) is the failing item's position.
                values.extend(map(fn, remaining))
                pos = n
        except BaseException as exc:
            if in_caller and isinstance(exc, KeyboardInterrupt):
                raise
            pos = len(values)  # the item that raised (the iterator is past it)
            append(None)
            if failures is None:
                failures = {}
            failures[pos] = Failure.capture(exc)
            if ends is not None:
                ends.append(perf_counter())
            if stop_at_failure:
                break
            first = False
            pos += 1
    finished = perf_counter()
    return ChunkResult(
        chunk,
        values,
        failures or None,
        started=started,
        finished=finished,
        cpu=thread_time() - cpu_started,
        item_ends=ends,
    )


#: What a worker loop pulls: the function, the chunk, whether to track item
#: start times (a timeout is set), whether to stop the chunk at its first
#: failure (``Job.stop_at_failure``), and an opaque tag handed back with the result.
if TYPE_CHECKING:
    Task = tuple[Callable[[Any], Any], Chunk, bool, bool, Any]


def worker_loop(
    next_task: Callable[[], Task | None],
    report: Callable[[ChunkResult, Any], None],
    mark: Mark,
    *,
    name: str,
    max_tasks: int | None = None,
    should_retire: Callable[[], bool] | None = None,
    partial: list[tuple[list[Any], dict[int, Failure]]] | None = None,
    track_position: bool = True,
) -> bool:
    """Take tasks until the poison pill; return True when the worker should be
    recycled (``max_tasks`` items run, or ``should_retire()`` said so).

    ``partial``, when given, receives the list each chunk's values are
    appended to, so a pool can salvage finished items of a chunk whose worker
    it abandons.
    """
    done = 0
    token = 0.0
    previous = set_inside_worker(True)
    try:
        while True:
            task = next_task()
            if task is STOP:
                return False
            fn, chunk, watch_time, stop_at_failure, tag = task
            token += 1.0
            mark[MARK_TOKEN] = token
            values: list[Any] = []
            failures: dict[int, Failure] | None = None
            if partial is not None:
                failures = {}
                partial.clear()
                partial.append((values, failures))
            result = run_chunk(
                fn,
                chunk,
                mark,
                values,
                watch_time=watch_time,
                track_position=track_position,
                failures=failures,
                stop_at_failure=stop_at_failure,
            )
            mark[MARK_POSITION] = -1.0
            result.worker = name
            report(result, tag)
            done += len(chunk.items)
            if max_tasks is not None and done >= max_tasks:
                return True
            if should_retire is not None and should_retire():
                return True
    finally:
        set_inside_worker(previous)


def new_mark() -> Mark:
    """A mark for a worker that lives in this process."""
    mark = memoryview(bytearray(8 * MARK_SIZE)).cast("d")
    mark[MARK_POSITION] = -1.0
    return mark


def flag_overruns(result: ChunkResult, timeout: float, why: str) -> None:
    """Turn items that ran past ``timeout`` into TaskTimeoutError, after the fact."""
    ends = result.item_ends
    if not ends:
        return
    chunk = result.chunk
    previous = result.started
    for position, end in enumerate(ends):
        if end - previous > timeout:
            index = chunk.index_of(position)
            error = TaskTimeoutError(
                f"item {index} ({describe_item(chunk.items[position])}) ran "
                f"{end - previous:.3g} s, over the {timeout:g} s timeout "
                f"({why}, so it ran to the end)"
            )
            result.values[position] = None
            if result.failures is None:
                result.failures = {}
            result.failures[position] = Failure(error, "")
        previous = end
