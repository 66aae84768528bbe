"""``Executor``: a ``concurrent.futures.Executor`` over any parallax backend.

Lifecycle: an executor is *running* from construction (its workers start
with the first task) until ``shutdown()``, after which it is *closed*: new
work raises ``RuntimeError``; ``shutdown`` again is harmless. ``parallax.map``
and friends are an executor used in a ``with`` block over a pooled backend,
so they share every behaviour documented here.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable, Generator, Iterable, Iterator
from concurrent.futures import Executor as _StdExecutor
from concurrent.futures import Future, InvalidStateError
from time import monotonic
from typing import Any, TypeVar

from typing_extensions import ParamSpec

from . import _host, _pools
from ._auto import Facts, decide
from ._config import (
    check_callable,
    check_chunksize,
    check_errors,
    check_initializer,
    check_iterable,
    check_max_tasks,
    check_mode,
    check_options,
    check_timeout,
    check_workers,
    merge_options,
    resolve,
)
from ._errors import WorkerCrashedError
from ._run import ErrorPolicy, Raised, RetryPolicy, Run
from ._stats import Stats, StatsRecorder
from ._units import Chunk, ChunkResult, Job
from ._worker import BoundCall, StarCall
from .backends import Backend, WorkerSetup

__all__ = ["Executor"]

P = ParamSpec("P")
R = TypeVar("R")
T = TypeVar("T")


class _FutureJob(Job):
    """A one-item job whose outcome settles a ``concurrent.futures.Future``."""

    __slots__ = ("future",)

    def __init__(
        self, fn: Callable[[Any], Any], future: Future[Any], timeout: float | None
    ) -> None:
        super().__init__(fn, self._settle, timeout=timeout)
        self.future = future

    def claim(self, chunk: Chunk) -> bool:
        if not self.wants(chunk) or self.future.done():
            return False
        try:
            return self.future.set_running_or_notify_cancel()
        except RuntimeError:  # settled already: its executor's workers were terminated
            return False

    def _settle(self, result: ChunkResult) -> None:
        future = self.future
        try:
            if result.failures:
                failure = result.failures[0]
                future.set_exception(failure.to_exception(None, None, result.worker))
            elif result.interruption is not None:
                future.set_exception(result.interruption)
            else:
                future.set_result(result.values[0])
        except InvalidStateError:
            pass  # cancelled meanwhile: nobody waits for the outcome


def _length(iterable: Iterable[Any]) -> int | None:
    try:
        return len(iterable)  # type: ignore[arg-type]
    except TypeError:
        return None


def _unwrap(results: Generator[Any, None, None]) -> Iterator[Any]:
    try:
        for value in results:
            if isinstance(value, Raised):
                raise value.error
            yield value
    finally:
        results.close()  # ends the run now (its stats too), not at garbage collection


class Executor(_StdExecutor):
    """Runs calls on a pool of the chosen mode; a drop-in ``concurrent.futures.Executor``.

    Args:
        mode: ``"auto"``, ``"serial"``, ``"thread"``, ``"process"``,
            ``"free-threaded"``, ``"asyncio"``, ``"dask"`` or a registered
            name. An executor keeps one pool for its life, so ``"auto"``
            picks by machine: ``process`` (GIL enabled) or ``free-threaded``.
            ``using()`` and ``PARALLAX_MODE`` override it.
        workers: pool size (default: per mode, e.g. usable CPUs for process).
        chunksize: items per chunk for ``map``/``imap``, or ``"auto"``.
        timeout: seconds each task may run (``TaskTimeoutError`` past it).
        initializer, initargs: run once in every worker as it starts.
        max_tasks_per_worker: recycle a worker after this many items.
        **backend_options: passed to the backend that runs (see its docs).

    Raises:
        ValueError: an unknown mode or a bad value, naming what is valid.
        TypeError: an option no backend accepts.
    """

    def __init__(
        self,
        mode: str = "auto",
        *,
        workers: int | None = None,
        chunksize: int | str = "auto",
        timeout: float | None = None,
        initializer: Callable[..., object] | None = None,
        initargs: tuple[Any, ...] = (),
        max_tasks_per_worker: int | None = None,
        **backend_options: Any,
    ) -> None:
        check_mode(mode)
        workers = check_workers(workers)
        self._chunksize = check_chunksize(chunksize)
        self._timeout = check_timeout(timeout)
        check_initializer(initializer, initargs)
        max_tasks = check_max_tasks(max_tasks_per_worker)
        options = merge_options(check_options(backend_options))
        resolved, reason = resolve(mode)
        if resolved == "auto":
            plan = decide(Facts(gil_enabled=_host.gil_enabled(), cpus=_host.usable_cpus()), workers)
            resolved, reason = plan.mode, plan.reason
        setup = WorkerSetup(initializer, initargs, max_tasks)
        backend = _pools.new_backend(resolved, workers=workers, setup=setup, options=options)
        self._attach(backend, reason, owned=True)

    @classmethod
    def _over(cls, backend: Backend, reason: str, *, chunksize: int | str,
              timeout: float | None, owned: bool) -> Executor:
        """An executor over an existing backend (the function API's pooled ones)."""
        executor = cls.__new__(cls)
        executor._chunksize = chunksize
        executor._timeout = timeout
        executor._attach(backend, reason, owned=owned)
        return executor

    def _attach(self, backend: Backend, reason: str, *, owned: bool) -> None:
        self._backend = backend
        self._reason = reason
        self._owned = owned
        self._lock = threading.Lock()
        self._closed = False
        self._runs: set[Run] = set()
        self._futures: set[Future[Any]] = set()
        self._finished_runs: list[Stats] = []
        self._lease_held = not owned

    # -- properties --------------------------------------------------------------

    @property
    def mode(self) -> str:
        """The backend this executor runs on (``"auto"`` already resolved)."""
        return self._backend.name

    @property
    def workers(self) -> int:
        return self._backend.workers

    @property
    def stats(self) -> Stats:
        """The Stats of every ``map``/``imap``/``starmap`` run so far, combined."""
        with self._lock:
            runs = list(self._finished_runs)
        return Stats.combine(runs, mode=self.mode, workers=self.workers)

    def __repr__(self) -> str:
        state = "closed" if self._closed else "running"
        return f"<parallax.Executor mode={self.mode!r} workers={self.workers} {state}>"

    # -- concurrent.futures API ------------------------------------------------------

    def _check_open(self) -> None:
        if self._closed:
            raise RuntimeError("cannot schedule new futures after shutdown")

    def submit(self, fn: Callable[P, R], /, *args: P.args, **kwargs: P.kwargs) -> Future[R]:
        """Run ``fn(*args, **kwargs)`` on a worker; returns its ``Future``."""
        check_callable(fn)
        future: Future[R] = Future()
        job = _FutureJob(BoundCall(fn, args, kwargs), future, self._timeout)
        with self._lock:
            self._check_open()
            self._futures.add(future)
        future.add_done_callback(self._forget_future)
        try:
            self._backend.prepare(job)
            self._backend.submit(job, Chunk.fresh(0, 0, [None]))
        except BaseException:
            self._forget_future(future)
            future.cancel()
            raise
        return future

    def _forget_future(self, future: Future[Any]) -> None:
        with self._lock:
            self._futures.discard(future)

    def map(
        self,
        fn: Callable[..., R],
        *iterables: Iterable[Any],
        timeout: float | None = None,
        chunksize: int | None = None,
    ) -> Iterator[R]:
        """Like ``concurrent.futures.Executor.map``: ordered results, lazily.

        ``timeout`` bounds the whole iteration from this call on
        (``TimeoutError``); an item's exception is raised when its turn comes.
        Work starts at once; the input is read ahead a bounded number of chunks.
        """
        if not iterables:
            raise TypeError("map() needs at least one iterable")
        deadline = None if timeout is None else monotonic() + timeout
        if len(iterables) == 1:
            run = self._start_run(fn, iterables[0], chunksize=chunksize, errors="wrap",
                                  deadline=deadline)
        else:
            for iterable in iterables:
                check_iterable(iterable)
            run = self._start_run(StarCall(fn), zip(*iterables, strict=False),
                                  chunksize=chunksize, errors="wrap", deadline=deadline)
        run.start()
        return _unwrap(iter(run))

    def imap(
        self,
        fn: Callable[[T], R],
        iterable: Iterable[T],
        *,
        ordered: bool = True,
        chunksize: int | str | None = None,
        timeout: float | None = None,
        errors: ErrorPolicy = "raise",
    ) -> Iterator[R]:
        """Lazy results of ``fn`` over ``iterable``, in order unless ``ordered=False``."""
        return iter(
            self._start_run(fn, iterable, chunksize=chunksize, ordered=ordered,
                            timeout=timeout, errors=errors)
        )

    def starmap(
        self,
        fn: Callable[..., R],
        iterable: Iterable[Iterable[Any]],
        *,
        ordered: bool = True,
        chunksize: int | str | None = None,
        timeout: float | None = None,
        errors: ErrorPolicy = "raise",
    ) -> list[R]:
        """``[fn(*args) for args in iterable]``, computed on the pool."""
        check_callable(fn)
        run = self._start_run(StarCall(fn), iterable, chunksize=chunksize, ordered=ordered,
                              timeout=timeout, errors=errors)
        return collect(run)

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        """Stop accepting work; finish (or with ``cancel_futures``, drop) what is queued.

        Runs still being iterated in other threads end with ``CancelledError``
        when ``cancel_futures`` is true. Safe to call more than once.
        """
        with self._lock:
            self._closed = True
            futures = list(self._futures)
            runs = list(self._runs)
        if cancel_futures:
            for future in futures:
                future.cancel()
            for run in runs:
                run.cancel()
        if self._owned:
            self._backend.shutdown(wait=wait, cancel_pending=cancel_futures)
        else:
            if wait:
                for future in futures:
                    if not future.cancelled():
                        future.exception()  # waits; the outcome stays on the future
            with self._lock:
                release, self._lease_held = self._lease_held, False
            if release:
                _pools.release(self._backend)

    def terminate_workers(self) -> None:
        """Stop every worker now (SIGTERM for processes) and shut down, as in
        Python 3.14: calls not started are cancelled, running ones fail with
        ``WorkerCrashedError``; threads cannot be stopped, so running threads
        are abandoned (their results discarded)."""
        self._stop_workers(kill=False)

    def kill_workers(self) -> None:
        """As :meth:`terminate_workers`, with SIGKILL for processes."""
        self._stop_workers(kill=True)

    def _stop_workers(self, *, kill: bool) -> None:
        with self._lock:
            self._closed = True
            futures = list(self._futures)
            runs = list(self._runs)
        for future in futures:
            if future.cancel():  # it had not started: let wait() and as_completed() know
                with contextlib.suppress(RuntimeError):  # (a worker's claim was first)
                    future.set_running_or_notify_cancel()
        if self._owned:
            self._backend.terminate(kill)
        error = WorkerCrashedError(
            f"Executor.{'kill' if kill else 'terminate'}_workers() stopped the worker "
            "running this call"
        )
        for future in futures:
            with contextlib.suppress(InvalidStateError):  # settled meanwhile
                future.set_exception(error)
        for run in runs:
            run.cancel()
        if not self._owned:
            self.shutdown(wait=False)

    # -- runs --------------------------------------------------------------------------

    def _start_run(
        self,
        fn: Callable[[Any], Any],
        iterable: Iterable[Any],
        *,
        chunksize: int | str | None = None,
        ordered: bool = True,
        timeout: float | None = None,
        errors: ErrorPolicy | str = "raise",
        deadline: float | None = None,
        retry: RetryPolicy | None = None,
        total: int | None = None,
        reason: str | None = None,
        on_progress: Callable[[int], None] | None = None,
        record_tasks: bool = True,
    ) -> Run:
        check_callable(fn)
        check_iterable(iterable)
        size = self._chunksize if chunksize is None else check_chunksize(chunksize)
        per_task = self._timeout if timeout is None else check_timeout(timeout)
        policy = errors if errors == "wrap" else check_errors(errors)
        if total is None:
            total = _length(iterable)
        recorder = StatsRecorder(
            self.mode, reason or self._reason, self.workers, size, tasks=record_tasks
        )
        with self._lock:
            self._check_open()
            run = Run(
                self._backend,
                fn,
                iterable,
                chunksize=size,
                ordered=ordered,
                errors=policy,
                timeout=per_task,
                deadline=deadline,
                retry=retry,
                total=total,
                recorder=recorder,
                on_progress=on_progress,
                on_finish=self._run_finished,
            )
            self._runs.add(run)
        return run

    def _run_finished(self, run: Run) -> None:
        with self._lock:
            self._runs.discard(run)
            if run.recorder is not None:
                self._finished_runs.append(run.recorder.stats)


def collect(run: Run) -> list[Any]:
    """All results of a run as one list.

    The largest batch becomes the result list and the others are spliced in
    around it, so a run delivered as one big chunk (serial ``map``) hands
    over its values without copying them. The batches are the run's own
    lists, no longer used once delivered.
    """
    batches = [batch for batch in run.batches(all_at_once=True) if batch]
    if not batches:
        return []
    largest = max(range(len(batches)), key=lambda position: len(batches[position]))
    results = batches[largest]
    if largest:
        before: list[Any] = []
        for batch in batches[:largest]:
            before.extend(batch)  # list.extend(list) copies at C speed; a chain would not
        results[:0] = before
    for batch in batches[largest + 1 :]:
        results.extend(batch)
    return results
