"""The backend interface: what every engine implements, and its building blocks.

A backend is an engine that runs chunks: it starts workers, accepts a chunk
(:meth:`Backend.submit`), hands each finished chunk back through the job's
``deliver`` callback, drops what a cancelled job has not started, and shuts
down. It knows nothing about ordering, error policy, retries or stats: the
run driver (``parallax._run``) does all of that once for every backend.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, ClassVar

from .._host import usable_cpus
from .._records import FrozenRecord
from .._units import EVERY_ITEM, Chunk, ChunkResult, Job
from .._worker import run_finalizer

if TYPE_CHECKING:
    # Imported where an initializer fails, not here: its bases live in
    # concurrent.futures.process, which pulls in multiprocessing, a cost
    # the first call of every mode would otherwise pay.
    from .._broken import InitializerError

__all__ = ["Backend", "WorkerSetup", "failed_chunk", "initializer_error"]


class WorkerSetup(FrozenRecord):
    """How every worker of a pool starts and when it is recycled."""

    __match_args__ = ("initializer", "initargs", "max_tasks_per_worker", "finalizer",
                      "finalargs")  # the fields, in order
    __slots__ = __match_args__
    initializer: Callable[..., object] | None
    initargs: tuple[Any, ...]
    max_tasks_per_worker: int | None
    finalizer: Callable[..., object] | None
    finalargs: tuple[Any, ...]

    def __init__(
        self,
        initializer: Callable[..., object] | None = None,
        initargs: tuple[Any, ...] = (),
        max_tasks_per_worker: int | None = None,
        finalizer: Callable[..., object] | None = None,
        finalargs: tuple[Any, ...] = (),
    ) -> None:
        _set = object.__setattr__
        _set(self, "initializer", initializer)
        _set(self, "initargs", initargs)
        _set(self, "max_tasks_per_worker", max_tasks_per_worker)
        _set(self, "finalizer", finalizer)
        _set(self, "finalargs", finalargs)

    def initialize(
        self, *, in_caller: bool = False, kind: type[InitializerError] | None = None
    ) -> InitializerError | None:
        """Run the initializer where a worker starts; the error (a ``kind``) if it failed.

        ``KeyboardInterrupt`` propagates only ``in_caller`` (serial mode).
        """
        if self.initializer is None:
            return None
        try:
            self.initializer(*self.initargs)
        except BaseException as exc:
            if in_caller and isinstance(exc, KeyboardInterrupt):
                raise
            return initializer_error(exc, kind)
        return None

    def finalize(self, worker: str, *, in_caller: bool = False) -> None:
        """Run the finalizer where a worker stops; an error is logged, never raised.

        ``KeyboardInterrupt`` propagates only ``in_caller`` (serial mode).
        """
        run_finalizer(self.finalizer, self.finalargs, worker, in_caller=in_caller)


class Backend(ABC):
    """An engine that runs chunks of a job on its workers."""

    #: the mode name this backend is registered under
    name: ClassVar[str] = ""
    #: rough cost in seconds of sending one chunk to a worker and back; auto
    #: chunking makes chunks long enough that this stays around 1% of the work
    chunk_overhead: ClassVar[float] = 1e-5
    #: chunks queued per worker beyond the one it runs, so no worker waits
    prefetch: ClassVar[int] = 1
    #: runs each chunk in the caller's thread as it is submitted (serial):
    #: nothing to balance or overlap, so a run that wants every result at
    #: once may hand over its whole input as one chunk
    runs_in_caller: ClassVar[bool] = False

    workers: int

    @classmethod
    def default_workers(cls) -> int:
        """The pool size when ``workers=None``: by default the usable CPUs."""
        return usable_cpus()

    @property
    def chunk_slots(self) -> int:
        """How many chunks run at once (a worker runs one chunk at a time)."""
        return self.workers

    @property
    def starting(self) -> bool:
        """True while no worker can take work yet (fresh interpreters booting,
        or loading a function handed to :meth:`preload`).

        The auto-selector keeps running items in the caller meanwhile.
        """
        return False

    def auto_chunksize(self) -> int | None:
        """A fixed size for ``chunksize="auto"``, for engines where measured item
        time says nothing about cost (items of a chunk run concurrently)."""
        return None

    def prepare(self, job: Job) -> None:  # noqa: B027 - optional hook
        """Check what a job needs before any of its chunks is sent.

        Raises:
            SerializationError: the job's function cannot cross to the workers.
        """

    def preload(self, job: Job) -> None:  # noqa: B027 - optional hook
        """Start loading the job's function on the workers now, before its
        first chunk (the auto-selector calls it while a pool boots, so the
        workers import the function's module while the caller works)."""

    @abstractmethod
    def submit(self, job: Job, chunk: Chunk) -> None:
        """Queue ``chunk`` of ``job``; its result arrives through ``job.deliver``.

        Every submitted chunk is delivered exactly once (possibly as an
        interrupted result), unless its job is cancelled before it starts.
        """

    def cancel(self, job: Job, *, interrupt: bool = False) -> None:
        """Drop the job's chunks that have not started.

        With ``interrupt=True`` (Ctrl-C) also stop the ones that are running,
        where the engine can.
        """
        job.cancel()

    @abstractmethod
    def shutdown(self, wait: bool = True, *, cancel_pending: bool = False) -> None:
        """Stop the workers once queued chunks are done (or dropped). Idempotent."""

    def terminate(self, kill: bool = False) -> None:
        """Stop every worker now (``Executor.terminate_workers``/``kill_workers``):
        SIGTERM, or SIGKILL with ``kill``, where workers are processes; the
        chunks they hold fail. Then nothing more runs: the backend is shut down.

        The default suits engines whose workers live in this process (threads,
        an event loop, the caller's thread), which cannot be stopped from
        outside: queued chunks are dropped, running ones abandoned (their
        results discarded); the executor fails their futures.
        """
        self.shutdown(wait=False, cancel_pending=True)

    @property
    def broken(self) -> BaseException | None:
        """Why this backend can run nothing more, or None while it can."""
        return None


def failed_chunk(chunk: Chunk, error: BaseException) -> ChunkResult:
    """A result that fails every item of ``chunk`` with ``error``."""
    return ChunkResult(chunk, [], interruption=error, interrupted_at=EVERY_ITEM)


def initializer_error(
    exc: BaseException, kind: type[InitializerError] | None = None, what: str = "initializer"
) -> InitializerError:
    """The pool's error for an initializer (or other set-up step: ``what``)
    that raised ``exc`` (a ``kind``, by default :class:`InitializerError`),
    logged as the standard library's executors log it (logger
    ``concurrent.futures``)."""
    from .._broken import InitializerError

    error_class = InitializerError if kind is None else kind
    import logging  # only a failed initializer logs

    logging.getLogger("concurrent.futures").critical("Exception in initializer:", exc_info=exc)
    error = error_class(
        f"the worker {what} failed with {type(exc).__name__}: {exc}; "
        "no item can run in this pool"
    )
    error.__cause__ = exc
    return error
