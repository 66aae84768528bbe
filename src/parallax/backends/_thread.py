"""Thread mode: worker threads taking chunks from one shared queue.

Suits work that waits (network, disk, sleeps, C code that releases the GIL).
Workers run the shared :func:`parallax._worker.worker_loop`; each stops at its
own poison pill. A thread cannot be killed, so an item past its timeout is
*abandoned*: the caller gets :class:`TaskTimeoutError` at once, a fresh thread
takes the abandoned one's place, and the stuck thread exits as soon as the
item returns, its result discarded.

Every queued chunk runs, as in ``concurrent.futures``: a worker recycled
(``max_tasks_per_worker``) or abandoned is replaced even after shutdown began,
``shutdown(wait=True)`` waits for the replacements too, and the pool finishes
its queue before the interpreter exits (``_exit.py``). Only
``shutdown(cancel_pending=True)`` drops queued chunks, never running ones.

Free-threaded mode reuses this backend: on a CPython built without the GIL
these threads run Python code on several cores at once.
"""

from __future__ import annotations

import contextlib
import itertools
import queue
import threading
import time
from time import perf_counter
from typing import TYPE_CHECKING, Any

from .._errors import ParallaxError
from .._host import thread_pool_default
from .._mark import new_mark
from .._timeouts import ABANDONED_THREAD, abandon, time_left, timeout_error
from .._units import Chunk, ChunkResult, Failure, Job
from .._worker import STOP, use_worker_state, worker_loop
from ._base import Backend, WorkerSetup, failed_chunk
from ._exit import finish_at_exit

if TYPE_CHECKING:
    from .._worker import Task

_pool_ids = itertools.count(1)


class _ThreadWorker:
    __slots__ = ("abandoned", "current", "fresh", "lock", "mark", "name", "partial", "thread")

    def __init__(self, name: str, fresh: bool) -> None:
        self.name = name
        #: started for a task already queued (it holds no idle token to give)
        self.fresh = fresh
        self.mark = new_mark()
        self.partial: list[tuple[list[Any], dict[int, Failure]]] = []
        self.current: tuple[Job, Chunk] | None = None
        self.abandoned = False
        self.lock = threading.Lock()
        self.thread: threading.Thread | None = None


class ThreadBackend(Backend):
    name = "thread"
    chunk_overhead = 2e-5
    prefetch = 1

    def __init__(self, workers: int | None = None, setup: WorkerSetup | None = None) -> None:
        self.workers = workers or self.default_workers()
        self._setup = setup or WorkerSetup()
        self._tasks: queue.SimpleQueue[tuple[Job, Chunk] | None] = queue.SimpleQueue()
        self._lock = threading.Lock()
        #: notified whenever a worker leaves ``_live`` (exits or is abandoned)
        self._left = threading.Condition(self._lock)
        self._live: set[_ThreadWorker] = set()
        self._names = itertools.count(1)
        self._prefix = f"parallax-{self.name}-{next(_pool_ids)}"
        # Threads start as work arrives, up to ``workers``: a big I/O pool
        # costs nothing until it is needed. Each idle thread holds a token.
        self._idle = threading.Semaphore(0)
        self._closed = False
        self._broken: BaseException | None = None
        self._watchdog: threading.Thread | None = None
        finish_at_exit(self)

    @classmethod
    def default_workers(cls) -> int:
        return thread_pool_default()

    @property
    def broken(self) -> BaseException | None:
        return self._broken

    # -- workers -------------------------------------------------------------

    def _spawn(self, *, fresh: bool = True) -> None:
        """Start one worker thread; the caller holds ``self._lock``.

        ``fresh``: it starts for a chunk just queued (not: it replaces one).
        """
        worker = _ThreadWorker(f"{self._prefix}-{next(self._names)}", fresh)
        thread = threading.Thread(target=self._work, args=(worker,), name=worker.name, daemon=True)
        worker.thread = thread
        self._live.add(worker)
        thread.start()

    def _work(self, worker: _ThreadWorker) -> None:
        setup = self._setup
        # This worker's own state: the initializer, its tasks and its
        # finalizer see the same dict (a fresh one per thread, recycled or not).
        use_worker_state({})
        failed = None
        if setup.initializer is not None:
            from .._broken import ThreadInitializerError  # multiprocessing: only when needed

            failed = setup.initialize(kind=ThreadInitializerError)
        if failed is not None:
            self._broken = self._broken or failed
        try:
            recycle = worker_loop(
                lambda: self._next_task(worker),
                lambda result, job: self._report(worker, result, job),
                worker.mark,
                name=worker.name,
                max_tasks=setup.max_tasks_per_worker,
                partial=worker.partial,
                track_position=False,  # a thread cannot die under an item
            )
        except BaseException as exc:  # a bug of ours: never leave a chunk undelivered
            import logging  # only a failing worker thread logs

            logging.getLogger("parallax").exception("parallax: worker thread %s failed",
                                                    worker.name)
            recycle = True
            current = worker.current
            if current is not None and not worker.abandoned:
                error = ParallaxError(f"worker thread {worker.name} failed: {exc!r}")
                # The delivery may fail the same way: the bookkeeping below
                # must run regardless, or shutdown waits for this worker forever.
                with contextlib.suppress(BaseException):
                    current[0].deliver(failed_chunk(current[1], error))
        # Before leaving ``_live``: shutdown(wait=True) waits for finalizers too.
        if failed is None:
            setup.finalize(worker.name)
        use_worker_state(None)
        with self._lock:
            if recycle and not worker.abandoned:
                # Replaced even after shutdown: chunks may still be queued, and
                # the poison pill meant for this worker waits for its successor.
                self._spawn(fresh=False)
            self._live.discard(worker)
            self._left.notify_all()

    def _next_task(self, worker: _ThreadWorker) -> Task | None:
        if worker.fresh:
            worker.fresh = False
        elif not worker.abandoned:  # an abandoned thread is no idle worker
            self._idle.release()
        while not worker.abandoned:
            task = self._tasks.get()
            if task is STOP:
                return STOP
            job, chunk = task
            if self._broken is not None:
                job.deliver(failed_chunk(chunk, self._broken))
                continue
            if not job.claim(chunk):
                continue
            worker.current = task
            return job.fn, chunk, job.timeout is not None, job.stop_at_failure, job
        return STOP

    def _report(self, worker: _ThreadWorker, result: ChunkResult, job: Job) -> None:
        with worker.lock:
            if worker.abandoned:
                return
            worker.current = None
        job.deliver(result)

    # -- timeouts ------------------------------------------------------------

    def _ensure_watchdog(self) -> None:
        with self._lock:
            if self._watchdog is None and not self._closed:
                self._watchdog = threading.Thread(
                    target=self._watch, name=f"{self._prefix}-watchdog", daemon=True
                )
                self._watchdog.start()

    def _watch(self) -> None:
        # Until the last worker is gone: queued chunks still run (and may
        # overrun) after shutdown began.
        pause = 0.1
        while True:
            time.sleep(pause)
            pause = 0.1
            now = perf_counter()
            with self._lock:
                if self._closed and not self._live:
                    return
                workers = list(self._live)
            for worker in workers:
                current = worker.current
                if current is None or current[0].timeout is None:
                    continue
                timeout = current[0].timeout
                position, left = time_left(worker.mark, timeout, now)
                if left > 0:
                    pause = min(pause, max(left, 0.001))
                    continue
                self._abandon(worker, current, position, timeout)

    def _abandon(
        self, worker: _ThreadWorker, current: tuple[Job, Chunk], position: int, timeout: float
    ) -> None:
        with worker.lock:
            if worker.current is not current or worker.abandoned:
                return
            worker.abandoned = True
            values, failures = worker.partial[0] if worker.partial else ([], {})
            done, failed = abandon(worker.mark, values, failures, position)
        job, chunk = current
        error = timeout_error(chunk, position, timeout, ABANDONED_THREAD,
                              where=f" in {worker.name}")
        job.deliver(
            ChunkResult(
                chunk,
                done,
                failed,
                worker=worker.name,
                interruption=error,
                interrupted_at=position,
            )
        )
        with self._lock:
            # Replaced even after shutdown, as a recycled worker is: the stuck
            # thread never takes its poison pill, its successor does.
            self._spawn(fresh=False)
            self._live.discard(worker)
            self._left.notify_all()

    # -- Backend -------------------------------------------------------------

    def submit(self, job: Job, chunk: Chunk) -> None:
        with self._lock:
            if self._closed:
                raise RuntimeError(f"cannot submit to a {self.name} backend after shutdown")
            self._tasks.put((job, chunk))
            if not self._idle.acquire(blocking=False) and len(self._live) < self.workers:
                self._spawn()
        if job.timeout is not None and self._watchdog is None:
            self._ensure_watchdog()

    def shutdown(self, wait: bool = True, *, cancel_pending: bool = False) -> None:
        with self._lock:
            already = self._closed
            self._closed = True
            live = list(self._live)
        if not already:
            if cancel_pending:
                self._drop_queued()
            # One pill per live worker: a worker that leaves without taking
            # its pill (recycled, abandoned) is replaced by one that will.
            for _ in live:
                self._tasks.put(STOP)
        if wait:
            self._join_workers()

    def _drop_queued(self) -> None:
        """Drop every chunk no worker has taken; running chunks finish.

        A dropped chunk whose job still wants it (its owner did not cancel it
        first, as ``Executor.shutdown`` does) is delivered as cancelled, so
        nobody waits for it forever.
        """
        while True:
            try:
                task = self._tasks.get_nowait()
            except queue.Empty:
                return
            if task is STOP:
                continue
            job, chunk = task
            if job.wants(chunk):
                from concurrent.futures import CancelledError  # only a shutdown cancels

                error = CancelledError(f"the {self.name} pool was shut down before it ran")
                job.deliver(failed_chunk(chunk, error))

    def _join_workers(self) -> None:
        """Wait for every worker but this thread, replacements started meanwhile
        too; not for a thread abandoned meanwhile (its item may never return)."""
        current = threading.current_thread()
        with self._left:
            while any(worker.thread is not current for worker in self._live):
                self._left.wait()
