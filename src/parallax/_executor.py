"""``Executor``: a ``concurrent.futures.Executor`` over any parallax backend.

Lifecycle: an executor is *running* from construction (its workers start
with the first task) until ``shutdown()``, after which it is *closed*: new
work raises ``RuntimeError``; ``shutdown`` again is harmless. An executor
owns its backend. Its backend and its runs come from ``_launch``, the path
``parallax.map`` and friends take too (over a pooled backend), so they share
every behaviour documented here.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Generator, Iterable, Iterator
from concurrent.futures import Executor as _StdExecutor
from concurrent.futures import Future
from time import monotonic
from typing import Any, TypeVar

from typing_extensions import ParamSpec

from . import _pools
from ._calls import BoundCall, StarCall
from ._config import (
    check_callable,
    check_chunksize,
    check_errors,
    check_flag,
    check_initializer,
    check_iterable,
    check_max_tasks,
    check_mode,
    check_options,
    check_timeout,
    check_wait,
    check_workers,
    forced_common,
    merge_options,
)
from ._launch import (
    collect,
    length_of,
    new_run,
    open_engine,
    resolve_without_probe,
    start_future,
)
from ._run import ErrorPolicy, Raised, Run
from ._stats import Stats
from .backends import Backend, WorkerSetup

__all__ = ["Executor"]

P = ParamSpec("P")
R = TypeVar("R")
T = TypeVar("T")


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
        # What a using() block forces (checked there) beats the arguments.
        forced = forced_common()
        workers = forced.get("workers", workers)
        self._chunksize = forced.get("chunksize", self._chunksize)
        self._timeout = forced.get("timeout", self._timeout)
        initializer = forced.get("initializer", initializer)
        initargs = forced.get("initargs", initargs)
        max_tasks = forced.get("max_tasks_per_worker", max_tasks)
        resolved, reason, workers = resolve_without_probe(mode, None, workers)
        # An executor always owns its pool: its workers are set up for it alone.
        self._engine = open_engine(resolved, reason, workers=workers, options=options,
                                   setup=WorkerSetup(initializer, initargs, max_tasks))
        self._lock = threading.Lock()
        self._closed = False
        #: made while the interpreter shuts down (so serial, and not shut down by the exit hook)
        self._made_at_exit = _pools.exiting()
        self._runs: set[Run] = set()
        self._futures: set[Future[Any]] = set()
        self._finished_runs: list[Stats] = []

    # -- properties --------------------------------------------------------------

    @property
    def _backend(self) -> Backend:
        return self._engine.backend

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
        # The exit hook shut the backend down under an executor made before it.
        if self._closed or (_pools.exiting() and not self._made_at_exit):
            raise RuntimeError("cannot schedule new futures after shutdown")

    def submit(self, fn: Callable[P, R], /, *args: P.args, **kwargs: P.kwargs) -> Future[R]:
        """Run ``fn(*args, **kwargs)`` on a worker; returns its ``Future``."""
        check_callable(fn)
        future: Future[R] = Future()
        with self._lock:
            self._check_open()
            self._futures.add(future)
        future.add_done_callback(self._forget_future)
        try:
            start_future(self._backend, BoundCall(fn, args, kwargs), self._timeout, future)
        except BaseException:
            self._forget_future(future)
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
        wait = check_wait(timeout)
        deadline = None if wait is None else monotonic() + wait
        call: Callable[[Any], Any] = check_callable(fn)
        for iterable in iterables:
            check_iterable(iterable)
        source: Iterable[Any] = iterables[0]
        if len(iterables) > 1:
            call, source = StarCall(fn), zip(*iterables, strict=False)
        size = self._chunksize if chunksize is None else check_chunksize(chunksize)
        size = forced_common().get("chunksize", size)
        run = self._new_run(call, source, chunksize=size, timeout=self._timeout, errors="wrap",
                            deadline=deadline)
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
        return iter(self._checked_run(fn, iterable, ordered, chunksize, timeout, errors))

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
        return collect(self._checked_run(fn, iterable, ordered, chunksize, timeout, errors,
                                         star=True))

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
        self._engine.close(wait=wait, cancel_pending=cancel_futures)

    # -- runs --------------------------------------------------------------------------

    def _checked_run(
        self,
        fn: Callable[..., Any],
        iterable: Iterable[Any],
        ordered: bool,
        chunksize: int | str | None,
        timeout: float | None,
        errors: ErrorPolicy,
        *,
        star: bool = False,
    ) -> Run:
        """``imap``'s and ``starmap``'s run, their arguments checked."""
        check_callable(fn)
        check_iterable(iterable)
        size = self._chunksize if chunksize is None else check_chunksize(chunksize)
        per_task = self._timeout if timeout is None else check_timeout(timeout)
        policy = check_errors(errors)
        ordered = check_flag(ordered, name="ordered")
        forced = forced_common()
        size = forced.get("chunksize", size)
        per_task = forced.get("timeout", per_task)
        policy = forced.get("errors", policy)
        ordered = forced.get("ordered", ordered)
        return self._new_run(StarCall(fn) if star else fn, iterable, chunksize=size,
                             ordered=ordered, timeout=per_task, errors=policy)

    def _new_run(
        self,
        call: Callable[[Any], Any],
        iterable: Iterable[Any],
        *,
        chunksize: int | str,
        ordered: bool = True,
        timeout: float | None,
        errors: ErrorPolicy | str,
        deadline: float | None = None,
    ) -> Run:
        total = length_of(iterable)
        with self._lock:
            self._check_open()
            run = new_run(
                self._engine,
                call,
                iterable,
                chunksize=chunksize,
                ordered=ordered,
                errors=errors,
                timeout=timeout,
                deadline=deadline,
                total=total,
                on_finish=self._run_finished,
            )
            self._runs.add(run)
        return run

    def _run_finished(self, run: Run) -> None:
        with self._lock:
            self._runs.discard(run)
            if run.recorder is not None:
                self._finished_runs.append(run.recorder.stats)

