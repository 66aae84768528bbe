"""Thread mode: worker threads taking chunks from one shared queue.

Suits work that waits (network, disk, sleeps, C code that releases the GIL).
Workers run the shared :func:`parallax._worker.worker_loop`; each stops at its
own poison pill. A thread cannot be killed, so an item past its timeout is
*abandoned*: the caller gets :class:`TaskTimeoutError` at once, a fresh thread
takes the abandoned one's place, and the stuck thread exits as soon as the
item returns, its result discarded.

Free-threaded mode reuses this backend: on a CPython built without the GIL
these threads run Python code on several cores at once.
"""

from __future__ import annotations

import itertools
import logging
import queue
import threading
from time import perf_counter
from typing import TYPE_CHECKING, Any

from .._errors import ParallaxError, TaskTimeoutError, ThreadInitializerError, describe_item
from .._host import thread_pool_default
from .._units import Chunk, ChunkResult, Failure, Job
from .._worker import MARK_POSITION, MARK_STARTED, MARK_TOKEN, STOP, new_mark, worker_loop
from . import Backend, WorkerSetup, failed_chunk

if TYPE_CHECKING:
    from .._worker import Task

logger = logging.getLogger("parallax")

_pool_ids = itertools.count(1)


class _ThreadWorker:
    __slots__ = ("abandoned", "current", "fresh", "lock", "mark", "name", "partial", "thread")

    def __init__(self, name: str) -> None:
        self.name = name
        self.fresh = True  # started for a task that is already queued
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
        self._live: set[_ThreadWorker] = set()
        self._names = itertools.count(1)
        self._prefix = f"parallax-{self.name}-{next(_pool_ids)}"
        # Threads start as work arrives, up to ``workers``: a big I/O pool
        # costs nothing until it is needed. Each idle thread holds a token.
        self._idle = threading.Semaphore(0)
        self._closed = False
        self._broken: BaseException | None = None
        self._watchdog: threading.Thread | None = None
        self._stop_watching = threading.Event()

    @classmethod
    def default_workers(cls) -> int:
        return thread_pool_default()

    @property
    def broken(self) -> BaseException | None:
        return self._broken

    # -- workers -------------------------------------------------------------

    def _spawn(self) -> None:
        """Start one worker thread; the caller holds ``self._lock``."""
        worker = _ThreadWorker(f"{self._prefix}-{next(self._names)}")
        thread = threading.Thread(target=self._work, args=(worker,), name=worker.name, daemon=True)
        worker.thread = thread
        self._live.add(worker)
        thread.start()

    def _work(self, worker: _ThreadWorker) -> None:
        setup = self._setup
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
            logger.exception("parallax: worker thread %s failed", worker.name)
            current = worker.current
            if current is not None and not worker.abandoned:
                error = ParallaxError(f"worker thread {worker.name} failed: {exc!r}")
                current[0].deliver(failed_chunk(current[1], error))
            recycle = True
        with self._lock:
            self._live.discard(worker)
            if recycle and not self._closed and not worker.abandoned:
                self._spawn()

    def _next_task(self, worker: _ThreadWorker) -> Task | None:
        if worker.fresh:
            worker.fresh = False
        else:
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
        pause = 0.1
        while not self._stop_watching.wait(pause):
            pause = 0.1
            now = perf_counter()
            with self._lock:
                workers = list(self._live)
            for worker in workers:
                current = worker.current
                if current is None or current[0].timeout is None:
                    continue
                timeout = current[0].timeout
                position = int(worker.mark[MARK_POSITION])
                if position < 0:
                    continue
                left = worker.mark[MARK_STARTED] + timeout - now
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
            worker.mark[MARK_TOKEN] = -1.0
            values, failures = worker.partial[0] if worker.partial else ([], {})
            done = list(values[:position])
            failed = {offset: failure for offset, failure in failures.items() if offset < position}
        job, chunk = current
        index = chunk.index_of(position)
        error = TaskTimeoutError(
            f"item {index} ({describe_item(chunk.items[position])}) ran past the "
            f"{timeout:g} s timeout in {worker.name}; the thread was abandoned "
            "(threads cannot be killed) and replaced"
        )
        job.deliver(
            ChunkResult(
                chunk,
                done,
                failed or None,
                worker=worker.name,
                interruption=error,
                interrupted_at=position,
            )
        )
        with self._lock:
            self._live.discard(worker)
            if not self._closed:
                self._spawn()

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
                try:
                    while True:
                        self._tasks.get_nowait()
                except queue.Empty:
                    pass
            for _ in live:
                self._tasks.put(STOP)
            self._stop_watching.set()
        if wait:
            current = threading.current_thread()
            for worker in live:
                if worker.thread is not None and worker.thread is not current:
                    worker.thread.join()
