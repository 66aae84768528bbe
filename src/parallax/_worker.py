"""The worker loop every pool backend runs, and the run of one chunk.

A run is split into :class:`Chunk` objects. A worker takes a chunk, runs every
item through the function, captures each value or exception, and hands back a
:class:`ChunkResult` with the chunk's timings. Threads and processes run the
very same :func:`worker_loop`; they differ only in how a task arrives (a shared
queue, a pipe) and how a result leaves (a callback, a pipe).

Each worker also owns a *mark* (``_mark.py``) it updates as it goes: the pool
reads it to name the item a dead worker was running and to spot an item that
has run past its timeout.
"""

from __future__ import annotations

import threading
from contextvars import Context, ContextVar, copy_context
from time import perf_counter, thread_time

from ._calls import BoundCall, CheckedCall
from ._mark import IDLE, MARK_POSITION, MARK_SOMEWHERE, MARK_STARTED, MARK_TOKEN, Mark
from ._units import Chunk, ChunkResult, Failure

# Not typing's TYPE_CHECKING, and no dataclasses: a process worker imports
# this module, and ``typing`` and ``dataclasses`` (with ``inspect``) would add
# milliseconds to every worker's start-up.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable, Iterator
    from typing import Any, Final

__all__ = [
    "STOP",
    "inside_worker",
    "run_chunk",
    "run_finalizer",
    "state_context",
    "use_worker_state",
    "worker_loop",
    "worker_state",
]

#: The poison pill. ``None`` survives pickling unchanged, so the same sentinel
#: stops a thread reading a queue and a process reading a pipe.
STOP: Final = None

#: Items faster than this are not timed one by one: two clock reads would cost
#: more than the work. Their records use the chunk's average instead.
PER_ITEM_TIMING_THRESHOLD: Final = 20e-6

_worker_state = threading.local()


_process_is_worker = False
#: a process worker's own state (every thread of it shares it); a thread
#: worker's lives in ``_worker_state.state`` and wins over this one
_process_state: dict[str, Any] | None = None


def inside_worker() -> bool:
    """True when called from code that a parallax worker is running."""
    return _process_is_worker or bool(getattr(_worker_state, "active", False))


def mark_process_as_worker() -> None:
    """Called once in a worker process: every thread of it counts as inside,
    and every thread of it sees the process's one worker state."""
    global _process_is_worker, _process_state
    _process_is_worker = True
    _process_state = {}


#: the worker state of an event loop's tasks (asyncio mode): a context
#: variable, since a caller's loop runs the caller's own code on the same thread
_loop_state: ContextVar[dict[str, Any] | None] = ContextVar("parallax_worker_state", default=None)


def worker_state() -> dict[str, Any]:
    """The calling worker's own dict: the same object in the initializer, in
    every task the worker runs and in the finalizer.

    One per thread worker, per process worker, per event loop (asyncio mode),
    per run (serial mode). Keep per-worker resources in it (a connection, a
    cache) that the initializer opens and the finalizer closes.

    Raises:
        RuntimeError: called outside a parallax worker.
    """
    state = _loop_state.get()
    if state is None:
        state = getattr(_worker_state, "state", None)
    if state is None:
        state = _process_state
    if state is None:
        raise RuntimeError(
            "parallax.worker_state() is only available inside a parallax worker: "
            "in an initializer, a task or a finalizer that parallax runs"
        )
    return state


def state_context(state: dict[str, Any]) -> Context:
    """A copy of the current context in which ``state`` is the worker state
    (for an event loop's tasks, its initializer and its finalizer)."""
    context = copy_context()
    context.run(_loop_state.set, state)
    return context


def use_worker_state(state: dict[str, Any] | None) -> dict[str, Any] | None:
    """Make ``state`` this thread's worker state; returns the previous one."""
    previous: dict[str, Any] | None = getattr(_worker_state, "state", None)
    _worker_state.state = state
    return previous


def set_inside_worker(active: bool) -> bool:
    """Mark this thread as (not) running worker code; returns the previous state."""
    previous = inside_worker()
    _worker_state.active = active
    return previous


def run_finalizer(
    finalizer: Callable[..., object] | None, finalargs: tuple[Any, ...], worker: str,
    *, in_caller: bool = False,
) -> None:
    """Run ``finalizer(*finalargs)``, logging what it raises on the "parallax"
    logger: the worker is stopping, and no result is left to carry an error.

    ``KeyboardInterrupt`` propagates only ``in_caller`` (serial mode).
    """
    if finalizer is None:
        return
    try:
        finalizer(*finalargs)
    except BaseException as exc:
        if in_caller and isinstance(exc, KeyboardInterrupt):
            raise
        # Imported here: a process worker does not load logging to start.
        import logging

        logging.getLogger("parallax").error(
            "parallax: the worker finalizer failed in %s", worker, exc_info=exc
        )


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
    ``values`` starts empty; ``failures``, when handed in, too.
    """
    n = len(chunk.items)
    # One iterator serves every loop below, and after a failure the next loop
    # resumes from it: no loop re-reads or copies the items (for tiny work,
    # touching every item once more costs as much as the work itself).
    remaining = iter(chunk.items)
    # Per-item end times; None once the first items proved too fast to time.
    ends: list[float] | None = []
    # Without a timeout, the first items decide whether the rest are timed.
    deciding = not watch_time
    started = perf_counter()
    cpu_started = thread_time()
    while (pos := len(values)) < n:
        try:
            if watch_time:
                assert ends is not None
                if not _run_watched(fn, remaining, values, ends, mark, pos, n):
                    break  # the pool gave up on the chunk
            elif deciding:
                deciding = False
                assert ends is not None
                ends = _run_first(fn, remaining, values, ends, mark, started, n)
            elif ends is not None:
                _run_timed(fn, remaining, values, ends, mark, pos, n)
            else:
                _run_untimed(fn, remaining, values, mark, track_position)
        except BaseException as exc:
            if in_caller and isinstance(exc, KeyboardInterrupt):
                raise
            # The failing item's position: every loop appends in order, and
            # the iterator is already past the item.
            pos = len(values)
            values.append(None)
            # ``failures`` may be handed in (empty) so a pool can read it mid-chunk
            if failures is None:
                failures = {}
            failures[pos] = Failure.capture(exc)
            if ends is not None:
                ends.append(perf_counter())
            if stop_at_failure:
                break
            deciding = False
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


# The loops of run_chunk, one per case. Each runs items from the shared
# iterator until the chunk ends or an item raises (run_chunk captures it and
# calls a loop again for the rest). Their bodies are the per-item cost of
# parallax: keep them to the reads and writes each case needs.


def _run_watched(
    fn: Callable[[Any], Any], remaining: Iterator[Any], values: list[Any], ends: list[float],
    mark: Mark, start: int, n: int,
) -> bool:
    """A timeout is set: mark each item's start for the pool's watch, time it,
    and stop when the pool gives up on the chunk (then return False)."""
    append = values.append
    ended = ends.append
    for pos in range(start, n):
        if mark[MARK_TOKEN] < 0:
            return False
        # The start before the position: a pool that reads the new position
        # then reads this item's start, never the one of the item before.
        mark[MARK_STARTED] = perf_counter()
        mark[MARK_POSITION] = pos
        append(fn(next(remaining)))
        ended(perf_counter())
    return True


def _run_first(
    fn: Callable[[Any], Any], remaining: Iterator[Any], values: list[Any], ends: list[float],
    mark: Mark, started: float, n: int,
) -> list[float] | None:
    """The first two items, always timed: ``ends``, or None if they were too
    fast to time the rest one by one.

    Two, because one hiccup (a page fault, a preemption) must not make a
    worker time and ship back a timestamp per item of a huge chunk.
    """
    append = values.append
    previous = started
    for pos in range(min(2, n)):
        mark[MARK_POSITION] = pos
        append(fn(next(remaining)))
        now = perf_counter()
        ends.append(now)
        if now - previous < PER_ITEM_TIMING_THRESHOLD:
            return None
        previous = now
    return ends


def _run_timed(
    fn: Callable[[Any], Any], remaining: Iterator[Any], values: list[Any], ends: list[float],
    mark: Mark, start: int, n: int,
) -> None:
    """Items slow enough to time: mark and time each."""
    append = values.append
    ended = ends.append
    for pos in range(start, n):
        mark[MARK_POSITION] = pos
        append(fn(next(remaining)))
        ended(perf_counter())


def _run_untimed(
    fn: Callable[[Any], Any], remaining: Iterator[Any], values: list[Any], mark: Mark,
    track_position: bool,
) -> None:
    """Tiny items: no clock read and no mark per item."""
    if track_position:
        mark[MARK_POSITION] = MARK_SOMEWHERE
    # C-speed loop; on an exception extend() keeps what it added so far, so
    # len(values) is the failing item's position.
    values.extend(map(fn, remaining))


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
            token += 1.0
            done += _run_task(task, report, mark, token, name=name, partial=partial,
                              track_position=track_position)
            # Nothing of the task (its function, items, results) stays alive
            # while the worker waits for the next one.
            task = None
            if max_tasks is not None and done >= max_tasks:
                return True
            if should_retire is not None and should_retire():
                return True
    finally:
        set_inside_worker(previous)


def _run_task(
    task: Task,
    report: Callable[[ChunkResult, Any], None],
    mark: Mark,
    token: float,
    *,
    name: str,
    partial: list[tuple[list[Any], dict[int, Failure]]] | None,
    track_position: bool,
) -> int:
    """Run one task of :func:`worker_loop` and report it; how many items it had.

    Its own frame: the task's locals (function, items, results) go when it
    returns, not when the worker's next task replaces them.
    """
    fn, chunk, watch_time, stop_at_failure, tag = task
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
    mark[MARK_POSITION] = IDLE
    # A submitted call runs once: its arguments go before its result does
    # (a process worker would keep them in its cache of functions).
    _release_call(fn)
    result.worker = name
    report(result, tag)
    return len(chunk.items)


def _release_call(fn: Callable[[Any], Any]) -> None:
    """Let go of the function and arguments of ``fn`` if it is one ``submit``
    call (a :class:`BoundCall`, perhaps inside a :class:`CheckedCall`).

    Each runs exactly once, as a one-item chunk of its own job: so the
    stdlib's promise holds in the worker too, where a process worker's
    cache of recent functions would otherwise keep the last calls'
    arguments alive (CPython's test_ressources_gced_in_workers).
    """
    if type(fn) is CheckedCall:
        fn = fn.fn
    if type(fn) is BoundCall:
        fn.release()


