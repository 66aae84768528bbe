"""Process mode: a pool of worker interpreters, one socket each.

Data flow::

    caller thread(s)                 manager thread                 workers
    ----------------                 --------------                 -------
    submit(job, chunk)
      pickle items ──► pending ──► dispatch to an idle worker ──► socket ──► worker_loop
                       (deque)          │                                       │
    job.deliver ◄── decode result ◄─────┴──── wait(sockets, wake-up pipe) ◄─────┘
                                        │
                    death (EOF), stuck item (timeout) ──► WorkerCrashedError /
                                        TaskTimeoutError for the item, new worker

Workers are never forks of the caller: forking a process that already runs
threads can deadlock on a lock some other thread held at the fork. They are
forks of the fork template (``_template``: single-threaded, started once per
caller; the default on Linux) or fresh interpreters started with
``subprocess`` (``start_method="fresh"``). Neither re-imports the caller's
``__main__`` (functions travel by value with cloudpickle).

Each worker has at most one chunk at a time, so the pool always knows what a
dead worker was running; a shared-memory mark says which item. One manager
thread owns all worker state; it waits on every socket and a wake-up pipe at
once, so a death, a result or a new chunk is noticed immediately.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import mmap
import multiprocessing
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import weakref
from collections import deque
from collections.abc import Iterable
from multiprocessing.connection import wait
from time import perf_counter

from .. import _template
from .._broken import ProcessInitializerError, WorkerCrashedError
from .._errors import ParallaxError, describe_item
from .._host import usable_cpus
from .._keeper import Keeper
from .._logforward import lowest_level, replay
from .._mark import MARK_POSITION, MARK_SIZE, Mark
from .._protocol import (
    ChunkFailed,
    Hello,
    InitFailed,
    JobCache,
    Loaded,
    Log,
    Message,
    Preload,
    Ready,
    Result,
    Retire,
    Stop,
    Task,
    decode,
    encode,
    pickle_function,
    pickle_items,
    unpicklable_items,
)
from .._serialize import dumps, dumps_function, needs_cloudpickle
from .._shm import Pickled, Pieces, Recycler, Segment
from .._timeouts import time_left, timeout_error
from .._units import SOMEWHERE, Chunk, ChunkResult, Job
from .._wire import Channel
from . import Backend, WorkerSetup, failed_chunk, initializer_error

logger = logging.getLogger("parallax")

_pool_ids = itertools.count(1)

#: every pool of this process, for the fork hook below
_every_pool: weakref.WeakSet[ProcessBackend] = weakref.WeakSet()

#: thread pools of numeric libraries, capped in workers so that
#: workers x library threads does not exceed the CPUs
BLAS_THREAD_VARIABLES = (
    "OMP_NUM_THREADS",
    "OPENBLAS_NUM_THREADS",
    "MKL_NUM_THREADS",
    "VECLIB_MAXIMUM_THREADS",
    "NUMEXPR_NUM_THREADS",
    "BLIS_NUM_THREADS",
)

#: a worker that dies this many times in a row before saying "ready" means
#: workers cannot start at all; stop instead of respawning forever
STARTUP_FAILURE_LIMIT = 3

#: recycled shared-memory segments a pool keeps per worker, and in all at most
#: this many bytes (memory the kernel would otherwise allocate again, page
#: by page, for the next chunks' arrays)
RECYCLED_PER_WORKER = 4
RECYCLED_BYTES = 256 * 2**20
#: function payloads (a bound array, a model) a pool keeps in shared memory
#: for a next run over the same objects, and their bytes in all at most
#: (each doubles the memory of its object while both live; docs/large-data.md)
KEPT_PAYLOADS = 4
KEPT_BYTES = 1 << 30
#: segments a worker may hold without reporting them released (its function
#: keeps its arguments): past this many, the oldest are no longer recycled
LENT_LIMIT = 8

#: how often (seconds) the manager looks whether a worker it cannot watch
#: through a process descriptor (no ``os.pidfd_open``) has exited
_LIVENESS_POLL = 0.5

_WORKER_COMMAND = "from parallax._procworker import main; main()"


def signal_description(exitcode: int | None, killed_because: str | None = None) -> str:
    """How a process ended, and the likely reason, in words.

    ``killed_because``: parallax killed it itself, and why; then that is the
    reason given, not a guess (no "out-of-memory killer" for a kill of ours).
    """
    if exitcode is None:
        return "vanished (exit status unknown)"
    if exitcode < 0:
        number = -exitcode
        try:
            name = signal.Signals(number).name
        except ValueError:
            name = f"signal {number}"
        if killed_because is not None:
            return f"was killed by {name}, by parallax: {killed_because}"
        cause = {
            "SIGKILL": "killed from outside, often by the out-of-memory killer",
            "SIGSEGV": "a segmentation fault in native code",
            "SIGBUS": "a bus error in native code",
            "SIGABRT": "an abort, e.g. a failed assertion in native code",
            "SIGTERM": "terminated from outside",
            "SIGFPE": "a floating-point exception in native code",
        }.get(name, "killed by a signal")
        return f"was killed by {name} (likely cause: {cause})"
    if killed_because is not None:  # it exited on its own before the signal came
        return f"exited with code {exitcode} (as parallax was killing it: {killed_because})"
    cause = "os._exit() or a fatal error in the interpreter or native code"
    return f"exited with code {exitcode} (likely cause: {cause})"


class _Queued:
    """A chunk accepted by the pool, until its result is delivered.

    ``claimed``: ``job.claim`` said yes once (a future is running); a chunk
    queued again (its worker retired before taking it) is never claimed twice.

    Its items are pickled when it is submitted (an item that does not pickle
    fails there and then), their large buffers copied into shared memory
    only when it is about to go (:meth:`ProcessBackend._encode`): the pool
    holds segments for the chunks in flight only, and a run's later chunks
    go into the segments its earlier ones freed.
    """

    __slots__ = ("blob", "chunk", "claimed", "job", "pickled", "segment")

    def __init__(self, job: Job, chunk: Chunk, pickled: Pickled) -> None:
        self.job = job
        self.chunk = chunk
        #: the items, pickled, until written (then None)
        self.pickled: Pickled | None = pickled
        #: the frame of the items, once written
        self.blob: bytes | None = None
        #: the items' large buffers, in shared memory; freed with the entry
        self.segment: Segment | None = None
        self.claimed = False


TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Protocol

    class WorkerProcess(Protocol):
        """A worker's process, whoever started it: a ``subprocess.Popen`` (a
        fresh interpreter) or a ``_template.TemplateWorker`` (forked by the
        template, not our child)."""

        @property
        def pid(self) -> int: ...
        @property
        def returncode(self) -> int | None: ...
        def send_signal(self, signum: int, /) -> None: ...
        def poll(self) -> int | None: ...
        def wait(self, timeout: float | None = None) -> int | None: ...


#: how workers start: forked by the template (Linux), or fresh interpreters
START_METHODS = ("template", "fresh")


def default_start_method() -> str:
    """``PARALLAX_START_METHOD`` if set, else the fork template where it
    works (Linux), fresh interpreters elsewhere (``_template.DEFAULT_START_METHOD``,
    which the template's early start reads too).

    The template is the default: measured, a first cold pool is no slower
    (it boots while the process backend is imported), later pools and
    replaced workers start several times faster, and two workers with the
    template take less memory than two fresh ones (docs/backends/process.md).
    """
    chosen = os.environ.get("PARALLAX_START_METHOD")
    if chosen:
        return _checked_start_method(chosen, "PARALLAX_START_METHOD")
    return _template.DEFAULT_START_METHOD


def _checked_preload(preload: object) -> tuple[str, ...]:
    """``preload=`` as a tuple of module names; raises before any work starts
    for a value that is not one, or for a module that is nowhere to import."""
    if preload is None:
        return ()
    names = (preload,) if isinstance(preload, str) else preload
    modules = tuple(names) if isinstance(names, Iterable) else None
    if modules is None or not all(
        isinstance(name, str) and name and all(part.isidentifier() for part in name.split("."))
        for name in modules
    ):
        raise TypeError(
            "preload must be a module name or names to import in every worker, "
            f"such as preload=('numpy', 'mypackage.model'), not {preload!r}"
        )
    from importlib.util import find_spec

    checked = tuple(dict.fromkeys(str(name) for name in modules))
    for name in checked:
        top = name.partition(".")[0]  # (a submodule's spec would import its package here)
        if find_spec(top) is None:
            raise ValueError(f"preload={checked!r}: there is no module named {top!r} "
                             "on this interpreter's sys.path")
    return checked


def _checked_start_method(method: object, what: str = "start_method") -> str:
    if method not in START_METHODS:
        raise ValueError(f"{what} must be 'template' or 'fresh', not {method!r}")
    assert isinstance(method, str)
    if method == "template" and not _template.SUPPORTED:
        raise ValueError(
            f"{what}='template' needs Linux (os.fork with pidfd_open); "
            "use start_method='fresh' here"
        )
    return method


class _Worker:
    __slots__ = (
        "buried",
        "busy",
        "conn",
        "jobs",
        "kill_reason",
        "killed_because",
        "lent",
        "mark",
        "name",
        "pidfd",
        "popen",
        "ready",
        "retiring",
        "slot",
    )

    def __init__(self, name: str, slot: int, popen: WorkerProcess, conn: Channel,
                 mark: Mark) -> None:
        self.name = name
        self.slot = slot
        self.popen = popen
        self.conn = conn
        self.mark = mark
        self.busy: _Queued | None = None
        #: mirrors the worker's cache: which jobs' functions it holds
        self.jobs = JobCache()
        self.ready = False
        self.retiring = False
        #: what the item it runs fails with when parallax kills it (a timeout,
        #: Ctrl-C, terminate_workers), and why parallax killed it at all
        self.kill_reason: BaseException | None = None
        self.killed_because: str | None = None
        #: readable once the process exits, even while something else (a
        #: process it forked) keeps its socket open; None where unsupported
        self.pidfd = (popen.open_pidfd() if isinstance(popen, _template.TemplateWorker)
                      else _open_pidfd(popen.pid))
        self.buried = False
        #: the recyclable segments of chunks it ran, by key, until it reports
        #: them released (oldest first)
        self.lent: dict[int, Segment] = {}

    def forget_lent(self) -> None:
        """Close what it was lent: a dead worker reports nothing any more (and
        a process it forked may still map them)."""
        lent, self.lent = self.lent, {}
        for segment in lent.values():
            segment.close()

    def kill(self, reason: BaseException | None, because: str,
             how: signal.Signals = signal.SIGKILL) -> None:
        """Stop the process; ``because`` says why in its crash report, ``reason``
        (if any) is what its item fails with."""
        if self.killed_because is None:
            self.kill_reason = reason
            self.killed_because = because
        with contextlib.suppress(OSError):
            self.popen.send_signal(how)


class ProcessBackend(Backend):
    name = "process"
    chunk_overhead = 3e-4
    prefetch = 1

    def __init__(
        self,
        workers: int | None = None,
        setup: WorkerSetup | None = None,
        *,
        max_worker_memory: int | None = None,
        forward_logs: bool = True,
        start_method: str | None = None,
        preload: str | Iterable[str] | None = None,
    ) -> None:
        #: "template" (forked by the fork template) or "fresh" (interpreters)
        self._start_method = (default_start_method() if start_method is None
                              else _checked_start_method(start_method))
        #: modules every worker imports first: once, in a template of their own,
        #: with the template (its workers share them); in each worker, without
        self._preload_modules = _checked_preload(preload)
        if not isinstance(forward_logs, bool):
            raise TypeError(f"forward_logs must be True or False, not {forward_logs!r}")
        if max_worker_memory is not None and (
            isinstance(max_worker_memory, bool)
            or not isinstance(max_worker_memory, int)
            or max_worker_memory <= 0
        ):
            raise ValueError(
                f"max_worker_memory must be a positive number of bytes, not {max_worker_memory!r}"
            )
        self.workers = workers or self.default_workers()
        #: up to the usable CPUs, every worker boots at once (a measured
        #: start-up win: boots overlap with the caller's first work); a larger
        #: pool starts a worker per chunk waiting for one, never more
        self._eager = self.workers <= usable_cpus()
        #: the process this pool belongs to; in a forked child it is not its own
        self._owner = os.getpid()
        self._setup = setup or WorkerSetup()
        self._max_memory = max_worker_memory
        #: log records of the workers reach the caller's handlers (_logforward)
        self._forward_logs = forward_logs
        self._prefix = f"parallax-process-{next(_pool_ids)}"
        self._names = itertools.count(1)
        self._lock = threading.Lock()
        self._pending: deque[_Queued] = deque()
        #: every accepted chunk not yet delivered, queued or on a worker: what
        #: fails should the pool break
        self._outstanding: set[_Queued] = set()
        self._workers: dict[Channel, _Worker] = {}
        self._free_slots = list(range(self.workers))
        self._closed = False
        self._broken: BaseException | None = None
        self._startup_failures = 0
        self._first_ready = threading.Event()
        self._first_loaded = threading.Event()
        #: jobs whose function goes to every idle worker before any chunk
        self._preloads: list[Job] = []
        #: the shared-memory segment of a job's function (a bound array, say):
        #: written once per job, every worker maps it; freed with the job
        self._segments: weakref.WeakKeyDictionary[Job, Segment | Pieces] = (
            weakref.WeakKeyDictionary())
        #: the items' segments that workers let go of, written again
        self._recycler = Recycler(RECYCLED_PER_WORKER * self.workers, RECYCLED_BYTES)
        #: the functions' segments, kept for a next run over the same objects
        self._keeper = Keeper(KEPT_PAYLOADS, KEPT_BYTES)
        self._preloading = False
        # First, before anything is held: it fails for an initializer that
        # cannot be pickled.
        self._initializer = self._encode_initializer()
        self._finalizer = self._encode_finalizer()
        #: something this pool's workers load went by value: their template
        #: imports cloudpickle before forking them (set again by ``prepare``)
        self._by_value = any(blob is not None and needs_cloudpickle(blob)
                             for blob in (*self._initializer, *self._finalizer))
        #: the template's first forks wait for the pool's first function,
        #: which says whether they need cloudpickle (manager thread's)
        self._deferred = False
        #: ``prepare`` has seen a function (set in the caller's threads)
        self._function_seen = False
        size = 8 * MARK_SIZE * self.workers
        with contextlib.ExitStack() as undo:  # should a step fail, close what is open
            self._wake_r, self._wake_w = os.pipe()
            undo.callback(os.close, self._wake_r)
            undo.callback(os.close, self._wake_w)
            os.set_blocking(self._wake_w, False)
            # Closed in _release_resources when the pool ends, not in a with block.
            self._marks_file = tempfile.TemporaryFile()  # noqa: SIM115
            undo.callback(self._marks_file.close)
            os.ftruncate(self._marks_file.fileno(), size)
            self._marks_map = mmap.mmap(self._marks_file.fileno(), size)
            undo.callback(self._marks_map.close)
            self._marks: Mark = memoryview(self._marks_map).cast("d")
            undo.callback(self._marks.release)
            if self._start_method == "template":
                # Here, in the caller's thread, not in the manager's: at
                # interpreter exit (work still queued) the manager may spawn
                # when no thread can start any more, and the template's
                # reader is one.
                warm = _template.start(self._child_environment(), self._preload_modules)
                # Forked before it is known, a worker of a function sent by
                # value imports its own cloudpickle (8 ms, 3.7 MB each); a
                # template told first shares one. The template's boot is the
                # longer wait of a first pool anyway.
                self._deferred = self._eager and not (warm or self._by_value)
            # Workers start now, not at the first chunk: a fresh interpreter
            # takes tens of milliseconds to boot, which overlaps with the
            # caller pickling the function and cutting the first chunks (a
            # deferred template's forks: at the first function, see above).
            self._manager = threading.Thread(
                target=self._manage, name=f"{self._prefix}-manager", daemon=True
            )
            self._manager.start()
            undo.pop_all()  # the pool holds them now (_release_resources)
        _every_pool.add(self)

    # -- public --------------------------------------------------------------

    @property
    def broken(self) -> BaseException | None:
        return self._broken

    @property
    def starting(self) -> bool:
        if self._broken is not None or self._closed or not self._eager:
            return False
        warm = self._first_loaded if self._preloading else self._first_ready
        return not warm.is_set()

    def preload(self, job: Job) -> None:
        self.prepare(job)
        with self._lock:
            if self._closed:
                return
            self._preloading = True
            self._preloads.append(job)
        self._wake()

    def prepare(self, job: Job) -> None:
        if job.payload is None:
            pickled = pickle_function(job.fn)
            if pickled.needs_cloudpickle:
                # Read by _spawn: set before _function_seen wakes deferred workers
                self._by_value = True
            # The keeper may send a segment kept from an earlier run instead
            # of writing a new one.
            payload, segment = self._keeper.write(pickled)
            if segment is not None:
                with self._lock:
                    self._segments[job] = segment
            job.payload = payload
        if not self._function_seen:
            self._function_seen = True
            self._wake()  # deferred workers start now

    def _send_function(self, worker: _Worker, frame: bytes, job: Job | None) -> None:
        """Send ``frame`` to ``worker``, with the descriptor of ``job``'s function
        segment if it has one (``job`` None: the frame carries no function).

        Raises:
            OSError: sending failed.
        """
        with self._lock:
            shared = None if job is None else self._segments.get(job)
        if shared is None:
            worker.conn.send_bytes(frame)
        elif isinstance(shared, Pieces):
            bundle = shared.bundle()  # (one per send: the worker takes the pieces out)
            try:
                worker.conn.send_bytes(frame, (bundle,))
            finally:
                os.close(bundle)
        else:
            worker.conn.send_bytes(frame, (shared.fd,))

    def submit(self, job: Job, chunk: Chunk) -> None:
        if self._owner != os.getpid():
            raise self._inherited()
        if self._closed:
            raise RuntimeError("cannot submit to a process backend after shutdown")
        try:
            pickled = pickle_items(chunk.items)  # written when about to go: see _Queued
        except Exception as exc:
            job.deliver(unpicklable_items(chunk, exc))
            return
        entry = _Queued(job, chunk, pickled)
        with self._lock:
            # Under the lock the pool breaks under: a chunk is either failed
            # by _fail_outstanding or failed here, never neither.
            broken = self._broken
            if broken is None:
                self._pending.append(entry)
                self._outstanding.add(entry)
        if broken is not None:
            job.deliver(failed_chunk(chunk, broken))
            return
        self._wake()

    def cancel(self, job: Job, *, interrupt: bool = False) -> None:
        job.cancel()
        if interrupt:
            with self._lock:
                for worker in self._workers.values():
                    if worker.busy is not None and worker.busy.job is job:
                        worker.kill(KeyboardInterrupt(), "its run was interrupted (Ctrl-C)")
        self._wake()

    def shutdown(self, wait: bool = True, *, cancel_pending: bool = False) -> None:
        if self._owner != os.getpid():
            return  # inherited across a fork: the parent's, nothing of it runs here
        with self._lock:
            self._closed = True
            if cancel_pending:
                # Only what no worker has taken: a chunk queued again after
                # its worker retired is claimed (its future runs) and finishes.
                kept = deque(entry for entry in self._pending if entry.claimed)
                self._outstanding.difference_update(
                    entry for entry in self._pending if not entry.claimed
                )
                self._pending = kept
        self._wake()
        if wait and self._manager is not threading.current_thread():
            self._manager.join()

    # -- fork -------------------------------------------------------------------

    def _inherited(self) -> ParallaxError:
        return ParallaxError(
            f"this process pool belongs to process {self._owner}; process {os.getpid()} "
            "inherited it through a fork, and neither its manager thread nor its workers "
            "exist here (a parallax call in the child starts a pool of its own)"
        )

    def _disown(self) -> None:
        """In a forked child: forget the parent's pool without touching it.

        The child must neither signal the parent's workers nor write to their
        sockets; closing its own copies of the descriptors leaves the parent's
        open. The pool is then broken and closed here, so nothing waits on it.
        """
        self._lock = threading.Lock()  # another thread may have held it at the fork
        self._broken = self._inherited()
        self._closed = True
        self._pending = deque()
        self._outstanding = set()
        self._preloads = []
        workers, self._workers = list(self._workers.values()), {}
        for worker in workers:
            with contextlib.suppress(OSError):
                worker.conn.close()
            if worker.pidfd is not None:
                with contextlib.suppress(OSError):
                    os.close(worker.pidfd)
            with contextlib.suppress(BufferError, ValueError):
                worker.mark.release()
            worker.forget_lent()
        self._release_resources()

    def terminate(self, kill: bool = False) -> None:
        how = signal.SIGKILL if kill else signal.SIGTERM
        caller = f"Executor.{'kill' if kill else 'terminate'}_workers()"
        error = WorkerCrashedError(
            f"the pool's workers were stopped by {caller} ({how.name}); this call did not finish",
            exitcode=-how,
        )
        with self._lock:
            self._closed = True
            self._broken = self._broken or error
            workers = list(self._workers.values())
        for worker in workers:
            worker.kill(
                WorkerCrashedError(f"worker {worker.name} (pid {worker.popen.pid}) was stopped "
                                   f"by {caller} ({how.name})", exitcode=-how,
                                   worker=worker.name),
                f"stopped by {caller}",
                how,
            )
        self._fail_outstanding(error)
        self._wake()

    # -- manager thread -------------------------------------------------------

    def _wake(self) -> None:
        if self._wake_w >= 0:
            with contextlib.suppress(BlockingIOError, OSError):
                os.write(self._wake_w, b"\0")

    def _encode_initializer(self) -> tuple[bytes | None, bytes | None]:
        """The pickled initializer and its arguments (None, None without one)."""
        setup = self._setup
        if not setup.initializer:
            return None, None
        return dumps_function(setup.initializer), dumps(setup.initargs)

    def _encode_finalizer(self) -> tuple[bytes | None, bytes | None]:
        """The pickled finalizer and its arguments (None, None without one)."""
        setup = self._setup
        if not setup.finalizer:
            return None, None
        return dumps_function(setup.finalizer), dumps(setup.finalargs)

    def _child_environment(self) -> dict[str, str]:
        env = _template.interpreter_environment()
        per_worker = str(max(1, usable_cpus() // self.workers))
        for variable in BLAS_THREAD_VARIABLES:
            env.setdefault(variable, per_worker)
        return env

    def _spawn(self) -> None:
        """Start one worker (manager thread only: Linux ties the worker's life to it)."""
        slot = self._free_slots.pop()
        parent_end, child_end = _socket_pair()
        name = f"{self._prefix}-{next(self._names)}"
        mark = self._marks[slot * MARK_SIZE : (slot + 1) * MARK_SIZE]
        mark[MARK_POSITION] = -1.0
        try:
            popen: WorkerProcess
            if self._start_method == "template":
                popen = _template.spawn_worker(child_end, self._marks_file.fileno(), slot,
                                               self._child_environment(),
                                               self._preload_modules, warm=self._by_value)
            else:
                popen = subprocess.Popen(
                    [
                        sys.executable,
                        "-c",
                        _WORKER_COMMAND,
                        str(child_end),
                        str(self._marks_file.fileno()),
                        str(slot),
                    ],
                    pass_fds=(child_end, self._marks_file.fileno()),
                    stdin=subprocess.DEVNULL,
                    env=self._child_environment(),
                )
        except BaseException as exc:
            os.close(child_end)
            parent_end.close()
            mark.release()
            self._free_slots.append(slot)
            if isinstance(exc, _template.TemplateRefused):
                # No worker can start from it: like an initializer that raises.
                self._break(ProcessInitializerError(f"no worker can start in this pool: {exc}"))
                return
            if isinstance(exc, _template.TemplateGone) and self._preload_modules:
                # (replaced once already, and that one went too)
                self._break(ProcessInitializerError(
                    f"no worker can start in this pool: {exc}, twice; it imports "
                    f"preload={self._preload_modules!r} before its first fork (with "
                    "start_method='fresh' each worker imports them and reports how it ends)"))
                return
            raise
        os.close(child_end)
        worker = _Worker(name, slot, popen, parent_end, mark)
        hello = Hello(list(sys.path), name, *self._initializer,
                      self._setup.max_tasks_per_worker, self._max_memory,
                      bytes(multiprocessing.current_process().authkey), *self._finalizer,
                      lowest_level() if self._forward_logs else None, self._preload_modules)
        with self._lock:
            self._workers[parent_end] = worker
        with contextlib.suppress(OSError):  # if it died already, the EOF says so next
            parent_end.send_bytes(encode(hello))

    def _manage(self) -> None:
        try:
            for _ in range(self.workers if self._eager and not self._deferred else 0):
                self._spawn()
            while self._step():
                pass
        except BaseException as exc:  # a bug here must not leave callers waiting
            logger.exception("parallax: process pool manager failed")
            error = ParallaxError(f"the process pool failed: {type(exc).__name__}: {exc}")
            error.__cause__ = exc
            self._break(error)
        finally:
            try:
                self._stop_workers()
            finally:
                self._release_resources()

    def _break(self, error: BaseException) -> None:
        """The pool can run nothing more: say why, fail every chunk it holds."""
        with self._lock:
            self._broken = self._broken or error
        self._fail_outstanding(self._broken or error)

    def _step(self) -> bool:
        """One turn of the manager loop; False when the pool is done."""
        if self._deferred and (self._function_seen or self._pending) and self._broken is None:
            self._deferred = False
            for _ in range(self.workers - len(self._workers)):
                self._spawn()
        # Dispatch first: it also drops cancelled chunks, which may leave
        # nothing pending, and the pool must then notice it is done rather
        # than wait for a wake-up that will never come.
        self._dispatch()
        self._encode_ahead()
        with self._lock:
            workers = list(self._workers.values())
            closing = self._closed
            idle_pending = not self._wanted_pending()
        if closing and idle_pending and all(worker.busy is None for worker in workers):
            return False
        by_fd = {worker.conn.fileno(): worker for worker in workers}
        exits = {worker.pidfd: worker for worker in workers if worker.pidfd is not None}
        timeout = self._next_deadline()
        unwatched = len(exits) < len(workers)
        if unwatched:
            timeout = _LIVENESS_POLL if timeout is None else min(timeout, _LIVENESS_POLL)
        ready = wait([*by_fd, *exits, self._wake_r], timeout)
        for source in ready:
            if source == self._wake_r:
                with contextlib.suppress(BlockingIOError):
                    os.read(self._wake_r, 4096)
                continue
            assert isinstance(source, int)
            # (a descriptor closed this turn may already be reused: the
            # worker looked up is then buried, and skipped)
            exited = exits.get(source)
            if exited is not None:
                if not exited.buried:
                    self._bury(exited)  # gone, whatever holds its socket open
                continue
            worker = by_fd[source]
            if worker.buried:
                continue
            try:
                message, fds = worker.conn.recv_frame()
            except (EOFError, OSError):
                self._bury(worker)
                continue
            self._handle(worker, message, fds)
        if unwatched:
            for worker in workers:
                if worker.pidfd is None and not worker.buried and worker.popen.poll() is not None:
                    self._bury(worker)
        self._enforce_timeouts()
        return True

    def _dispatch(self) -> None:
        if self._preloads:
            self._send_preloads()
        while True:
            assignments = []
            with self._lock:
                for worker in self._workers.values():
                    if worker.busy is not None or worker.retiring or worker.killed_because:
                        continue
                    task = self._next_pending()
                    if task is None:
                        break
                    worker.busy = task
                    assignments.append((worker, task))
                # Chunks no worker could take: a worker each, up to the pool's size.
                missing = 0
                if self._broken is None and self._wanted_pending():
                    missing = min(len(self._pending), self.workers - len(self._workers))
            # Sent outside the lock: a large chunk takes a while to write, and
            # callers submitting meanwhile must not wait for it.
            for worker, task in assignments:
                self._send(worker, task)
            if missing <= 0:
                return
            for _ in range(missing):
                self._spawn()

    def _send_preloads(self) -> None:
        """Hand preloaded functions to the workers (a respawned one too) until
        one of them reports it loaded; then chunks carry functions as usual."""
        with self._lock:
            if self._first_loaded.is_set():
                self._preloads.clear()
                return
            jobs = self._preloads = [job for job in self._preloads if not job.cancelled]
            workers = list(self._workers.values())
        if not jobs or any(worker.busy is not None for worker in workers):
            # Nothing left to preload, or a worker computes already: warm.
            self._first_loaded.set()
            return
        for job in jobs:
            for worker in workers:
                wanted = worker.killed_because is None and not worker.retiring
                if wanted and job.id not in worker.jobs:
                    assert job.payload is not None  # preload() prepared it
                    worker.jobs.put(job.id, True)
                    try:
                        self._send_function(worker, encode(Preload(job.id, job.payload)), job)
                    except OSError as exc:  # dead, or not reading: the EOF path replaces it
                        worker.kill(None, f"sending it a function failed ({exc!r})")

    def _next_pending(self) -> _Queued | None:
        """The next chunk its run still wants, claimed (the caller holds the lock)."""
        while self._pending:
            entry = self._pending.popleft()
            if entry.claimed or entry.job.claim(entry.chunk):
                entry.claimed = True
                return entry
            self._outstanding.discard(entry)  # dropped: its run does not want it
        return None

    def _wanted_pending(self) -> bool:
        """Drop the queued chunks no run wants any more (without claiming them);
        is anything left? The caller holds the lock.

        Queued chunks are otherwise dropped only as workers take them: a
        closing pool with no worker left must not wait for them.
        """
        if any(not entry.claimed and not entry.job.wants(entry.chunk)
               for entry in self._pending):
            kept = deque[_Queued]()
            for entry in self._pending:
                if entry.claimed or entry.job.wants(entry.chunk):
                    kept.append(entry)
                else:
                    self._outstanding.discard(entry)
            self._pending = kept
        return bool(self._pending)

    def _deliver(self, entry: _Queued, result: ChunkResult) -> None:
        """Hand a chunk's result to its run, once: a chunk failed meanwhile
        (the pool broke) is not delivered again."""
        with self._lock:
            if entry not in self._outstanding:
                return
            self._outstanding.discard(entry)
        entry.job.deliver(result)

    def _encode(self, entry: _Queued) -> bool:
        """Write ``entry``'s items into shared memory, if not done yet (manager
        thread only); False if they could not be (the chunk is failed then).
        """
        pickled = entry.pickled
        if pickled is None:
            return True
        entry.pickled = None
        try:
            entry.blob, entry.segment = pickled.write(self._recycler)
        except Exception as exc:  # no segment, and the in-band pickle refused
            with self._lock, contextlib.suppress(ValueError):  # (written ahead: queued)
                self._pending.remove(entry)
            self._deliver(entry, unpicklable_items(entry.chunk, exc))
            return False
        return True

    def _encode_ahead(self) -> None:
        """Write the next queued chunks' items into shared memory, one per
        worker at most: a worker that reports a result gets its next chunk
        at once, not after a copy, while the pool holds segments for a
        bounded window of chunks (its workers' and these)."""
        with self._lock:
            ahead = [entry for entry in itertools.islice(self._pending, self.workers)
                     if entry.pickled is not None and (entry.claimed
                                                       or entry.job.wants(entry.chunk))]
        for entry in ahead:
            self._encode(entry)  # (one that fails is delivered: dispatch drops it)

    def _send(self, worker: _Worker, entry: _Queued) -> None:
        # (the entry, not worker.busy: terminate() may clear that meanwhile)
        if not self._encode(entry):
            with self._lock:
                if worker.busy is entry:
                    worker.busy = None
            self._wake()  # the worker is idle again: another turn hands it a chunk
            return
        job, blob, segment = entry.job, entry.blob, entry.segment
        assert blob is not None  # written by _encode
        function = None
        if worker.jobs.get(job.id) is None:  # (a hit makes it the newest, as in the worker)
            function = job.payload
            worker.jobs.put(job.id, True)
        try:
            self._send_function(
                worker,
                encode(Task(job.id, function, job.timeout is not None, job.stop_at_failure)),
                None if function is None else job,
            )
            worker.conn.send_bytes(blob, () if segment is None else (segment.fd,))
        except OSError as exc:  # dead, or not reading: the EOF path reports the chunk
            worker.kill(None, f"sending it a chunk failed ({exc!r})")

    def _handle(self, worker: _Worker, frame: bytes | bytearray, fds: list[int]) -> None:
        """Act on a worker's message; ``fds`` came with it (a result's shared
        memory) and are closed here, whatever happens."""
        fd = fds.pop() if fds else -1
        try:
            for extra in fds:
                os.close(extra)
            message = decode(frame, Message)
            if isinstance(message, Result):
                busy = worker.busy
                worker.busy = None
                if busy is not None and busy.segment is not None:
                    self._lend(worker, busy.segment)
                    busy.segment = None
                for key in message.released or ():
                    released = worker.lent.pop(key, None)
                    if released is not None:
                        self._recycler.give(released)
                if busy is None:
                    return
                # Hand the worker its next chunk before decoding this one, so it
                # computes while the caller's side unpickles.
                self._dispatch()
                handed, fd = fd, -1  # to_chunk_result closes it
                self._deliver(busy, message.to_chunk_result(busy.chunk, worker.name, fd=handed))
                return
            self._handle_signal(worker, message)
        finally:
            if fd >= 0:
                os.close(fd)

    def _lend(self, worker: _Worker, segment: Segment) -> None:
        """``worker`` ran a chunk whose items were in ``segment``: it may still
        map it, until it says otherwise (or dies)."""
        if not segment.key:
            segment.close()
            return
        worker.lent[segment.key] = segment
        while len(worker.lent) > LENT_LIMIT:  # its function keeps its arguments
            oldest = next(iter(worker.lent))
            worker.lent.pop(oldest).close()  # the kernel frees it once unmapped

    def _handle_signal(self, worker: _Worker, message: Message) -> None:
        if isinstance(message, Log):
            try:
                replay(message.fields)
            except Exception:  # a handler of the caller's failed: not the pool's
                logger.exception("parallax: a log record of %s could not be handled",
                                 worker.name)
        elif isinstance(message, Ready):
            worker.ready = True
            self._first_ready.set()
        elif isinstance(message, Loaded):
            self._first_loaded.set()
            self._startup_failures = 0
        elif isinstance(message, ChunkFailed):
            busy = worker.busy
            worker.busy = None
            if busy is not None:
                reason = message.failure.to_failure().exception
                self._deliver(busy, failed_chunk(busy.chunk, reason))
        elif isinstance(message, InitFailed):
            failure = message.failure.to_failure()
            failure.to_exception(None, None, worker.name)
            self._broken = self._broken or initializer_error(
                failure.exception, ProcessInitializerError,
                f"import of preload={self._preload_modules!r}" if message.stage == "preload"
                else "initializer")
        elif isinstance(message, Retire):
            worker.retiring = True
        else:
            raise TypeError(f"a process pool cannot take a {type(message).__name__}")

    def _bury(self, worker: _Worker) -> None:
        """A worker's socket closed or its process exited: collect it, report
        its chunk, replace it.

        A worker that can no longer deliver is buried whatever holds its
        socket: a process it forked may keep the socket open long after the
        worker died, and nothing may wait on that (shutdown would never end).
        """
        worker.buried = True
        with self._lock:
            del self._workers[worker.conn]
        position = int(worker.mark[MARK_POSITION])  # read before the view goes
        worker.mark.release()
        self._free_slots.append(worker.slot)  # (handling what it sent may start a worker)
        self._drain(worker)
        try:
            exitcode: int | None = worker.popen.wait(timeout=5)
        except subprocess.TimeoutExpired:
            worker.kill(None, "it closed its connection but did not exit")
            exitcode = worker.popen.wait()
        worker.conn.close()
        worker.forget_lent()
        if worker.pidfd is not None:
            os.close(worker.pidfd)
            worker.pidfd = None
        if not worker.ready and not worker.retiring and self._broken is None:
            self._startup_failures += 1
            if self._startup_failures >= STARTUP_FAILURE_LIMIT:
                self._broken = ParallaxError(
                    f"worker processes keep dying before they start: the last one "
                    f"{signal_description(exitcode)}; see its output above"
                )
        entry, worker.busy = worker.busy, None
        if entry is not None:
            job, chunk = entry.job, entry.chunk
            if self._broken is not None:
                self._deliver(entry, failed_chunk(chunk, self._broken))
            elif worker.retiring:
                # It had been handed a chunk before its "retire" arrived:
                # nothing ran, so the chunk goes to another worker (claimed
                # already: a future is running, it must not be claimed again).
                with self._lock:
                    self._pending.appendleft(entry)
            elif job.cancelled:
                with self._lock:
                    self._outstanding.discard(entry)
            else:
                started = position != -1
                if position != SOMEWHERE:
                    position = max(0, position)  # died before its first item: blame it
                self._deliver(
                    entry,
                    ChunkResult(
                        chunk,
                        [],
                        worker=worker.name,
                        interruption=self._death_error(worker, chunk, position, exitcode,
                                                       started),
                        interrupted_at=position,
                    )
                )
        elif not worker.retiring and worker.killed_because is None and self._broken is None:
            logger.warning(
                "parallax: idle worker %s %s", worker.name, signal_description(exitcode)
            )
        if self._broken is not None:
            self._break(self._broken)
            return
        if self._eager and not self._closed and len(self._workers) < self.workers:
            self._spawn()  # (otherwise workers start as chunks wait for one)

    def _drain(self, worker: _Worker) -> None:
        """Handle the whole messages a gone worker sent before it went (a result,
        then "retire", say), without waiting for more."""
        with contextlib.suppress(OSError):
            os.set_blocking(worker.conn.fileno(), False)
        while True:
            try:
                frame, fds = worker.conn.recv_frame()
            except (EOFError, OSError):  # (BlockingIOError: nothing more, or half a frame)
                return
            self._handle(worker, frame, fds)

    def _death_error(
        self, worker: _Worker, chunk: Chunk, position: int, exitcode: int | None,
        started: bool = True,
    ) -> BaseException:
        if worker.kill_reason is not None:
            return worker.kill_reason
        ended = signal_description(exitcode, worker.killed_because)
        if position == SOMEWHERE:
            return WorkerCrashedError(
                f"worker {worker.name} (pid {worker.popen.pid}) {ended} "
                "while running a chunk of fast items; they run again one by one",
                exitcode=exitcode,
                worker=worker.name,
            )
        index = chunk.index_of(position)
        when = "while running" if started else "before it started"
        return WorkerCrashedError(
            f"worker {worker.name} (pid {worker.popen.pid}) {ended} "
            f"{when} item {index} ({describe_item(chunk.items[position])}); "
            "the worker was replaced and the other items carry on",
            exitcode=exitcode,
            worker=worker.name,
        )

    def _next_deadline(self) -> float | None:
        soonest: float | None = None
        now = perf_counter()
        for worker in list(self._workers.values()):
            if worker.busy is None or worker.busy.job.timeout is None:
                continue
            position, left = time_left(worker.mark, worker.busy.job.timeout, now)
            # about to start its first item: look again soon
            left = 0.01 if position < 0 else max(0.001, left)
            soonest = left if soonest is None else min(soonest, left)
        return soonest

    def _enforce_timeouts(self) -> None:
        now = perf_counter()
        for worker in list(self._workers.values()):
            busy = worker.busy
            if busy is None or busy.job.timeout is None or worker.killed_because is not None:
                continue
            timeout = busy.job.timeout
            position, left = time_left(worker.mark, timeout, now)
            if left >= 0:
                continue
            worker.kill(
                timeout_error(
                    busy.chunk, position, timeout, f"; worker {worker.name} was killed and replaced"
                ),
                f"item {busy.chunk.index_of(position)} ran past the {timeout:g} s timeout",
            )

    def _fail_outstanding(self, error: BaseException) -> None:
        """Fail every chunk the pool holds, queued or on a worker, with ``error``.

        Each delivery on its own: a run whose delivery raises must not keep
        the others waiting.
        """
        with self._lock:
            outstanding = list(self._outstanding)
            self._outstanding.clear()
            self._pending.clear()
            for worker in self._workers.values():
                worker.busy = None
        for entry in outstanding:
            try:
                if entry.claimed or entry.job.claim(entry.chunk):
                    entry.job.deliver(failed_chunk(entry.chunk, error))
            except BaseException:
                logger.exception("parallax: could not fail a chunk of a broken process pool")

    def _stop_workers(self) -> None:
        """One poison pill per live worker, then reap them; kill stragglers."""
        with self._lock:
            workers = list(self._workers.values())
            self._workers.clear()
        for worker in workers:
            with contextlib.suppress(OSError):
                worker.conn.send_bytes(encode(Stop()))
        for worker in workers:
            try:
                worker.popen.wait(timeout=10)
            except subprocess.TimeoutExpired:
                worker.kill(None, "it did not stop within 10 s of the pool's shutdown")
                worker.popen.wait()
            # What it sent after the pill (its finalizer's log records): whole
            # frames only now that it is gone, so nothing is read half.
            self._drain(worker)
            worker.conn.close()
            worker.forget_lent()
            worker.mark.release()
            if worker.pidfd is not None:
                os.close(worker.pidfd)
                worker.pidfd = None

    def _release_resources(self) -> None:
        """Close what the pool holds, each on its own: one close that fails (a
        view of the marks still held somewhere) must not leave the rest open."""
        with contextlib.suppress(BufferError):
            self._marks.release()
        with contextlib.suppress(BufferError):
            self._marks_map.close()  # else the map goes with its last view
        self._marks_file.close()
        self._recycler.close()
        self._keeper.close()
        fds = (self._wake_r, self._wake_w)
        self._wake_r = self._wake_w = -1
        for fd in fds:
            if fd >= 0:
                with contextlib.suppress(OSError):
                    os.close(fd)


def _disown_inherited_pools() -> None:
    for pool in list(_every_pool):
        if pool._owner != os.getpid():
            with contextlib.suppress(Exception):  # nothing may fail a fork
                pool._disown()


os.register_at_fork(after_in_child=_disown_inherited_pools)


def _open_pidfd(pid: int) -> int | None:
    """A descriptor that turns readable when process ``pid`` exits, or None
    (not Linux, an old kernel, or a sandbox that forbids it)."""
    pidfd_open = getattr(os, "pidfd_open", None)
    if pidfd_open is None:
        return None
    try:
        fd: int = pidfd_open(pid)
    except OSError:
        return None
    return fd


def _socket_pair() -> tuple[Channel, int]:
    """A connected pair: our end as a Channel, the child's as a raw fd."""
    ours, theirs = socket.socketpair()
    return Channel(ours.detach()), theirs.detach()
