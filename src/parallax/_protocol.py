"""The worker wire protocol: every message between the caller and its workers.

Process mode sends these messages over a worker's socket, one frame each
(``_wire.Channel``); dask mode returns them from a chunk's task::

    caller -> process worker   Hello        first: sys.path, name, modules to import, initializer,
                                            finalizer, limits, the level to forward
                                            log records from
                               Task         a chunk's header (job, function if new,
                                            flags), then one frame: its items
                               Preload      a job's function alone, its chunks later
                               Stop         the poison pill
    process worker -> caller   Ready        the initializer ran
                               Loaded       a preloaded function is loaded
                               Result       a chunk's values, captured exceptions, timings
                               ChunkFailed  nothing of the chunk could run
                               InitFailed   its set-up raised; the worker exits
                               Retire       max tasks or memory reached; the worker exits
                               Log          a record no handler of the worker took (``_logforward``)
    dask task -> caller        DaskOutcome  an encoded Result or ChunkFailed, and where
                                            and when it ran

Each message is a small ``__slots__`` class, pickled as its class and fields
(``__reduce__``), and framed by :func:`encode` and :func:`decode` alone.
Exceptions travel as :class:`PickledFailure`. The payload bytes inside the
messages, a chunk's items and values, go through :func:`encode_items` /
:func:`decode_items` and :func:`encode_values` / :func:`decode_values`.
Process mode uses their ``share_*`` twins, which put large out-of-band
buffers in a shared-memory :class:`~parallax._shm.Segment` sent beside the
frame (``_shm``); the decoders then take the segment's descriptor.

A worker holds the functions of its recent jobs in a :class:`JobCache`; the
process pool mirrors each worker's cache in one, to know when a chunk must
carry its function again.

Worker-light: a process worker imports this module, so no ``typing`` or
``dataclasses`` at run time.
"""

from __future__ import annotations

import os
import threading
from collections import OrderedDict

from . import _shm
from ._errors import CannotPickleError, CannotUnpickleError
from ._serialize import (
    argument_error,
    dumps,
    dumps_function,
    dumps_plain,
    find_unpicklable,
    loads,
    result_error,
)
from ._units import Chunk, ChunkResult, Failure

TYPE_CHECKING = False  # not typing's: workers do not import typing
if TYPE_CHECKING:
    from collections.abc import Callable, Sequence
    from typing import Any, Final, TypeVar

    from ._shm import Segment

    M = TypeVar("M", bound="Message")

__all__ = [
    "JOB_CACHE_SIZE",
    "ChunkFailed",
    "DaskOutcome",
    "Hello",
    "InitFailed",
    "JobCache",
    "Loaded",
    "Log",
    "Message",
    "PickledFailure",
    "Preload",
    "Ready",
    "Result",
    "Retire",
    "Stop",
    "Task",
    "decode",
    "decode_items",
    "decode_values",
    "encode",
    "encode_items",
    "encode_values",
    "load_or_error",
    "pickle_function",
    "pickle_items",
    "share_values",
    "unpicklable_items",
]

#: jobs whose function a worker keeps; the process pool mirrors this to know
#: when it must send a function again
JOB_CACHE_SIZE: Final = 8


# -- messages ------------------------------------------------------------------------------


class Message:
    """Base of every message; ``__reduce__`` of each pickles it as class and fields."""

    __slots__ = ()

    def __repr__(self) -> str:
        names: tuple[str, ...] = self.__slots__
        fields = ", ".join(f"{name}={getattr(self, name)!r}" for name in names)
        return f"{type(self).__name__}({fields})"


def encode(message: Message) -> bytes:
    """A message as one frame."""
    return dumps_plain(message)


def decode(frame: bytes | bytearray, kind: type[M]) -> M:
    """The message of one frame, which must be a ``kind``.

    Raises:
        TypeError: the frame holds another message (a bug on one side).
    """
    message = loads(frame)
    if not isinstance(message, kind):
        raise TypeError(f"expected a {kind.__name__} message, got {type(message).__name__}")
    return message


class Hello(Message):
    """Caller -> process worker, first: how to set itself up.

    ``authkey`` is the caller's ``multiprocessing`` authentication key, so the
    worker can use the caller's ``multiprocessing.Manager()`` proxies. Sent
    over the socket, never on the command line or in the environment, where
    other users of the machine could read it.
    """

    __slots__ = ("authkey", "finalargs", "finalizer", "initargs", "initializer", "log_level",
                 "max_memory", "max_tasks", "name", "preload_modules", "sys_path")

    def __init__(self, sys_path: list[str], name: str, initializer: bytes | None,
                 initargs: bytes | None, max_tasks: int | None, max_memory: int | None,
                 authkey: bytes, finalizer: bytes | None = None,
                 finalargs: bytes | None = None, log_level: int | None = None,
                 preload_modules: tuple[str, ...] = ()) -> None:
        self.sys_path = sys_path
        self.name = name
        #: the pickled initializer and its arguments, or None for none
        self.initializer = initializer
        self.initargs = initargs
        self.max_tasks = max_tasks
        self.max_memory = max_memory
        self.authkey = authkey
        #: the pickled finalizer and its arguments, or None for none
        self.finalizer = finalizer
        self.finalargs = finalargs
        #: forward log records from this level on to the caller (None: do not)
        self.log_level = log_level
        #: modules to import before the initializer (``preload=``; a worker
        #: forked by a template that imported them finds them imported)
        self.preload_modules = preload_modules

    def __reduce__(self) -> tuple[Any, ...]:
        return (Hello, (self.sys_path, self.name, self.initializer, self.initargs,
                        self.max_tasks, self.max_memory, self.authkey, self.finalizer,
                        self.finalargs, self.log_level, self.preload_modules))

    def __repr__(self) -> str:
        return super().__repr__().replace(repr(self.authkey), "<hidden>")


class Task(Message):
    """Caller -> process worker: run a chunk; the next frame holds its items
    (:func:`encode_items`).

    ``function`` is the job's pickled function when the worker does not hold
    it (the pool's mirror of its :class:`JobCache` says), else None.
    """

    __slots__ = ("function", "job_id", "stop_at_failure", "watch_time")

    def __init__(self, job_id: int, function: bytes | None, watch_time: bool,
                 stop_at_failure: bool) -> None:
        self.job_id = job_id
        self.function = function
        #: a timeout is set: mark each item's start
        self.watch_time = watch_time
        #: end the chunk at its first failing item
        self.stop_at_failure = stop_at_failure

    def __reduce__(self) -> tuple[Any, ...]:
        return (Task, (self.job_id, self.function, self.watch_time, self.stop_at_failure))


class Preload(Message):
    """Caller -> process worker: load a job's function now, its chunks come later."""

    __slots__ = ("function", "job_id")

    def __init__(self, job_id: int, function: bytes) -> None:
        self.job_id = job_id
        self.function = function

    def __reduce__(self) -> tuple[Any, ...]:
        return (Preload, (self.job_id, self.function))


class _Signal(Message):
    """A message without fields."""

    __slots__ = ()

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), ())


class Stop(_Signal):
    """Caller -> process worker: the poison pill; the worker exits."""

    __slots__ = ()


class Ready(_Signal):
    """Process worker -> caller: the initializer ran, chunks may come."""

    __slots__ = ()


class Loaded(_Signal):
    """Process worker -> caller: a preloaded function is loaded."""

    __slots__ = ()


class Retire(_Signal):
    """Process worker -> caller: max tasks or memory reached; the worker exits."""

    __slots__ = ()


class Log(Message):
    """Process worker -> caller: a log record no handler of the worker took,
    as ``_logforward`` prepared its fields; the caller's loggers handle it."""

    __slots__ = ("fields",)

    def __init__(self, fields: dict[str, Any]) -> None:
        self.fields = fields

    def __reduce__(self) -> tuple[Any, ...]:
        return (Log, (self.fields,))


class PickledFailure(Message):
    """A captured exception on its way to the caller.

    ``exception`` is the pickled exception, or None when it does not pickle;
    ``summary`` names it in one line for when it cannot be rebuilt.
    """

    __slots__ = ("exception", "summary", "traceback")

    def __init__(self, exception: bytes | None, traceback: str, summary: str) -> None:
        self.exception = exception
        self.traceback = traceback
        self.summary = summary

    def __reduce__(self) -> tuple[Any, ...]:
        return (PickledFailure, (self.exception, self.traceback, self.summary))

    @classmethod
    def of(cls, failure: Failure) -> PickledFailure:
        """The failure ready to send. Never raises: encoding a failure must not
        kill a worker, whatever the exception's ``__str__`` or ``__reduce__`` do
        (one that does not pickle arrives as a SerializationError naming its type).
        """
        exc = failure.exception
        kind = type(exc)
        try:
            summary = f"{kind.__module__}.{kind.__qualname__}: {exc}"
        except BaseException:  # its __str__ raised
            summary = f"{kind.__module__}.{kind.__qualname__} (its str() raised)"
        # Without its tracebacks: they travel as text. (Plain pickling skips
        # them anyway; with tblib's reducers installed, as Dask installs them,
        # the traceback of a RecursionError is too deep to pickle.)
        detached = _detach_tracebacks(exc)
        try:
            blob: bytes | None = dumps_plain(exc)
        except BaseException:  # SystemExit from a __reduce__ must not end the worker
            blob = None
        finally:
            for raised, traceback in detached:
                raised.__traceback__ = traceback
        return cls(blob, failure.traceback, summary)

    def to_failure(self) -> Failure:
        """The captured exception again; one that does not unpickle says so."""
        problem = ""
        if self.exception is not None:
            try:
                exc = loads(self.exception)
            except BaseException as caught:  # whatever its unpickling raises, it is the item's
                problem = f" (unpickling it raised {type(caught).__name__})"
            else:
                if isinstance(exc, BaseException):
                    return Failure(exc, self.traceback)
            error: CannotPickleError | CannotUnpickleError = CannotUnpickleError(
                f"the worker raised {self.summary}, but the exception could not be pickled "
                f"back to the caller{problem} (its traceback is attached as the cause)"
            )
        else:
            error = CannotPickleError(
                f"the worker raised {self.summary}, but the exception could not be pickled "
                "back to the caller (its traceback is attached as the cause)"
            )
        return Failure(error, self.traceback)


def _detach_tracebacks(exc: BaseException) -> list[tuple[BaseException, Any]]:
    """Take the tracebacks off ``exc`` and the exceptions chained to it; the
    exceptions and their tracebacks, to put them back."""
    detached = []
    seen: set[int] = set()
    todo: list[BaseException | None] = [exc]
    while todo:
        raised = todo.pop()
        if raised is None or id(raised) in seen:
            continue
        seen.add(id(raised))
        detached.append((raised, raised.__traceback__))
        raised.__traceback__ = None
        todo += (raised.__cause__, raised.__context__)
    return detached


class ChunkFailed(Message):
    """Worker -> caller: nothing of the chunk could run (its function or its
    items did not unpickle in the worker)."""

    __slots__ = ("failure",)

    def __init__(self, failure: PickledFailure) -> None:
        self.failure = failure

    def __reduce__(self) -> tuple[Any, ...]:
        return (ChunkFailed, (self.failure,))


class InitFailed(Message):
    """Process worker -> caller: its set-up raised (``stage``: "initializer",
    or "preload" for an import of ``preload=``); the worker exits."""

    __slots__ = ("failure", "stage")

    def __init__(self, failure: PickledFailure, stage: str = "initializer") -> None:
        self.failure = failure
        self.stage = stage

    def __reduce__(self) -> tuple[Any, ...]:
        return (InitFailed, (self.failure, self.stage))


class Result(Message):
    """Worker -> caller: what became of a chunk's items, and its timings
    (``perf_counter()`` readings of the worker).

    ``values`` is the values' payload (:func:`encode_values`); ``failures``
    the captured exceptions by position in the chunk, or None; ``released``
    the keys of the caller's shared-memory segments this worker no longer
    maps (``_shm.take_released``), for the caller to write into again.
    """

    __slots__ = ("cpu", "failures", "finished", "item_ends", "released", "started", "values")

    def __init__(self, values: bytes, failures: dict[int, PickledFailure] | None,
                 started: float, finished: float, cpu: float,
                 item_ends: list[float] | None, released: list[int] | None = None) -> None:
        self.values = values
        self.failures = failures
        self.started = started
        self.finished = finished
        self.cpu = cpu
        self.item_ends = item_ends
        self.released = released

    def __reduce__(self) -> tuple[Any, ...]:
        return (Result, (self.values, self.failures, self.started, self.finished, self.cpu,
                         self.item_ends, self.released))

    @classmethod
    def of(cls, result: ChunkResult) -> Result:
        """The message of a chunk's result (in the worker)."""
        values, failures = encode_values(result.values, result.failures)
        return cls._with(result, values, failures)

    @classmethod
    def shared(cls, result: ChunkResult,
               released: list[int] | None = None) -> tuple[Result, Segment | None]:
        """The message of a chunk's result, its large buffers in a segment to send
        beside it (in a process worker); ``released``: see the class."""
        values, failures, segment = share_values(result.values, result.failures)
        message = cls._with(result, values, failures)
        message.released = released or None
        return message, segment

    @classmethod
    def _with(cls, result: ChunkResult, values: bytes, failures: dict[int, Failure]) -> Result:
        pickled = {position: PickledFailure.of(failure) for position, failure in failures.items()}
        return cls(values, pickled or None, result.started, result.finished, result.cpu,
                   result.item_ends)

    def to_chunk_result(self, chunk: Chunk, worker: str, shift: float = 0.0,
                        fd: int = -1) -> ChunkResult:
        """The chunk's result again (in the caller), its timings moved by ``shift``
        onto the caller's clock; ``fd`` is the segment that came with the
        message, if any (closed here, whatever happens).

        Values that do not unpickle here fail the whole chunk: the result then
        holds no values and a CannotUnpickleError as its interruption (never set
        otherwise), whatever unpickling raised (``SystemExit`` too: it must
        settle the chunk, not end the thread that reads results).
        """
        try:
            values = decode_values(self.values, fd)
        except BaseException as exc:
            error = CannotUnpickleError(
                f"the results of a chunk could not be unpickled in the caller: "
                f"{type(exc).__name__}: {exc}"
            )
            error.__cause__ = exc
            return ChunkResult(chunk, [], interruption=error)
        failures = (
            {position: failure.to_failure() for position, failure in self.failures.items()}
            if self.failures
            else None
        )
        ends = self.item_ends
        if shift:
            ends = [end + shift for end in ends] if ends else None
        return ChunkResult(chunk, values, failures, worker, self.started + shift,
                           self.finished + shift, self.cpu, ends)


class DaskOutcome(Message):
    """What a chunk's dask task returns to the caller (Dask pickles it).

    ``message`` is an encoded :class:`Result`, or :class:`ChunkFailed` when
    nothing of the chunk could run; ``worker`` the worker's address;
    ``clock_offset`` its ``time() - perf_counter()``, to move its timings onto
    the caller's clock (workers may run on other machines); ``timed_out_at``
    the position of an item abandoned past its timeout, or -1.
    """

    __slots__ = ("clock_offset", "message", "timed_out_at", "worker")

    def __init__(self, message: bytes, worker: str, clock_offset: float,
                 timed_out_at: int = -1) -> None:
        self.message = message
        self.worker = worker
        self.clock_offset = clock_offset
        self.timed_out_at = timed_out_at

    def __reduce__(self) -> tuple[Any, ...]:
        return (DaskOutcome, (self.message, self.worker, self.clock_offset, self.timed_out_at))


# -- payloads ------------------------------------------------------------------------------


def encode_items(items: Sequence[Any]) -> bytes:
    """A chunk's items for a worker (in the caller; by value where they must be).

    Raises:
        Exception: an item does not pickle; :func:`unpicklable_items` says which.
    """
    return dumps(items)


def unpicklable_items(chunk: Chunk, exc: BaseException) -> ChunkResult:
    """The result of a chunk whose items did not pickle (``exc``): the first
    item that does not fails with SerializationError, the rest run again."""
    culprit = find_unpicklable(chunk.items)
    if culprit is None:  # each item pickles, the whole did not
        error = CannotPickleError(f"the chunk could not be pickled: {type(exc).__name__}: {exc}")
        error.__cause__ = exc
        return ChunkResult(chunk, [], interruption=error)
    position, reason = culprit
    index = chunk.index_of(position)
    return ChunkResult(
        chunk,
        [],
        interruption=argument_error(index, chunk.items[position], reason),
        interrupted_at=position,
    )


def pickle_items(items: Sequence[Any]) -> _shm.Pickled:
    """A chunk's items pickled by value, their large buffers still to be
    written into a segment to send beside the blob (``Pickled.write``, when
    the chunk is about to go: it may take a recycled segment then).

    Raises:
        Exception: an item does not pickle; :func:`unpicklable_items` says which.
    """
    return _shm.pickle_shared(items, by_value=True)


def pickle_function(fn: Any) -> _shm.Pickled:
    """A job's function pickled by value, its large buffers (a bound array, a
    model's weights) still to be written into a segment every worker maps
    (``Pickled.write``, or a pool's ``Keeper``).

    Raises:
        SerializationError: the function cannot be pickled (naming it).
    """
    try:
        return _shm.pickle_shared(fn, by_value=True)
    except Exception:
        dumps_function(fn)  # raises the SerializationError that names the function
        raise


def decode_items(blob: bytes | bytearray, where: str, hint: str = "", fd: int = -1) -> Any:
    """A chunk's items (in the worker), or the SerializationError saying why not;
    ``fd``: the segment that came with them (closed here)."""
    return load_or_error(blob, "arguments", where, hint, fd)


def encode_values(
    values: list[Any], failures: dict[int, Failure] | None
) -> tuple[bytes, dict[int, Failure]]:
    """A chunk's values (in the worker), and its failures.

    A value that does not pickle becomes None and a failure of its own
    item: the rest of the chunk keeps its values.
    """
    def plain(values: list[Any]) -> tuple[bytes, None]:
        return dumps_plain(values), None

    blob, failures, _ = _encode_values(values, failures, plain)
    return blob, failures


def share_values(
    values: list[Any], failures: dict[int, Failure] | None
) -> tuple[bytes, dict[int, Failure], Segment | None]:
    """:func:`encode_values`, the large buffers in a segment to send beside the blob."""
    def shared(values: list[Any]) -> tuple[bytes, Segment | None]:
        return _shm.dumps(values, by_value=False)

    return _encode_values(values, failures, shared)


def _encode_values(
    values: list[Any], failures: dict[int, Failure] | None,
    dump: Callable[[list[Any]], tuple[bytes, Segment | None]],
) -> tuple[bytes, dict[int, Failure], Segment | None]:
    failures = dict(failures or {})
    try:
        blob, segment = dump(values)
        return blob, failures, segment
    except BaseException:  # (whatever a __reduce__ raises: the worker carries on)
        values = list(values)
        for position, value in enumerate(values):
            try:
                dumps_plain(value)
            except BaseException as exc:
                values[position] = None
                failures[position] = Failure(result_error(value, exc), "")
        blob, segment = dump(values)
        return blob, failures, segment


def decode_values(blob: bytes, fd: int = -1) -> list[Any]:
    """A chunk's values (in the caller); ``fd``: the segment that came with them
    (closed here). Raises what unpickling raised."""
    values: list[Any] = _shm.loads(blob, fd)
    return values


def load_or_error(blob: bytes | bytearray, what: str, where: str, hint: str = "",
                  fd: int = -1) -> Any:
    """Unpickle ``blob`` (in a worker), or return the SerializationError saying
    that ``what`` could not be unpickled ``where`` (whatever unpickling raised:
    the worker carries on). ``fd``: the segment that came with it (closed here)."""
    try:
        return _shm.loads(blob, fd)
    except BaseException as exc:
        error = CannotUnpickleError(
            f"the {what} could not be unpickled {where}: {type(exc).__name__}: {exc}{hint}"
        )
        error.__cause__ = exc
        return error


# -- the job cache -------------------------------------------------------------------------


class JobCache:
    """The functions of a worker's recent jobs, by job, least recently used first.

    A run's chunks share one function, and a few runs may interleave: a
    worker unpickles each function once and keeps the last
    :data:`JOB_CACHE_SIZE`. A function that does not unpickle is kept as
    its SerializationError, so every chunk of its job fails alike. The
    process pool keeps one per worker as the worker's mirror (values
    unused): both sides touch and evict in the same order. Thread-safe.
    """

    __slots__ = ("_entries", "_lock", "_size")

    def __init__(self, size: int = JOB_CACHE_SIZE) -> None:
        self._entries: OrderedDict[object, Any] = OrderedDict()
        self._lock = threading.Lock()
        self._size = size

    def __contains__(self, key: object) -> bool:
        return key in self._entries

    def get(self, key: object) -> Any:
        """The entry of ``key``, now the most recently used, or None."""
        with self._lock:
            value = self._entries.get(key)
            if value is not None:
                self._entries.move_to_end(key)
            return value

    def put(self, key: object, value: Any) -> None:
        """Keep ``value`` as the most recently used; the oldest beyond the size go."""
        with self._lock:
            self._entries[key] = value
            self._entries.move_to_end(key)
            while len(self._entries) > self._size:
                self._entries.popitem(last=False)

    def load(self, key: object, blob: bytes | bytearray | None, where: str,
             hint: str = "", fd: int = -1) -> Any:
        """The job's function: the one kept, else unpickled from ``blob`` and kept
        (a SerializationError in its place if it does not unpickle). ``fd``:
        the segment that came with the blob, closed here in any case.

        Raises:
            KeyError: the function is neither kept nor sent (a bug on one side).
        """
        fn = self.get(key)
        if fn is not None or blob is None:
            if fd >= 0:
                os.close(fd)
            if fn is not None:
                return fn
            raise KeyError(f"the function of job {key!r} was neither kept nor sent")
        # unpickled outside the lock: a large function takes a while
        fn = load_or_error(blob, "function", where, hint, fd)
        self.put(key, fn)
        return fn
