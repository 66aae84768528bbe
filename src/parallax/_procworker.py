"""The main program of a process worker (the child side of process mode).

Started as a fresh interpreter (``python -c ...``), never forked, so it owns no
copy of the parent's threads or locks. It speaks to its pool over one socket:

    parent -> worker   hello        sys.path, name, initializer, recycling limits
                       header+items one frame (job id, function if new, flags)
                                    and one frame of pickled items per chunk
                       preload      a header alone (flags None): load the function
                                    now, its chunks come later
                       STOP         the pickled poison pill
    worker -> parent   ready        the initializer ran
                       loaded       a preloaded function is loaded
                       result       values, captured exceptions, timings
                       init_failed  the initializer raised; the worker exits
                       retire       max tasks or memory reached; the worker exits

and writes its position to a shared-memory mark the parent reads when the
worker dies or overruns a timeout.
"""

from __future__ import annotations

import contextlib
import mmap
import os
import signal
import sys
from collections import OrderedDict

# Everything a worker imports adds to its start-up, paid on every cold pool:
# no typing, dataclasses, socket or cloudpickle here (cloudpickle is imported
# by pickle itself, only when a function travelled by value).
from ._errors import SerializationError
from ._serialize import dumps_plain, loads, result_error
from ._units import Chunk, ChunkResult, Failure
from ._wire import Channel
from ._worker import MARK_SIZE, STOP, Mark, mark_process_as_worker, worker_loop

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import Any

    from ._worker import Task

#: jobs whose function a worker keeps; the parent mirrors this to know when
#: it must send a function again
JOB_CACHE_SIZE = 8


def _die_with_parent() -> None:
    """On Linux, have the kernel kill this worker if the pool's thread dies."""
    if not sys.platform.startswith("linux"):
        return
    with contextlib.suppress(Exception):
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        pr_set_pdeathsig = 1
        libc.prctl(pr_set_pdeathsig, signal.SIGKILL)


def encode_failure(failure: Failure) -> tuple[bytes | None, str, str]:
    """An exception as (pickle or None, traceback text, summary)."""
    exc = failure.exception
    summary = f"{type(exc).__module__}.{type(exc).__qualname__}: {exc}"
    try:
        return dumps_plain(exc), failure.traceback, summary
    except Exception:
        return None, failure.traceback, summary


def decode_failure(blob: bytes | None, traceback_text: str, summary: str) -> Failure:
    """Rebuild a captured exception; one that does not unpickle says so."""
    if blob is not None:
        try:
            exc = loads(blob)
            if isinstance(exc, BaseException):
                return Failure(exc, traceback_text)
        except Exception:
            pass
    error = SerializationError(
        f"the worker raised {summary}, but the exception could not be pickled "
        "back to the caller (its traceback is attached as the cause)"
    )
    return Failure(error, traceback_text)


def encode_result(result: ChunkResult) -> bytes:
    values = result.values
    failures = dict(result.failures or {})
    try:
        values_blob = dumps_plain(values)
    except Exception:
        values = list(values)
        for position, value in enumerate(values):
            try:
                dumps_plain(value)
            except Exception as exc:
                values[position] = None
                failures[position] = Failure(result_error(value, exc), "")
        values_blob = dumps_plain(values)
    encoded = {position: encode_failure(failure) for position, failure in failures.items()}
    return dumps_plain(
        (
            "result",
            values_blob,
            encoded or None,
            result.started,
            result.finished,
            result.cpu,
            result.item_ends,
        )
    )


def _resident_bytes() -> int:
    try:
        with open("/proc/self/statm", "rb") as statm:
            return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        import resource

        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return peak if sys.platform == "darwin" else peak * 1024


def main() -> None:
    conn_fd, mark_fd, slot = (int(arg) for arg in sys.argv[1:4])
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the caller handles Ctrl-C
    _die_with_parent()
    conn = Channel(conn_fd)
    shared = mmap.mmap(mark_fd, 0)
    mark: Mark = memoryview(shared).cast("d")[slot * MARK_SIZE : (slot + 1) * MARK_SIZE]
    hello: dict[str, Any] = loads(conn.recv_bytes())
    sys.path[:] = hello["sys_path"]
    name: str = hello["name"]
    mark_process_as_worker()

    initializer = hello["initializer"]
    if initializer is not None:
        try:
            loads(initializer)(*loads(hello["initargs"]))
        except BaseException as exc:
            conn.send_bytes(dumps_plain(("init_failed", encode_failure(Failure.capture(exc)))))
            sys.exit(3)
    conn.send_bytes(dumps_plain(("ready",)))

    jobs: OrderedDict[int, Callable[[Any], Any] | BaseException] = OrderedDict()

    def next_task() -> Task | None:
        while True:
            header: tuple[int, bytes | None, bool | None, bool] | None = loads(conn.recv_bytes())
            if header is None:  # the poison pill
                return STOP
            job_id, function_blob, watch_time, stop_at_failure = header
            if function_blob is not None:
                jobs[job_id] = _load(function_blob, "function")
                while len(jobs) > JOB_CACHE_SIZE:
                    jobs.popitem(last=False)
            if watch_time is None:  # a preload: the function only, its chunks follow
                conn.send_bytes(dumps_plain(("loaded",)))
                continue
            items_blob = conn.recv_bytes()
            fn = jobs[job_id]
            items = _load(items_blob, "arguments") if not isinstance(fn, BaseException) else fn
            if isinstance(items, BaseException):
                # Nothing of the chunk can run: say so for the whole chunk.
                failure = encode_failure(Failure(items, ""))
                conn.send_bytes(dumps_plain(("chunk_failed", failure)))
                continue
            assert not isinstance(fn, BaseException)
            return fn, Chunk.fresh(0, 0, items), watch_time, stop_at_failure, None

    max_memory: int | None = hello["max_memory"]

    def report(result: ChunkResult, _tag: Any) -> None:
        conn.send_bytes(encode_result(result))

    def over_memory() -> bool:
        return max_memory is not None and _resident_bytes() > max_memory

    try:
        recycled = worker_loop(
            next_task,
            report,
            mark,
            name=name,
            max_tasks=hello["max_tasks"],
            should_retire=over_memory if max_memory is not None else None,
        )
        if recycled:
            conn.send_bytes(dumps_plain(("retire",)))
    except (EOFError, OSError):
        pass  # the pool is gone: nothing left to do
    finally:
        mark.release()


def _load(blob: bytes | bytearray, what: str) -> Any:
    """Unpickle ``blob``, or return the SerializationError saying what failed."""
    try:
        return loads(blob)
    except Exception as exc:
        error = SerializationError(
            f"the {what} could not be unpickled in the worker process: "
            f"{type(exc).__name__}: {exc}"
        )
        error.__cause__ = exc
        return error


if __name__ == "__main__":
    main()
