"""Dask mode: chunks run as tasks on a ``distributed`` cluster.

For work that outgrows one machine: the same ``parallax.map`` runs on Dask's
scheduler and workers instead of anything home-made. Backend options:
``address="tcp://host:8786"`` connects to a running scheduler (the client is
closed at shutdown), ``client=`` uses an existing ``distributed.Client`` (left
open); with neither, a ``LocalCluster`` of worker processes sized to the
machine is started on first use and closed at shutdown.

Data flow::

    caller thread(s)                         Dask                        workers
    ----------------                         ----                        -------
    prepare(job): pickle fn; big? ── scatter the bytes to every worker ──► kept there
    submit(job, chunk): pickle items
      client.submit(run_on_worker, token, fn, items) ─► scheduler ─► run_on_worker:
                                                                  unpickle (fn once per
                                                                  worker), run_chunk (the
                                                                  loop every mode runs),
                                                                  values pickled to a blob
    job.deliver ◄── decode ◄── collector thread: as_completed, then one
                                gather(errors="skip") per batch of finished tasks
                                  │
           KilledWorker ──────────┴──► many items: interrupted SOMEWHERE (the run
                                       re-runs each item alone); one item: run once
                                       more alone, then WorkerCrashedError

* One chunk is one Dask task. The scheduler costs about a millisecond per
  task, so auto chunking makes chunks of ~0.1 s. The task's code lives in
  ``_dask_task`` (what a worker imports); this module is the caller's side.
* parallax pickles the function and each chunk's items itself (cloudpickle,
  as in process mode) and Dask carries the bytes; the task unpickles them on
  the worker. Left to Dask, an argument that does not unpickle on a worker
  (its module is not installed there, the commonest mistake on a real
  cluster) breaks the worker's connection to the scheduler and stalls every
  task of the cluster; here it fails the chunk with ``SerializationError``.
  A function that pickles to :data:`SCATTER_THRESHOLD` bytes or more (a
  closure over a large array, say) is scattered to every worker once per run
  and unpickled once per worker; Dask forgets scattered data when every
  worker holding it has died, so it is then sent again (up to
  :data:`_RESHIPS` times a run). Results come back as one pickled blob per
  chunk, made on the worker, so a result that cannot be pickled fails only
  its item with ``SerializationError`` (left to Dask, it breaks the worker's
  connection and gets the worker restarted).
* A worker that dies is Dask's to recover: the scheduler runs its tasks
  again elsewhere, and only after ``distributed.scheduler.allowed-failures``
  (3) deaths gives up on a task with ``KilledWorker``. The position the
  worker was at died with it, so parallax reports a chunk of several items
  as interrupted somewhere and the run re-runs each item alone. Dask counts
  a death against every task queued on the dying worker, not only the one
  running, so a one-item chunk given up on is run once more alone (one such
  task at a time) before its item is reported as ``WorkerCrashedError``:
  the item that kills workers fails, its neighbours do not.
* Fetching a result from a worker that dies meanwhile waits for Dask's
  connect timeout (``distributed.comm.timeouts.connect``, 30 s) before the
  task is computed again: a run with crashing workers can stall that long.
* Dask cannot stop a running task. ``timeout=`` is enforced on the worker:
  the chunk's items run in a helper thread, and an item past its deadline
  is *abandoned* as in thread mode: the caller gets ``TaskTimeoutError`` at
  once, the rest of the chunk is re-run, and the stuck thread runs on in the
  worker process until the item returns (its result discarded), beside the
  next task Dask gives that worker.
* ``initializer`` runs once per worker, as a Dask worker plugin (workers that
  join later, or are restarted, run it as they start); on someone else's
  cluster it is unregistered at shutdown. The same plugin runs ``finalizer``
  as the worker closes or the plugin is unregistered; ``worker_state()`` is
  one dict per pool in each worker process. Dask manages its workers'
  lifetimes, so ``max_tasks_per_worker`` is ignored.

``distributed`` is an optional extra: this module is imported only when the
dask mode is first used, and without the package it raises an ``ImportError``
naming ``pip install 'parallax[dask]'``.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import os
import threading
import uuid
import weakref
from collections import deque
from concurrent.futures import CancelledError
from dataclasses import dataclass
from time import perf_counter, time
from typing import Any, Final

try:
    import dask
    import distributed
except ImportError as exc:  # pragma: no cover - exercised in a subprocess
    raise ImportError(
        "mode='dask' needs the 'distributed' package: pip install 'parallax[dask]'"
    ) from exc

from .._broken import WorkerCrashedError
from .._errors import ParallaxError, describe_item
from .._host import gil_enabled, usable_cpus
from .._protocol import (
    ChunkFailed,
    DaskOutcome,
    Message,
    Result,
    decode,
    encode_items,
    unpicklable_items,
)
from .._serialize import dumps_function
from .._timeouts import timeout_error
from .._units import SOMEWHERE, Chunk, ChunkResult, Job
from . import Backend, WorkerSetup, failed_chunk, initializer_error
from ._dask_task import Lifecycle, run_on_worker

__all__ = ["SCATTER_THRESHOLD", "DaskBackend"]

logger = logging.getLogger("parallax")

#: a job function that pickles to at least this many bytes is scattered to
#: the workers once, rather than sent inside every chunk's task
SCATTER_THRESHOLD: Final = 64 * 1024
#: how often (seconds) a backend on someone else's cluster re-reads its size
_RESIZE_INTERVAL: Final = 1.0
#: longest wait (seconds) of the collector between looks at the cluster
_COLLECTOR_POLL: Final = 0.5
#: how long to wait for the exception of a future seen erred (it may be
#: pending again: a worker died and Dask computes it again)
_STATUS_TIMEOUT: Final = 1.0
#: looks at a finished task whose result cannot be fetched before giving up
_FETCH_ATTEMPTS: Final = 5
#: times a run's scattered function may be lost with its workers and sent again
_RESHIPS: Final = 5

_backend_ids = itertools.count(1)
#: every dask backend of this process, for the fork hook below
_every_backend: weakref.WeakSet[DaskBackend] = weakref.WeakSet()


# -- caller side ---------------------------------------------------------------------------


@dataclass(slots=True)
class _Task:
    """A chunk's task in flight: whose it is, and where its outcome goes."""

    future: Any  # distributed.Future
    job: Job
    chunk: Chunk
    #: a one-item chunk's run alone, to tell its item's crash from a neighbour's
    solo: bool = False
    #: a cancel was sent for it (not again on every sweep)
    cancelling: bool = False
    #: times it was seen finished but its result could not be fetched
    fetches: int = 0
    #: the scattered function it was sent with, if any
    shipped: Any = None


def _local_cluster_config() -> dict[str, Any]:
    """Dask settings for the local cluster parallax starts (its workers get them).

    Without the GIL, dask's sampling profiler, which reads other threads'
    running frames every few milliseconds, crashes the free-threaded
    CPython 3.13 (a segfault in ``distributed/profile.py``): it is turned
    off there. A cluster of the user's own (``address=``, ``client=``) keeps
    its settings.
    """
    return {} if gil_enabled() else {"distributed.worker.profile.enabled": False}


class DaskBackend(Backend):
    """Runs chunks as tasks on a Dask ``distributed`` cluster.

    Args:
        workers: size of the ``LocalCluster`` started when neither ``address``
            nor ``client`` is given (default: usable CPUs; one single-threaded
            worker process each). Ignored for an existing cluster, whose
            size is read from its scheduler.
        setup: the initializer (run once per worker, as a worker plugin);
            ``max_tasks_per_worker`` is ignored (Dask manages its workers).
        address: a running scheduler, e.g. ``"tcp://10.0.0.5:8786"``; a client
            is connected now and closed at shutdown.
        client: an existing ``distributed.Client``; it is used as is and left
            open at shutdown.

    Raises:
        ValueError: both ``address`` and ``client`` were given, or ``client``
            is asynchronous.
        TypeError: ``client`` is not a ``distributed.Client``, or ``address``
            not a string.
        ParallaxError: the scheduler at ``address`` could not be reached.
    """

    name = "dask"
    #: a task costs about a millisecond of scheduler and network time, so auto
    #: chunking aims for chunks of ~0.1 s
    chunk_overhead = 1e-3
    prefetch = 1

    def __init__(
        self,
        workers: int | None = None,
        setup: WorkerSetup | None = None,
        *,
        address: str | None = None,
        client: Any = None,
    ) -> None:
        if address is not None and client is not None:
            raise ValueError("pass address= or client= to the dask backend, not both")
        if client is not None and not isinstance(client, distributed.Client):
            raise TypeError(f"client= must be a distributed.Client, not {type(client).__name__}")
        if client is not None and client.asynchronous:
            # parallax calls the client from its own threads, not from a loop
            raise ValueError("client= must be a synchronous distributed.Client")
        if address is not None and not isinstance(address, str):
            raise TypeError(f"address= must be a scheduler address string, not {address!r}")
        self._setup = setup or WorkerSetup()
        if self._setup.max_tasks_per_worker is not None:
            logger.warning(
                "parallax: max_tasks_per_worker is ignored in dask mode "
                "(Dask manages its workers' lifetimes)"
            )
        #: the process this backend belongs to; in a forked child it is not its own
        self._owner = os.getpid()
        self._id = next(_backend_ids)
        self._prefix = f"parallax-dask-{self._id}"
        self._token = uuid.uuid4().hex[:8]  # task keys are unique per scheduler
        self._keys = itertools.count()
        self._address = address
        self._cluster: Any = None  # the LocalCluster we started, if any
        self._client: Any = client
        self._owns_client = client is None
        self._plugin: str | None = None
        self._lock = threading.Lock()
        self._start_lock = threading.Lock()
        self._started = False
        self._closed = False
        self._broken: BaseException | None = None
        self._tasks: dict[str, _Task] = {}
        self._functions: weakref.WeakKeyDictionary[Job, Any] = weakref.WeakKeyDictionary()
        self._reships: weakref.WeakKeyDictionary[Job, int] = weakref.WeakKeyDictionary()
        self._completed: Any = None  # distributed.as_completed, made at start
        self._collector: threading.Thread | None = None
        self._closer: threading.Thread | None = None
        self._resized = 0.0
        self._healed = 0.0
        #: isolated items waiting for their solo run, and whether one is out
        self._solos: deque[tuple[Job, Chunk]] = deque()
        self._solo_busy = False
        _every_backend.add(self)
        if address is None and client is None:
            self.workers = workers or usable_cpus()
        else:
            # An existing cluster: connect now, so a bad address fails at the
            # call and ``workers`` is the cluster's real size.
            self.workers = 1
            self._start()

    # -- public --------------------------------------------------------------------------

    @property
    def client(self) -> Any:
        """The ``distributed.Client`` in use (starting the local cluster if need be)."""
        self._ensure_started()
        return self._client

    @property
    def broken(self) -> BaseException | None:
        # Runs waiting for results look here twice a second: the place to
        # keep the local cluster whole even while the collector is blocked
        # fetching a result that Dask is computing again.
        if self._owner != os.getpid():
            return self._broken  # (inherited across a fork: nothing to heal here)
        self._heal()
        if self._broken is not None:
            return self._broken
        client = self._client
        if client is not None and not self._closed and client.status in ("closing", "closed"):
            return ParallaxError("the dask client was closed while parallax was using it")
        return None

    def prepare(self, job: Job) -> None:
        """Start the cluster if need be, and ship a large function once.

        Raises:
            SerializationError: the job's function cannot be pickled.
            ParallaxError: the cluster could not be started or reached.
        """
        self._ensure_started()
        self._resize()
        with self._lock:
            if self._broken is not None or job in self._functions or job.payload is not None:
                return
        self._ship(job)

    def _ship(self, job: Job) -> Any:
        """Pickle the job's function; scatter it if large. Returns the task's argument.

        A small function (the bytes) travels inside every chunk's task; a large
        one (a closure over a big array, say) is scattered to every worker once
        and the tasks name it. Every worker has it then, so no task is pulled
        towards the one worker holding it.

        Raises:
            SerializationError: the function cannot be pickled.
            ParallaxError: the function could not be sent to the workers.
        """
        payload = dumps_function(job.fn)  # SerializationError names the function
        if len(payload) < SCATTER_THRESHOLD:
            job.payload = payload
            return payload
        try:
            future = self._client.scatter(payload, broadcast=True, hash=False)
        except Exception as exc:
            raise ParallaxError(
                f"could not send the function {getattr(job.fn, '__qualname__', job.fn)!r} "
                f"to the dask workers: {type(exc).__name__}: {exc}"
            ) from exc
        with self._lock:
            self._functions[job] = future
        return future

    def submit(self, job: Job, chunk: Chunk) -> None:
        if self._owner != os.getpid():
            raise self._inherited()
        if self._closed:
            raise RuntimeError("cannot submit to a dask backend after shutdown")
        self._ensure_started()
        if self._broken is not None:
            job.deliver(failed_chunk(chunk, self._broken))
            return
        if not job.claim(chunk):
            return
        self._send(job, chunk)

    def cancel(self, job: Job, *, interrupt: bool = False) -> None:
        """Cancel the job's tasks that have not finished.

        Dask cannot stop a task that is running: with ``interrupt=True`` too,
        a running chunk goes on on its worker, its result discarded.
        """
        job.cancel()
        self._cancel_where(lambda task: task.job is job)

    def shutdown(self, wait: bool = True, *, cancel_pending: bool = False) -> None:
        if self._owner != os.getpid():
            return  # inherited across a fork: its client and cluster are the parent's
        with self._lock:
            already = self._closed
            self._closed = True
        if not already and cancel_pending:
            # Only what its run no longer wants: a chunk is claimed as it is
            # handed to Dask (a future runs from then on), and finishes.
            self._cancel_where(lambda task: not task.job.wants(task.chunk))
        if already:
            closer = self._closer
            if wait and closer is not None and closer is not threading.current_thread():
                closer.join()
            return
        if wait:
            self._close()
        else:
            self._closer = threading.Thread(
                target=self._close, name=f"{self._prefix}-closer", daemon=True
            )
            self._closer.start()

    def terminate(self, kill: bool = False) -> None:
        """Cancel every task now and release the cluster (Dask cannot stop a task
        that runs: it runs on in its worker, its result discarded); the chunks
        fail. A cluster parallax started is closed, someone else's is left."""
        caller = f"Executor.{'kill' if kill else 'terminate'}_workers()"
        error = WorkerCrashedError(
            f"the dask tasks were cancelled by {caller}; this call did not finish"
        )
        with self._lock:
            self._broken = self._broken or error
            tasks = list(self._tasks.values())
            self._tasks.clear()  # the collector skips them: delivered here, once
            solos = list(self._solos)
            self._solos.clear()
        self._cancel_futures([task.future for task in tasks])
        for job, chunk in [(task.job, task.chunk) for task in tasks] + solos:
            try:
                job.deliver(failed_chunk(chunk, error))
            except Exception:
                logger.exception("parallax: could not fail a chunk of a terminated dask backend")
        self.shutdown(wait=False)

    def _inherited(self) -> ParallaxError:
        return ParallaxError(
            f"this dask backend belongs to process {self._owner}; process {os.getpid()} "
            "inherited it through a fork, where its client's threads do not exist "
            "(a parallax call in the child connects a client of its own)"
        )

    def _disown(self) -> None:
        """In a forked child: broken and closed, without a word to the parent's
        client, scheduler or cluster (their connections are the parent's)."""
        self._lock = threading.Lock()
        self._start_lock = threading.Lock()
        self._broken = self._inherited()
        self._closed = True
        self._tasks = {}
        self._solos = deque()

    # -- starting and stopping -------------------------------------------------------------

    def _ensure_started(self) -> None:
        if not self._started:
            with self._start_lock:
                if not self._started:
                    self._start()

    def _start(self) -> None:
        """Connect (or start a local cluster), register the initializer."""
        if self._closed:
            raise RuntimeError("cannot use a dask backend after shutdown")
        try:
            if self._client is None and self._address is not None:
                self._client = distributed.Client(  # type: ignore[no-untyped-call,unused-ignore]
                    self._address, set_as_default=False
                )
            elif self._client is None:
                # Worker processes, one thread each: parallax's chunks are
                # the unit of parallelism. Loopback only, no dashboard: a
                # private pool, like process mode's.
                with dask.config.set(_local_cluster_config()):
                    self._cluster = distributed.LocalCluster(  # type: ignore[no-untyped-call,unused-ignore]
                        n_workers=self.workers,
                        threads_per_worker=1,
                        processes=True,
                        host="127.0.0.1",
                        # Dask serves an HTTP endpoint even without a dashboard; on
                        # its default port 8787 a second cluster (or a notebook's)
                        # would clash, so any free port, loopback only.
                        dashboard_address="127.0.0.1:0",
                    )
                self._client = distributed.Client(  # type: ignore[no-untyped-call,unused-ignore]
                    self._cluster, set_as_default=False
                )
        except Exception as exc:
            self._close_owned()
            where = f"the dask scheduler at {self._address}" if self._address else "dask"
            raise ParallaxError(
                f"could not connect to {where}: {type(exc).__name__}: {exc}"
            ) from exc
        if self._cluster is None:
            self._resize(force=True)
        self._completed = distributed.as_completed(  # type: ignore[no-untyped-call,unused-ignore]
            loop=self._client.loop
        )
        setup = self._setup
        if setup.initializer is not None or setup.finalizer is not None:
            name = f"parallax-initializer-{self._token}"
            try:
                self._client.register_plugin(
                    Lifecycle(self._token, setup.initializer, setup.initargs,
                              setup.finalizer, setup.finalargs),
                    name=name,
                )
                self._plugin = name
            except Exception as exc:
                self._broken = initializer_error(exc)
                # Left registered, every worker joining later would run it too.
                with contextlib.suppress(Exception):
                    self._client.unregister_worker_plugin(name)
        self._started = True

    def _resize(self, *, force: bool = False) -> None:
        """Re-read the size of a cluster someone else runs (it may scale)."""
        if self._cluster is not None or self._client is None:
            return
        now = perf_counter()
        if not force and now - self._resized < _RESIZE_INTERVAL:
            return
        self._resized = now
        try:
            threads = sum(self._client.nthreads().values())
        except Exception:  # an unreachable scheduler shows up where work is sent
            return
        self.workers = max(1, threads)

    def _heal(self) -> None:
        """Give the local cluster back a worker it lost for good.

        When a worker keeps dying, the nanny restarts it, but ``LocalCluster``
        closes a nanny whose worker is gone at the moment it looks again
        (``distributed.deploy.lost-worker-timeout`` after a death); a burst
        of deaths can so leave it with no workers and a run waiting forever.
        ``scale`` to the same size starts the missing ones again.
        """
        cluster = self._cluster
        now = perf_counter()
        if cluster is None or now - self._healed < _RESIZE_INTERVAL:
            return
        self._healed = now
        with contextlib.suppress(Exception):
            wanted = len(cluster.worker_spec)
            if len(cluster.workers) < wanted and not self._closed:
                logger.warning(
                    "parallax: the local dask cluster lost a worker for good; starting it again"
                )
                cluster.scale(wanted)

    def _close(self) -> None:
        """Wait for the tasks in flight, then release the cluster's resources."""
        collector = self._collector
        if collector is not None and collector is not threading.current_thread():
            collector.join()
        self._close_owned()

    def _close_owned(self) -> None:
        with self._lock:
            self._functions.clear()  # releases the scattered functions
        client, cluster, plugin = self._client, self._cluster, self._plugin
        self._plugin = None
        if client is not None and plugin is not None and cluster is None:
            # Someone else's cluster: leave no initializer behind on it.
            with contextlib.suppress(Exception):
                client.unregister_worker_plugin(plugin)
        if client is not None and self._owns_client:
            with contextlib.suppress(Exception):
                client.close()
        if cluster is not None:
            with contextlib.suppress(Exception):
                cluster.close()

    # -- sending -------------------------------------------------------------------------

    def _send(self, job: Job, chunk: Chunk, *, solo: bool = False) -> None:
        with self._lock:
            fn: Any = self._functions.get(job, job.payload)
        try:
            if fn is None:  # submitted without prepare()
                fn = self._ship(job)
            items = encode_items(chunk.items)
        except Exception as exc:
            self._settle(_Task(None, job, chunk, solo), _pickling_error(chunk, exc))
            return
        key = f"parallax-chunk-{self._token}-{job.id}-{chunk.seq}-{next(self._keys)}"
        try:
            future = self._client.submit(
                run_on_worker,
                f"{self._token}-{job.id}",
                fn,
                items,
                job.timeout,
                job.stop_at_failure,
                self._token,
                key=key,
                pure=False,
            )
        except Exception as exc:  # a closed client, say
            error = ParallaxError(f"dask refused the chunk: {type(exc).__name__}: {exc}")
            error.__cause__ = exc
            self._settle(_Task(None, job, chunk, solo), failed_chunk(chunk, error))
            return
        task = _Task(future, job, chunk, solo, shipped=fn if not isinstance(fn, bytes) else None)
        with self._lock:
            self._tasks[key] = task
            self._completed.add(future)
            if self._collector is None:
                self._collector = threading.Thread(
                    target=self._collect, name=f"{self._prefix}-collector", daemon=True
                )
                self._collector.start()

    def _cancel_where(self, doomed: Any) -> None:
        with self._lock:
            chosen = [task for task in self._tasks.values() if not task.cancelling and doomed(task)]
            for task in chosen:
                task.cancelling = True
            futures = [task.future for task in chosen]
        if futures:
            self._cancel_futures(futures)

    def _cancel_futures(self, futures: list[Any]) -> None:
        client = self._client
        if client is None:
            return
        with contextlib.suppress(Exception):  # a closed client has nothing to cancel
            client.cancel(futures, reason="cancelled by parallax")

    # -- collecting ----------------------------------------------------------------------

    def _collect(self) -> None:
        """The collector thread: it never dies silently. An unexpected error
        fails every chunk in flight with it and marks the backend broken."""
        try:
            self._collect_until_idle()
        except BaseException as exc:
            logger.exception("parallax: the dask collector failed")
            error = ParallaxError(f"the dask backend failed: {type(exc).__name__}: {exc}")
            error.__cause__ = exc
            with self._lock:
                self._broken = self._broken or error
                tasks = list(self._tasks.values())
                self._tasks.clear()
                self._collector = None
            self._cancel_futures([task.future for task in tasks])
            for task in tasks:
                try:
                    self._settle(task, failed_chunk(task.chunk, error))
                except BaseException:
                    logger.exception("parallax: could not fail a chunk of a broken dask backend")

    def _collect_until_idle(self) -> None:
        """Deliver finished tasks until none is in flight."""
        completed = self._completed
        # as_completed's blocking next() offers no way to look up now and
        # then; waiting on the condition it notifies (checked under it, so no
        # notification is missed) lets the collector also keep the local
        # cluster whole while it waits.
        condition = getattr(completed, "thread_condition", None)
        while True:
            batch = completed.next_batch(block=False)
            if batch:
                self._take(batch)
                continue
            with self._lock:
                # Checked under the lock _send adds under: a task added
                # after this check finds no collector and starts one.
                if completed.is_empty():
                    self._collector = None
                    return
            self._heal()
            if condition is None:
                threading.Event().wait(0.01)
                continue
            with condition:
                if not completed.has_ready():
                    condition.wait(_COLLECTOR_POLL)

    def _take(self, batch: list[Any]) -> None:
        """Fetch the results of a batch of finished futures and deliver them.

        The futures come from ``as_completed`` without results, and their data
        is fetched here in one ``gather(errors="skip")``: as_completed's own
        fetching dies silently when a key errs after a failed fetch (a worker
        died meanwhile), which would leave the run waiting forever.
        """
        finished = [future for future in batch if future.status == "finished"]
        fetched: dict[str, Any] = {}
        if finished:
            try:
                fetched = self._client.gather(
                    {future.key: future for future in finished}, errors="skip"
                )
            except Exception:  # each future's status says what to do next
                logger.debug("parallax: gathering dask results failed", exc_info=True)
        for future in batch:
            with self._lock:
                task = self._tasks.get(future.key)
            if task is None:
                continue
            outcome = fetched.get(future.key)
            try:
                if not self._finish(task, future, outcome):
                    with self._lock:
                        self._completed.add(future)  # back to pending: wait again
            except BaseException as exc:  # a bug here must not leave a caller waiting
                logger.exception("parallax: the dask collector failed on a chunk")
                error = ParallaxError(f"the dask backend failed: {type(exc).__name__}: {exc}")
                error.__cause__ = exc
                self._forget(task)
                self._settle(task, failed_chunk(task.chunk, error))

    def _finish(self, task: _Task, future: Any, outcome: Any) -> bool:
        """Deliver what became of a task; False when it is not over after all.

        ``outcome`` is the fetched result, or None: then the future's status
        says why (an error, a cancellation, or back to pending because the
        worker holding its result died before it was fetched).
        """
        job, chunk = task.job, task.chunk
        if job.cutoff is not None:
            # An ordered run hit a failure: later chunks need not run.
            self._cancel_where(lambda other: other.job is job and not job.wants(other.chunk))
        status = future.status
        error: BaseException | None = None
        if not isinstance(outcome, DaskOutcome) and status == "error":
            try:
                error = future.exception(timeout=_STATUS_TIMEOUT)
            except Exception:  # pending again meanwhile
                return False
        if (
            status in ("error", "cancelled")
            and not isinstance(outcome, DaskOutcome)
            and not isinstance(error, distributed.KilledWorker)
            and task.shipped is not None
            and task.shipped.status != "finished"
            and job.wants(chunk)
        ):
            return self._reship(task)
        if isinstance(outcome, DaskOutcome):
            result = _decode(chunk, outcome, job.timeout)
        elif status == "error":
            if not isinstance(error, distributed.KilledWorker):
                result = failed_chunk(chunk, _dask_error(error))
            elif len(chunk.items) > 1:
                # Which item killed the workers is unknown (the position they
                # were at died with them): the run re-runs each item alone.
                result = _crashed(chunk, error, SOMEWHERE)
            elif not task.solo:
                self._forget(task)
                self._queue_solo(job, chunk)
                return True
            else:
                result = _crashed(chunk, error, 0)
        elif status == "cancelled":  # by the run, or lost with the scheduler
            if not job.wants(chunk) and not task.solo:
                self._forget(task)
                return True  # the run asked for it
            if self._closed:
                reason: BaseException = CancelledError(
                    "the dask backend was shut down before this chunk finished"
                )
            else:
                reason = ParallaxError(
                    "the dask task of this chunk was cancelled; "
                    "was the client closed or the connection to the scheduler lost?"
                )
            result = failed_chunk(chunk, reason)
        elif status == "finished":
            # Finished, yet its result could not be fetched (or was no
            # outcome of ours): a few looks again, then give up on it.
            task.fetches += 1
            if task.fetches <= _FETCH_ATTEMPTS:
                return False
            result = failed_chunk(
                chunk, ParallaxError("the result of this chunk could not be fetched from dask")
            )
        else:  # pending or lost: Dask is computing it again
            return False
        self._forget(task)
        self._settle(task, result)
        return True

    def _reship(self, task: _Task) -> bool:
        """The scattered function of a failed task is gone: ship it again, resend.

        Dask forgets scattered data once no worker holds it, and the tasks
        that need it are cancelled: workers dying one after another (a poison
        item, say) can take every replica with them. Up to
        :data:`_RESHIPS` times per run.
        """
        job, chunk = task.job, task.chunk
        self._forget(task)
        with self._lock:
            current = self._functions.get(job)
            again = current is task.shipped  # not shipped again by an earlier task
            count = self._reships.get(job, 0) + (1 if again else 0)
            self._reships[job] = count
        if count > _RESHIPS:
            crash = WorkerCrashedError(
                f"the dask workers holding this run's function kept dying: it was lost "
                f"{count} times, each time with every worker holding it, so the chunks "
                "that needed it could not run; giving up on this chunk"
            )
            self._settle(task, failed_chunk(chunk, crash))
            return True
        if again:
            logger.warning("parallax: the function scattered to the dask workers was lost "
                           "with its workers; sending it again")
            with self._lock:
                self._functions.pop(job, None)
            try:
                self._ship(job)
            except ParallaxError as exc:
                self._settle(task, failed_chunk(chunk, exc))
                return True
        # (a solo task's turn passes to the resent one, which ends it)
        self._send(job, chunk, solo=task.solo)
        return True

    def _forget(self, task: _Task) -> None:
        with self._lock:
            self._tasks.pop(task.future.key, None)

    def _settle(self, task: _Task, result: ChunkResult) -> None:
        """Deliver a chunk's result (unless its run dropped it while it ran alone)."""
        if not (task.solo and not task.job.wants(task.chunk)):
            task.job.deliver(result)
        if task.solo:
            self._next_solo()

    # -- telling the item that kills workers from its neighbours -------------------------
    #
    # Dask counts a worker's death against every task queued on that worker,
    # not only the one running, so an innocent one-item chunk queued beside
    # the killer can be given up on (KilledWorker) too. Such a chunk is run
    # once more *alone* (one solo task at a time per backend) before its item
    # is reported as the crash.

    def _queue_solo(self, job: Job, chunk: Chunk) -> None:
        with self._lock:
            self._solos.append((job, chunk))
            if self._solo_busy:
                return  # the running one sends the next when it ends
            self._solo_busy = True
        self._next_solo(first=True)

    def _next_solo(self, *, first: bool = False) -> None:
        """Send the next queued solo run, if any (the caller holds the solo turn)."""
        while True:
            with self._lock:
                if not first and not self._solo_busy:
                    return
                first = False
                if not self._solos:
                    self._solo_busy = False
                    return
                job, chunk = self._solos.popleft()
            if job.wants(chunk):
                self._send(job, chunk, solo=True)
                return


def _disown_inherited_backends() -> None:
    for backend in list(_every_backend):
        if backend._owner != os.getpid():
            with contextlib.suppress(Exception):  # nothing may fail a fork
                backend._disown()


os.register_at_fork(after_in_child=_disown_inherited_backends)


# -- results and errors ------------------------------------------------------------------


def _decode(chunk: Chunk, outcome: DaskOutcome, timeout: float | None) -> ChunkResult:
    """The caller's ChunkResult from what a chunk's task returned."""
    message = decode(outcome.message, Message)
    if isinstance(message, ChunkFailed):  # the function or the items did not unpickle
        failure = message.failure.to_failure()
        return failed_chunk(chunk, failure.to_exception(None, None, outcome.worker))
    if not isinstance(message, Result):
        raise TypeError(f"a dask task cannot return a {type(message).__name__}")
    # perf_counter() readings from the worker's clock, moved onto ours.
    shift = outcome.clock_offset - (time() - perf_counter())
    result = message.to_chunk_result(chunk, outcome.worker, shift)
    if result.interruption is not None:  # its values did not unpickle here
        return result
    position = outcome.timed_out_at
    if position >= 0:
        assert timeout is not None  # only a watched chunk times out
        result.interruption = timeout_error(
            chunk, position, timeout,
            "; Dask cannot stop a running task, so the item was abandoned (it runs on in "
            "the worker until it returns, its result discarded)",
            where=f" on dask worker {outcome.worker}",
        )
        result.interrupted_at = position
    return result


def _crashed(chunk: Chunk, error: BaseException, position: int) -> ChunkResult:
    """A chunk whose task Dask gave up on: its workers kept dying (KilledWorker).

    ``position`` is the item to blame (a one-item chunk that was killed alone
    too), or SOMEWHERE: the run then re-runs each item of the chunk alone.
    """
    last = getattr(error, "last_worker", None)
    worker = str(getattr(last, "address", "") or "")
    allowed = getattr(error, "allowed_failures", None)
    times = f"{allowed + 1} times " if isinstance(allowed, int) else ""
    if position == SOMEWHERE:
        what = f"a chunk of {len(chunk.items)} items"
    else:
        index = chunk.index_of(position)
        what = f"item {index} ({describe_item(chunk.items[position])})"
    crash = WorkerCrashedError(
        f"{what} killed the dask worker running it {times}(the last: {worker or 'unknown'}), "
        "even when run alone; Dask gave up on it (KilledWorker). Dask restarted the "
        "workers and the other items carry on",
        worker=worker,
    )
    crash.__cause__ = error
    return ChunkResult(chunk, [], worker=worker, interruption=crash, interrupted_at=position)


def _dask_error(error: Any) -> BaseException:
    """An error Dask raised instead of running the chunk (not the user's: those are
    captured inside the task)."""
    if isinstance(error, BaseException):
        wrapped = ParallaxError(
            f"the dask cluster could not run the chunk: {type(error).__name__}: {error}"
        )
        wrapped.__cause__ = error
        return wrapped
    return ParallaxError(f"the dask cluster could not run the chunk: {error!r}")


def _pickling_error(chunk: Chunk, exc: BaseException) -> ChunkResult:
    """The chunk could not be pickled for the workers: name the item that does not."""
    if isinstance(exc, ParallaxError):  # the function (see _ship)
        return failed_chunk(chunk, exc)
    return unpicklable_items(chunk, exc)
