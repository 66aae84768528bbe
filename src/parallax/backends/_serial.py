"""Serial mode: every chunk runs in the caller's thread, at submit time.

For tests and debugging: breakpoints, profilers and tracebacks behave as in a
plain loop. ``check_pickle=True`` round-trips the function, each argument and
each result through the serializer process mode uses, so a unit test run
serially still catches what process mode could not ship. A per-task timeout
cannot interrupt the caller's own thread: an item that ran longer than
``timeout=`` is reported as :class:`TaskTimeoutError` after it returns.
"""

from __future__ import annotations

import weakref
from collections.abc import Callable, Iterator
from time import perf_counter, thread_time
from typing import Any

from .._calls import CheckedCall
from .._mark import new_mark
from .._serialize import round_trip
from .._timeouts import flag_overruns
from .._units import Chunk, ChunkResult, Failure, Job
from .._worker import run_chunk, set_inside_worker, use_worker_state
from ._base import Backend, WorkerSetup, failed_chunk


class SerialBackend(Backend):
    name = "serial"
    # Not a real dispatch cost: chunks of ~1 ms keep the per-chunk
    # bookkeeping out of the way of tiny items while a chunk's values still
    # fit in the CPU cache (measured: 20k-item chunks beat 150k-item ones).
    chunk_overhead = 1e-5
    prefetch = 0
    runs_in_caller = True

    def __init__(
        self,
        workers: int | None = None,
        setup: WorkerSetup | None = None,
        *,
        check_pickle: bool = False,
    ) -> None:
        self.workers = 1
        self._setup = setup or WorkerSetup()
        self._check_pickle = check_pickle
        self._initialized = False
        #: the worker state of a backend with an initializer or finalizer,
        #: which serves one run (the caller's thread is the one worker) ...
        self._state: dict[str, Any] = {}
        #: ... and of each run of a shared backend: one dict per run
        self._run_states: weakref.WeakKeyDictionary[Job, dict[str, Any]] = (
            weakref.WeakKeyDictionary()
        )
        self._mark = new_mark()
        self._closed = False
        self._broken: BaseException | None = None

    @classmethod
    def default_workers(cls) -> int:
        return 1

    def prepare(self, job: Job) -> None:
        if self._check_pickle:
            job.fn = CheckedCall(round_trip(job.fn, "function"))

    def submit(self, job: Job, chunk: Chunk) -> None:
        if self._closed:
            raise RuntimeError("cannot submit to a serial backend after shutdown")
        if not job.claim(chunk):
            return
        previous = set_inside_worker(True)
        setup = self._setup
        state = (self._state if setup.initializer is not None or setup.finalizer is not None
                 else self._run_states.setdefault(job, {}))
        previous_state = use_worker_state(state)
        try:
            if not self._initialized:
                self._initialized = True
                self._broken = self._setup.initialize(in_caller=True)
            if self._broken is not None:
                job.deliver(failed_chunk(chunk, self._broken))
                return
            counted = _counted(chunk.items) if job.all_or_nothing else None
            if counted is not None:
                result = _run_all_or_nothing(job.fn, chunk, *counted)
            else:
                result = run_chunk(
                    job.fn,
                    chunk,
                    self._mark,
                    [],
                    watch_time=job.timeout is not None,
                    track_position=False,
                    in_caller=True,
                    stop_at_failure=job.stop_at_failure,
                )
        finally:
            use_worker_state(previous_state)
            set_inside_worker(previous)
        result.worker = "the caller's thread"
        if job.timeout is not None:
            flag_overruns(result, job.timeout, "serial mode cannot interrupt it")
        job.deliver(result)

    @property
    def broken(self) -> BaseException | None:
        return self._broken

    def shutdown(self, wait: bool = True, *, cancel_pending: bool = False) -> None:
        if self._closed:
            return
        self._closed = True
        # The finalizer runs once, after the last item, if the initializer ran
        # and succeeded (the one worker started).
        if self._initialized and self._broken is None:
            previous = set_inside_worker(True)
            previous_state = use_worker_state(self._state)
            try:
                self._setup.finalize("the caller's thread", in_caller=True)
            finally:
                use_worker_state(previous_state)
                set_inside_worker(previous)


def _counted(items: Any) -> tuple[Iterator[Any], Callable[[], int]] | None:
    """The items, and how many were taken so far, for the inputs whose
    iterator can say (the run's lists, ranges, and a list's tail, which has
    ``counted()``: ``_chunking.Tail``); None otherwise."""
    counted = getattr(items, "counted", None)
    if counted is not None:
        result: tuple[Iterator[Any], Callable[[], int]] = counted()
        return result
    if isinstance(items, list | range):
        inner = iter(items)
        total = len(items)
        return inner, lambda: total - inner.__length_hint__()  # type: ignore[attr-defined]
    return None


def _run_all_or_nothing(fn: Callable[[Any], Any], chunk: Chunk, items: Iterator[Any],
                        taken: Callable[[], int]) -> ChunkResult:
    """A chunk of tiny items (``Job.all_or_nothing``) as one list comprehension.

    On Python 3.11+ a comprehension calling a Python function runs the call
    inside the interpreter loop; ``map`` (the worker loop's way) makes a C
    call per item, about 10% slower on ``x * 2``: for tiny work, the whole gap
    between parallax and a plain loop. A failure ends the comprehension and
    its list with it: the result then holds None for the items before the
    failing one, which the run never reads (it raises that failure, and
    ``map`` returns nothing). Ctrl-C stops the caller, as ``run_chunk`` lets
    it in the caller's thread.
    """
    started = perf_counter()
    cpu_started = thread_time()
    failures: dict[int, Failure] | None = None
    try:
        values = [fn(item) for item in items]
    except KeyboardInterrupt:
        raise
    except BaseException as exc:
        position = taken() - 1  # the failing item was taken
        values = [None] * (position + 1)
        failures = {position: Failure.capture(exc)}
    return ChunkResult(chunk, values, failures, started=started, finished=perf_counter(),
                       cpu=thread_time() - cpu_started)
