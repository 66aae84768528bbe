"""``Executor``: a ``concurrent.futures.Executor`` over any parallax backend.

Lifecycle: an executor is *running* from construction (its workers start
with the first task) until ``shutdown()``, after which it is *closed*: new
work raises ``RuntimeError``; ``shutdown`` again is harmless. One dropped
without ``shutdown()`` closes as with ``shutdown(wait=False)`` once it is
garbage-collected: what its workers need lives in a ``_Lifecycle`` that
nothing handed out holds the executor through. An executor
owns its backend. Its backend and its runs come from ``_launch``, the path
``parallax.map`` and friends take too (over a pooled backend), so they share
every behaviour documented here.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import functools
import math
import threading
import weakref
from collections.abc import Callable, Generator, Iterable, Iterator
from concurrent.futures import Executor as _StdExecutor
from concurrent.futures import Future
from time import monotonic
from typing import TYPE_CHECKING, Any, ParamSpec, TypeVar

from . import _pools
from ._calls import BoundCall, StarCall
from ._chunking import BALANCE
from ._config import (
    check_callable,
    check_chunksize,
    check_errors,
    check_finalizer,
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
    Engine,
    collect,
    length_of,
    new_run,
    open_engine,
    resolve_without_probe,
    start_future,
)
from ._run import ErrorPolicy, Raised, Run
from .backends import Backend, WorkerSetup

if TYPE_CHECKING:
    # _stats is imported when stats are read: its dataclasses would cost a
    # pool's first map milliseconds
    from ._recorder import StatsRecorder
    from ._stats import Stats

__all__ = ["Executor"]

P = ParamSpec("P")
R = TypeVar("R")
T = TypeVar("T")


class _Iteration:
    """What a result iterator's finalizer needs: its run, whether the iterator
    was ever started, and what a drop before that means for the run."""

    __slots__ = ("keep_running", "run", "started")

    def __init__(self, run: Run, *, keep_running: bool) -> None:
        self.run = run
        self.started = False
        #: a never-started iterator leaves the run going (``map``'s submitted work)
        self.keep_running = keep_running


def _results(iteration: _Iteration, *, unwrap: bool) -> Generator[Any, None, None]:
    """A run's results one by one, each forgotten as it is handed out.

    Each batch is emptied in place as it is consumed, so a result is alive
    only while its consumer holds it (bpo-14406): the batch is the run's and
    its backend's list too. ``unwrap``: raise an item's :class:`Raised`
    exception at its turn (``Executor.map``).
    """
    iteration.started = True
    run = iteration.run
    try:
        for batch in run.batches():
            batch.reverse()
            while batch:
                # No local holds the value while the generator is suspended.
                if unwrap and isinstance(batch[-1], Raised):
                    raise batch.pop().error
                yield batch.pop()
    finally:
        # Closed or collected once started, as the stdlib's result iterator:
        # what has not started is cancelled. Ends the run now (its stats
        # too), not at garbage collection.
        run.close()


def _abandoned(iteration: _Iteration, life: _Lifecycle) -> None:
    """A run's result iterator was garbage-collected: let go of the run.

    Once started, the run stops (its iterator's ``finally`` closes it too:
    weak references are cleared before a generator is finalized). Never
    started, a ``map``'s run goes on: every call it submitted runs, as the
    stdlib's do; an ``imap``'s stops.
    """
    if iteration.started or not iteration.keep_running:
        iteration.run.close()
    life.forget_run(iteration.run)


def _in_background(action: Callable[[], None]) -> None:
    """Run ``action`` (a shutdown without waiting) on a short thread of its own.

    For finalizers: they may run inside a garbage collection, in any thread,
    even a worker or manager thread of the very pool while it holds the
    pool's lock, which the shutdown takes too. Where no thread can start any
    more (the interpreter is exiting), it runs here: the exit hook has shut
    every pool down or is about to.
    """
    try:
        threading.Thread(target=action, name="parallax-executor-finalizer", daemon=True).start()
    except RuntimeError:
        with contextlib.suppress(Exception):
            action()


def _spared_at_cancel(mode: str, workers: int) -> int:
    """How many queued calls ``shutdown(cancel_futures=True)`` lets run.

    ``ProcessPoolExecutor`` moves up to ``max_workers + 1`` calls to its call
    queue as they are submitted, marking them running, so a cancelling
    shutdown always leaves some queued calls to finish (CPython's
    test_cancel_futures counts on it), even before any worker has started.
    A parallax process worker takes one chunk at a time, as it boots, so
    process mode spares as many calls, the oldest first, whether or not a
    worker has booted yet. ``ThreadPoolExecutor`` cancels every queued call;
    so do the other modes.
    """
    return workers + 1 if mode == "process" else 0


class _Lifecycle:
    """An executor's engine and its open work: everything its workers need,
    and nothing that holds the executor.

    Futures' callbacks, runs' ``on_finish``, result iterators' finalizers and
    the executor's own finalizer hold this, so an executor its user drops is
    garbage at once; its finalizer then shuts the engine down as
    ``shutdown(wait=False)`` would (the stdlib's executors do the same).
    """

    __slots__ = ("close_after_runs", "closed", "engine", "finished_runs", "futures", "lock",
                 "made_at_exit", "runs")

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.lock = threading.Lock()
        self.closed = False
        #: made while the interpreter shuts down (so serial, and not shut down by the exit hook)
        self.made_at_exit = _pools.exiting()
        self.runs: set[Run] = set()
        #: shutdown() came while runs were open: the last to end closes the engine
        self.close_after_runs = False
        #: the submitted futures not yet done, in submission order (a dict keeps it)
        self.futures: dict[Future[Any], None] = {}
        #: the ended runs' recorders: their Stats are made when read (``stats``)
        self.finished_runs: list[StatsRecorder] = []

    def forget_future(self, future: Future[Any]) -> None:
        with self.lock:
            self.futures.pop(future, None)

    def run_finished(self, run: Run) -> None:
        with self.lock:
            if run.recorder is not None and run in self.runs:
                self.finished_runs.append(run.recorder)
        self.forget_run(run)

    def forget_run(self, run: Run) -> None:
        """``run`` ended; after ``shutdown()`` the last one closes the engine.

        The run may have ended in a finalizer (its iterator was collected),
        so the engine closes as from one (see :func:`_in_background`).
        """
        with self.lock:
            if run not in self.runs:
                return
            self.runs.discard(run)
            last = self.close_after_runs and not self.runs
            if last:
                self.close_after_runs = False
        if last:
            _in_background(functools.partial(self.engine.close, wait=False))

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        """``Executor.shutdown``; the executor's finalizer calls it with ``wait=False``."""
        with self.lock:
            self.closed = True
            futures = list(self.futures)
            runs = list(self.runs)
            # The last open run to end closes the engine (see forget_run).
            self.close_after_runs = bool(runs) and not cancel_futures
        sparing = 0
        if cancel_futures:
            backend = self.engine.backend
            sparing = spare = _spared_at_cancel(backend.name, backend.workers)
            for future in futures:
                if spare and not (future.running() or future.done()):
                    spare -= 1  # (claimed by a worker meanwhile: it runs anyway)
                    continue
                future.cancel()
            for run in runs:
                run.cancel()
        elif runs:
            if wait:
                concurrent.futures.wait(futures)
            return
        # The pool drops its queue at once unless calls were spared, which
        # are in it: the cancelled futures' calls are then skipped as they come.
        self.engine.close(wait=wait, cancel_pending=cancel_futures and not sparing)


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
        finalizer, finalargs: run once in every worker as it stops (shutdown,
            recycling); an error is logged on the "parallax" logger.
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
        finalizer: Callable[..., object] | None = None,
        finalargs: tuple[Any, ...] = (),
        max_tasks_per_worker: int | None = None,
        **backend_options: Any,
    ) -> None:
        check_mode(mode)
        workers = check_workers(workers)
        self._chunksize = check_chunksize(chunksize)
        self._timeout = check_timeout(timeout)
        check_initializer(initializer, initargs)
        check_finalizer(finalizer, finalargs)
        max_tasks = check_max_tasks(max_tasks_per_worker)
        options = merge_options(check_options(backend_options, keywords=(
            "mode", "workers", "chunksize", "timeout", "initializer", "initargs",
            "finalizer", "finalargs", "max_tasks_per_worker")))
        # What a using() block forces (checked there) beats the arguments.
        forced = forced_common()
        workers = forced.get("workers", workers)
        self._chunksize = forced.get("chunksize", self._chunksize)
        self._timeout = forced.get("timeout", self._timeout)
        initializer = forced.get("initializer", initializer)
        initargs = forced.get("initargs", initargs)
        finalizer = forced.get("finalizer", finalizer)
        finalargs = forced.get("finalargs", finalargs)
        max_tasks = forced.get("max_tasks_per_worker", max_tasks)
        resolved, reason, workers = resolve_without_probe(mode, None, workers)
        # An executor always owns its pool: its workers are set up for it alone.
        engine = open_engine(resolved, reason, workers=workers, options=options,
                             setup=WorkerSetup(initializer, initargs, max_tasks,
                                               finalizer, finalargs))
        self._life = _Lifecycle(engine)
        # Dropped without shutdown(): its workers stop once the work submitted
        # before is done, as the stdlib's (see _dropped). Not at exit: the
        # exit hook shuts every pool down, waiting for that work.
        weakref.finalize(self, _dropped, self._life).atexit = False

    # -- properties --------------------------------------------------------------

    @property
    def _backend(self) -> Backend:
        return self._life.engine.backend

    @property
    def mode(self) -> str:
        """The backend this executor runs on (``"auto"`` already resolved).

        ``Executor("auto")`` decides at construction, by machine alone
        (``process`` with the GIL, ``free-threaded`` without), and measures
        nothing: ``.mode`` must answer before any work, ``submit`` must return
        at once rather than run its first call in the caller to time it, and
        the executor owns one pool for its life, so what a first task showed
        could not move its later ones to another pool. Name the mode, or use
        ``parallax.map``/``imap``, whose ``"auto"`` measures the first items.
        """
        return self._backend.name

    @property
    def workers(self) -> int:
        return self._backend.workers

    @property
    def stats(self) -> Stats:
        """The Stats of every ``map``/``imap``/``starmap`` run so far, combined."""
        life = self._life
        with life.lock:
            recorders = list(life.finished_runs)
        from ._stats import Stats

        return Stats.combine([recorder.stats for recorder in recorders], mode=self.mode,
                             workers=self.workers)

    def __repr__(self) -> str:
        state = "closed" if self._life.closed else "running"
        return f"<parallax.Executor mode={self.mode!r} workers={self.workers} {state}>"

    # -- concurrent.futures API ------------------------------------------------------

    def _check_open(self) -> None:
        # The exit hook shut the backend down under an executor made before it.
        if self._life.closed or (_pools.exiting() and not self._life.made_at_exit):
            raise RuntimeError("cannot schedule new futures after shutdown")

    def submit(self, fn: Callable[P, R], /, *args: P.args, **kwargs: P.kwargs) -> Future[R]:
        """Run ``fn(*args, **kwargs)`` on a worker; returns its ``Future``."""
        check_callable(fn)
        future: Future[R] = Future()
        life = self._life
        with life.lock:
            self._check_open()
            broken = self._backend.broken
            if isinstance(broken, concurrent.futures.BrokenExecutor):
                # A failed initializer: as the stdlib's executors, refuse new
                # work at once (the futures already submitted failed with it).
                raise broken
            life.futures[future] = None
        # The lifecycle's method, not the executor's: a future the user keeps
        # must not keep the executor (and so its workers) alive.
        future.add_done_callback(life.forget_future)
        try:
            start_future(self._backend, BoundCall(fn, args, kwargs), self._timeout, future)
        except BaseException:
            life.forget_future(future)
            raise
        return future

    def map(
        self,
        fn: Callable[..., R],
        *iterables: Iterable[Any],
        timeout: float | None = None,
        chunksize: int | None = None,
        buffersize: int | None = None,
    ) -> Iterator[R]:
        """Like ``concurrent.futures.Executor.map`` (3.14): ordered results, lazily.

        As the stdlib's: the input is read and every call submitted now, so
        the work runs whether or not the results are ever iterated; with
        ``buffersize=N`` the input is read lazily instead, at most N items
        ahead of the consumer (chunks of at most N items; of 1 where the
        chunk size is ``"auto"``). Closing the iterator once started (or
        dropping it) cancels the calls not yet running. ``timeout`` bounds
        the whole iteration from this call on (``TimeoutError``); an item's
        exception is raised when its turn comes. ``chunksize=None``: the
        executor's, where ``"auto"`` cuts the whole input into about four
        chunks per worker (nothing is measured before they are all
        submitted). A map started before :meth:`shutdown` delivers all its
        results.

        Raises:
            TypeError: ``buffersize`` is not an integer or None.
            ValueError: ``buffersize`` is below 1.
            RuntimeError: the executor is shut down (before the input is read).
        """
        if not iterables:
            raise TypeError("map() needs at least one iterable")
        if buffersize is not None:
            if isinstance(buffersize, bool) or not isinstance(buffersize, int):
                raise TypeError(f"buffersize must be a positive integer or None, "
                                f"not {type(buffersize).__name__}")
            if buffersize < 1:
                raise ValueError(f"buffersize must be a positive integer or None, "
                                 f"not {buffersize!r}")
        wait = check_wait(timeout)
        deadline = None if wait is None else monotonic() + wait
        call: Callable[[Any], Any] = check_callable(fn)
        for iterable in iterables:
            check_iterable(iterable)
        self._check_open()
        source: Iterable[Any] = iterables[0]
        if len(iterables) > 1:
            call, source = StarCall(fn), zip(*iterables, strict=False)
        size = self._chunksize if chunksize is None else check_chunksize(chunksize)
        size = forced_common().get("chunksize", size)
        if buffersize is None:
            # Taken now, as the stdlib's calls are: later changes to a list
            # the caller keeps do not reach the calls.
            items = source if isinstance(source, tuple | range) else list(source)
            size = _chunksize_at_once(size, len(items), self._backend)
            # Every chunk is submitted at once (the window holds them all).
            window, source = max(1, len(items)), items
        else:
            size = 1 if isinstance(size, str) else min(size, buffersize)
            # Chunks submitted or finished but not yet consumed: N items at most.
            window = max(1, buffersize // size)
        run = self._new_run(call, source, chunksize=size, timeout=self._timeout, errors="wrap",
                            deadline=deadline)
        run.window = window
        run.start()
        return self._iterate(run, unwrap=True, keep_running=True)

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
        return self._iterate(self._checked_run(fn, iterable, ordered, chunksize, timeout, errors),
                             unwrap=False)

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

        ``wait``: return once the submitted futures are done and, when no
        ``map``/``imap`` iterator is open, the workers have stopped. An open
        iterator (made before this call, not yet consumed to its end) still
        delivers all its results: the workers stay until it is consumed,
        closed or garbage-collected, then stop. With ``cancel_futures`` the
        calls not yet running are cancelled (in process mode, as in
        ``ProcessPoolExecutor``, the ``workers + 1`` oldest queued ones run
        still), and open iterators end with ``CancelledError`` (also when
        they are being iterated in other threads). Safe to call more than
        once. An executor dropped without it shuts down as with
        ``wait=False`` once it is garbage-collected.
        """
        self._life.shutdown(wait, cancel_futures=cancel_futures)

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
        life = self._life
        with life.lock:
            life.closed = True
            futures = list(life.futures)
            runs = list(life.runs)
        for future in futures:
            if future.cancel():  # it had not started: let wait() and as_completed() know
                with contextlib.suppress(RuntimeError):  # (a worker's claim was first)
                    future.set_running_or_notify_cancel()
        self._backend.terminate(kill)
        from ._broken import WorkerCrashedError  # multiprocessing: only when needed

        error = WorkerCrashedError(
            f"Executor.{'kill' if kill else 'terminate'}_workers() stopped the worker "
            "running this call"
        )
        for future in futures:
            with contextlib.suppress(concurrent.futures.InvalidStateError):  # settled meanwhile
                future.set_exception(error)
        for run in runs:
            run.cancel()
        life.engine.close(wait=False, cancel_pending=True)

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
        life = self._life
        with life.lock:
            self._check_open()
            run = new_run(
                life.engine,
                call,
                iterable,
                chunksize=chunksize,
                ordered=ordered,
                errors=errors,
                timeout=timeout,
                deadline=deadline,
                total=total,
                on_finish=life.run_finished,
            )
            life.runs.add(run)
        return run

    def _iterate(self, run: Run, *, unwrap: bool, keep_running: bool = False) -> Iterator[Any]:
        """The run's result iterator. Dropping it ends the run, unless it was
        never started and ``keep_running`` (``map``: its calls are submitted)."""
        iteration = _Iteration(run, keep_running=keep_running)
        results = _results(iteration, unwrap=unwrap)
        # A generator never started runs no ``finally`` when collected.
        weakref.finalize(results, _abandoned, iteration, self._life).atexit = False
        return results


def _chunksize_at_once(size: int | str, total: int, backend: Backend) -> int | str:
    """The chunk size of a ``map`` that submits its whole input at once.

    ``"auto"`` sizes chunks by the item times measured as results come back;
    cut all at once, nothing is measured yet, so a chunk gets the most items
    the adaptive sizer would ever give it on an input this long: about
    ``BALANCE`` (four) chunks per worker, enough to balance the pool with
    little dispatch. An engine with a fixed size of its own keeps it.
    """
    if not isinstance(size, str) or backend.auto_chunksize() is not None:
        return size
    return max(1, math.ceil(total / (BALANCE * backend.chunk_slots)))


def _dropped(life: _Lifecycle) -> None:
    """An executor was garbage-collected without ``shutdown()``: shut it down
    without waiting (the stdlib's executors do the same), so its workers stop
    once the work submitted before is done; the futures its user keeps still
    settle, and open ``map``/``imap`` iterators still deliver."""
    if not life.closed:
        _in_background(functools.partial(life.shutdown, wait=False))
