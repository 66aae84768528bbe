"""Asyncio mode: coroutine functions, many at a time, on one event loop.

Called from sync code, the backend runs a private event loop on its own
thread. Through ``await parallax.amap(...)`` it runs on the caller's loop
(backend option ``loop=``). ``workers`` is the concurrency limit: at most that
many items are awaited at once (a semaphore). The items of a chunk start
together; a per-task timeout cancels the item's coroutine
(``TaskTimeoutError``), and cancelling a run cancels its coroutines.

A chunk is *taken* (``Job.claim``) when its first item gets a slot under the
concurrency limit, not when it reaches the loop: until then it is queued, so
``shutdown(cancel_pending=True)`` drops it while running coroutines finish.
A private loop finishes its queued chunks before the interpreter exits, as
``concurrent.futures`` does (``_exit.py``).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import threading
from collections.abc import Callable
from concurrent.futures import CancelledError
from concurrent.futures import Future as ThreadFuture
from time import perf_counter
from typing import Any

from .._timeouts import timeout_error
from .._units import Chunk, ChunkResult, Failure, Job
from .._worker import set_inside_worker, state_context
from ._base import Backend, WorkerSetup, failed_chunk
from ._exit import finish_at_exit

#: the same as the auto-selector's choice for coroutine functions
DEFAULT_CONCURRENCY = 1000
#: chunks kept in play at once; chunks are sized so that together they keep
#: the concurrency limit busy twice over
CHUNK_SLOTS = 8

_loop_ids = itertools.count(1)


class _Gate:
    """Whether a chunk was taken: decided once, by the first of its items to
    get a slot (None: not yet)."""

    __slots__ = ("taken",)

    def __init__(self) -> None:
        self.taken: bool | None = None


class AsyncioBackend(Backend):
    name = "asyncio"
    chunk_overhead = 5e-5
    prefetch = 1

    def __init__(
        self,
        workers: int | None = None,
        setup: WorkerSetup | None = None,
        *,
        loop: asyncio.AbstractEventLoop | None = None,
    ) -> None:
        self.workers = workers or self.default_workers()
        self._setup = setup or WorkerSetup()
        self._external = loop
        self._loop: asyncio.AbstractEventLoop | None = loop
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        self._semaphore: asyncio.Semaphore | None = None
        self._tasks: dict[Job, set[asyncio.Task[None]]] = {}
        self._closed = False
        self._broken: BaseException | None = None
        self._initialized = loop is None
        #: the loop's worker state: its initializer, coroutines and finalizer see it
        self._state: dict[str, Any] = {}
        #: the initializer ran and succeeded: the finalizer runs at shutdown
        self._started = False
        #: shut down with cancel_pending: chunks not yet taken are dropped
        self._dropping = False
        self._name = f"parallax-asyncio-{next(_loop_ids)}"
        if loop is None:  # a caller's loop is the caller's to finish
            finish_at_exit(self)

    @classmethod
    def default_workers(cls) -> int:
        return DEFAULT_CONCURRENCY

    @property
    def chunk_slots(self) -> int:
        return CHUNK_SLOTS

    def auto_chunksize(self) -> int | None:
        return max(1, (2 * self.workers) // (CHUNK_SLOTS * (2 + self.prefetch)))

    @property
    def broken(self) -> BaseException | None:
        return self._broken

    # -- loop ------------------------------------------------------------------------

    def _ensure_loop(self) -> asyncio.AbstractEventLoop:
        with self._lock:
            if self._closed:
                raise RuntimeError("cannot submit to an asyncio backend after shutdown")
            if self._loop is None:
                ready: ThreadFuture[asyncio.AbstractEventLoop] = ThreadFuture()
                self._thread = threading.Thread(
                    target=self._run_loop, args=(ready,), name=self._name, daemon=True
                )
                self._thread.start()
                self._loop = ready.result()
            return self._loop

    def _run_loop(self, ready: ThreadFuture[asyncio.AbstractEventLoop]) -> None:
        loop = asyncio.new_event_loop()
        asyncio.set_event_loop(loop)
        set_inside_worker(True)
        self._broken = state_context(self._state).run(self._setup.initialize)
        self._started = self._broken is None
        ready.set_result(loop)
        try:
            loop.run_forever()
        finally:
            with contextlib.suppress(Exception):
                loop.run_until_complete(loop.shutdown_asyncgens())
            loop.close()

    # -- Backend -----------------------------------------------------------------------

    def submit(self, job: Job, chunk: Chunk) -> None:
        loop = self._ensure_loop()
        if self._broken is not None:
            job.deliver(failed_chunk(chunk, self._broken))
            return
        loop.call_soon_threadsafe(self._start, job, chunk)

    def _start(self, job: Job, chunk: Chunk) -> None:
        if not job.wants(chunk):
            return
        if not self._initialized:  # external loop: initializer runs on it, once
            self._initialized = True
            self._broken = state_context(self._state).run(self._setup.initialize)
            self._started = self._broken is None
            if self._broken is not None:
                job.deliver(failed_chunk(chunk, self._broken))
                return
        if self._semaphore is None:
            self._semaphore = asyncio.Semaphore(self.workers)
        # The caller's context (as ensure_future would copy it) plus the state.
        task = asyncio.get_running_loop().create_task(
            self._run_chunk(job, chunk), context=state_context(self._state)
        )
        tasks = self._tasks.setdefault(job, set())
        tasks.add(task)
        task.add_done_callback(lambda done: self._forget(job, done))

    def _forget(self, job: Job, task: asyncio.Task[None]) -> None:
        tasks = self._tasks.get(job)
        if tasks is not None:
            tasks.discard(task)
            if not tasks:
                del self._tasks[job]

    def _take(self, job: Job, chunk: Chunk) -> bool:
        """Claim ``chunk`` as it gets its first slot; False: it is dropped."""
        if not self._dropping:
            return job.claim(chunk)
        if job.wants(chunk):  # its owner did not cancel it: say why it never ran
            job.deliver(failed_chunk(chunk, CancelledError(
                "the asyncio loop was shut down before it ran"
            )))
        return False

    async def _run_chunk(self, job: Job, chunk: Chunk) -> None:
        items = chunk.items
        values: list[Any] = [None] * len(items)
        failures: dict[int, Failure] = {}
        starts = [0.0] * len(items)
        ends = [0.0] * len(items)
        started = perf_counter()
        gate = _Gate()
        await asyncio.gather(
            *(
                self._run_item(job, chunk, gate, position, values, failures, starts, ends)
                for position in range(len(items))
            )
        )
        if not gate.taken:
            return  # dropped before any item ran
        job.deliver(
            ChunkResult(
                chunk,
                values,
                failures or None,
                worker=self._name,
                started=started,
                finished=perf_counter(),
                item_starts=starts,
                item_ends=ends,
            )
        )

    async def _run_item(
        self,
        job: Job,
        chunk: Chunk,
        gate: _Gate,
        position: int,
        values: list[Any],
        failures: dict[int, Failure],
        starts: list[float],
        ends: list[float],
    ) -> None:
        assert self._semaphore is not None
        fn: Callable[[Any], Any] = job.fn
        async with self._semaphore:
            if gate.taken is None:
                gate.taken = self._take(job, chunk)
            if not gate.taken:
                return
            starts[position] = perf_counter()
            try:
                if job.timeout is None:
                    values[position] = await fn(chunk.items[position])
                else:
                    try:
                        async with asyncio.timeout(job.timeout) as scope:
                            values[position] = await fn(chunk.items[position])
                    except TimeoutError:
                        if not scope.expired():
                            raise
                        error = timeout_error(
                            chunk, position, job.timeout, "; its coroutine was cancelled"
                        )
                        failures[position] = Failure(error, "")
            except asyncio.CancelledError:
                raise
            except BaseException as exc:
                failures[position] = Failure.capture(exc)
            finally:
                ends[position] = perf_counter()

    def cancel(self, job: Job, *, interrupt: bool = False) -> None:
        job.cancel()
        loop = self._loop
        if loop is not None and not loop.is_closed():
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(self._cancel_tasks, job)

    def _cancel_tasks(self, job: Job) -> None:
        for task in list(self._tasks.get(job, ())):
            task.cancel()

    def shutdown(self, wait: bool = True, *, cancel_pending: bool = False) -> None:
        with self._lock:
            already = self._closed
            self._closed = True
            loop, thread = self._loop, self._thread
        if already or loop is None:
            return
        if self._external is not None:
            # The caller's loop is the caller's: only the finalizer runs on it.
            if _on(loop):
                self._finalize()
            else:
                with contextlib.suppress(RuntimeError):
                    loop.call_soon_threadsafe(self._finalize)
            return
        if cancel_pending:
            # Chunks not yet taken are dropped as they reach a slot; running
            # coroutines finish (their futures are no longer cancellable).
            self._dropping = True

        async def drain() -> None:
            # Until no coroutine is left running: a job's entry may outlive
            # its last task, and gathering nothing would spin this loop.
            while True:
                pending = [task for tasks in self._tasks.values() for task in tasks
                           if not task.done()]
                if not pending:
                    break
                await asyncio.gather(*pending, return_exceptions=True)
            self._finalize()  # on the loop, once its last coroutine is done

        def stop() -> None:
            asyncio.ensure_future(drain()).add_done_callback(lambda _: loop.stop())

        with contextlib.suppress(RuntimeError):
            loop.call_soon_threadsafe(stop)
        if wait and thread is not None and thread is not threading.current_thread():
            thread.join()

    def _finalize(self) -> None:
        """Run the finalizer on the loop, once, if the initializer ran and succeeded."""
        if self._started:
            self._started = False
            state_context(self._state).run(self._setup.finalize, self._name)


def _on(loop: asyncio.AbstractEventLoop) -> bool:
    """True when called on ``loop``'s own thread while it runs."""
    try:
        return asyncio.get_running_loop() is loop
    except RuntimeError:
        return False
