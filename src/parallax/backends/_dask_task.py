"""Dask mode's worker side: the task that runs a chunk on a Dask worker.

Everything here runs inside a Dask worker process. Dask pickles
:func:`run_on_worker` and :class:`Lifecycle` by reference, so a worker
imports this module (not the caller-side backend, ``_dask``); parallax must be
importable there, the same version as the caller's. What a task returns is a
:class:`~parallax._protocol.DaskOutcome`, made and read through ``_protocol``
as process mode's messages are.
"""

from __future__ import annotations

import threading
from time import perf_counter, time
from typing import Any

import distributed
from distributed import WorkerPlugin

from .._mark import new_mark
from .._protocol import (
    ChunkFailed,
    DaskOutcome,
    JobCache,
    PickledFailure,
    Result,
    decode_items,
    encode,
)
from .._timeouts import abandon, time_left
from .._units import Chunk, ChunkResult, Failure
from .._worker import run_chunk, run_finalizer, set_inside_worker, use_worker_state

__all__ = ["Lifecycle", "run_on_worker"]

#: functions this worker process has unpickled, by job token (a run's chunks
#: share one; a few runs may interleave)
_jobs = JobCache()

#: where a task unpickles what it is sent, and the likely fix, as its errors say
_WHERE = "on the dask worker"
_HINT = " (is every module it needs installed there?)"

#: each pool's worker state in this worker process, by the pool's token: the
#: initializer, the pool's tasks (on any of the worker's threads) and the
#: finalizer share it
_states: dict[str, dict[str, Any]] = {}
_states_lock = threading.Lock()


def _state_of(pool: str) -> dict[str, Any]:
    with _states_lock:
        return _states.setdefault(pool, {})


def run_on_worker(
    token: str, fn_blob: bytes, items_blob: bytes, timeout: float | None,
    stop_at_failure: bool = False, pool: str = "",
) -> DaskOutcome:
    """The Dask task of one chunk: run its items, capture values and exceptions.

    The function and the items arrive pickled by parallax and are unpickled
    here, where a failure is the chunk's SerializationError: left to Dask, an
    argument that does not unpickle on a worker (its module is not installed
    there, say) breaks the worker's connection to the scheduler, and with it
    every task of the cluster.
    """
    try:
        name = str(distributed.get_worker().address)
    except ValueError:  # not on a worker (an in-process test double)
        name = "dask worker"
    fn = _jobs.load(token, fn_blob, _WHERE, _HINT)
    items = fn if isinstance(fn, BaseException) else decode_items(items_blob, _WHERE, _HINT)
    if isinstance(items, BaseException):
        failed = ChunkFailed(PickledFailure.of(Failure.capture(items)))
        return DaskOutcome(encode(failed), name, time() - perf_counter())
    chunk = Chunk.fresh(0, 0, items)
    timed_out_at = -1
    state = _state_of(pool)
    previous = set_inside_worker(True)  # nested parallax calls degrade to serial
    previous_state = use_worker_state(state)
    try:
        if timeout is None:
            result = run_chunk(fn, chunk, new_mark(), [], watch_time=False, track_position=False,
                               stop_at_failure=stop_at_failure)
        else:
            result, timed_out_at = _run_watched(fn, chunk, timeout, state)
    finally:
        use_worker_state(previous_state)
        set_inside_worker(previous)
    return DaskOutcome(encode(Result.of(result)), name, time() - perf_counter(), timed_out_at)


def _run_watched(
    fn: Any, chunk: Chunk, timeout: float, state: dict[str, Any]
) -> tuple[ChunkResult, int]:
    """Run the chunk in a helper thread; abandon it at the first item past ``timeout``.

    Returns the chunk's result and the position of the abandoned item (-1 when
    every item finished in time). An abandoned result holds the items before
    the stuck one; the helper thread stops after the stuck item returns.
    """
    mark = new_mark()
    values: list[Any] = []
    # Handed to run_chunk, which records each failure here as it happens: an
    # abandoned chunk never returns its result.
    failures: dict[int, Failure] = {}
    done: list[ChunkResult] = []

    def target() -> None:
        previous = set_inside_worker(True)
        use_worker_state(state)  # a thread of its own: nothing to restore
        try:
            done.append(run_chunk(fn, chunk, mark, values, watch_time=True, failures=failures))
        finally:
            set_inside_worker(previous)

    started = perf_counter()
    helper = threading.Thread(target=target, name="parallax-dask-timed-chunk", daemon=True)
    helper.start()
    while True:
        position, left = time_left(mark, timeout, perf_counter())
        if position < 0:
            helper.join(0.005)  # not started yet
        elif left > 0:
            helper.join(left)
        else:
            kept, failed = abandon(mark, values, failures, position)
            result = ChunkResult(chunk, kept, failed, started=started, finished=perf_counter())
            return result, position
        if not helper.is_alive():
            break
    helper.join()
    if not done:  # the helper died of an exception run_chunk lets through
        raise RuntimeError("the chunk's helper thread ended without a result")
    return done[0], -1


# (the ignores cover mypy runs with and without distributed's own hints installed)
class Lifecycle(WorkerPlugin):  # type: ignore[misc,unused-ignore]
    """Runs the pool's initializer as each worker starts (or joins) and its
    finalizer as the worker closes or the plugin is unregistered, both with
    the pool's worker state of that worker process."""

    def __init__(self, pool: str, initializer: Any, initargs: tuple[Any, ...],
                 finalizer: Any = None, finalargs: tuple[Any, ...] = ()) -> None:
        self.pool = pool
        self.initializer = initializer
        self.initargs = initargs
        self.finalizer = finalizer
        self.finalargs = finalargs

    def setup(self, worker: Any) -> None:
        if self.initializer is None:
            return
        previous = use_worker_state(_state_of(self.pool))
        try:
            self.initializer(*self.initargs)
        finally:
            use_worker_state(previous)

    def teardown(self, worker: Any) -> None:
        previous = use_worker_state(_state_of(self.pool))
        try:
            run_finalizer(self.finalizer, self.finalargs, str(getattr(worker, "address", worker)))
        finally:
            use_worker_state(previous)
            with _states_lock:
                _states.pop(self.pool, None)
