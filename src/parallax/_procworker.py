"""The main program of a process worker (the child side of process mode).

Started as a fresh interpreter (``python -c ...``, :func:`main`) or forked by
the single-threaded fork template (``_template``, :func:`run`), never forked
from the caller, so it owns no copy of the caller's threads or locks. It
speaks to its pool over one socket, in the messages of ``_protocol``: a Hello
first, answered by Ready (or InitFailed); then Task frames (each followed by
its items), Preload frames (answered by Loaded) and finally Stop; each chunk
is answered by a Result (or ChunkFailed), and a worker that reached its
limits says Retire and exits. Log frames carry records no handler of the
worker took (``_logforward``).

It writes its position to a shared-memory mark the parent reads when the
worker dies or overruns a timeout.
"""

from __future__ import annotations

import contextlib
import mmap
import os
import signal
import sys
import threading

from ._logforward import forward_from_worker
from ._mark import MARK_SIZE, Mark
from ._onimport import after_import

# Everything a worker imports adds to its start-up, paid on every cold pool:
# no typing, dataclasses, socket or cloudpickle here (cloudpickle is imported
# by pickle itself, only when a function travelled by value).
from ._protocol import (
    ChunkFailed,
    Hello,
    InitFailed,
    JobCache,
    Loaded,
    Log,
    Message,
    PickledFailure,
    Preload,
    Ready,
    Result,
    Retire,
    Stop,
    Task,
    decode,
    decode_items,
    encode,
)
from ._serialize import loads
from ._shm import take_released
from ._units import Chunk, ChunkResult, Failure
from ._wire import Channel
from ._worker import STOP, mark_process_as_worker, run_finalizer, worker_loop

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

    from ._worker import Task as WorkerTask

#: where this worker unpickles what it is sent, as its errors say
_WHERE = "in the worker process"


def _die_with_parent() -> None:
    """On Linux, have the kernel kill this worker if the pool's thread dies."""
    if not sys.platform.startswith("linux"):
        return
    with contextlib.suppress(Exception):
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        pr_set_pdeathsig = 1
        libc.prctl(pr_set_pdeathsig, signal.SIGKILL)


def _resident_bytes() -> int:
    try:
        with open("/proc/self/statm", "rb") as statm:
            return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        import resource

        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return peak if sys.platform == "darwin" else peak * 1024


def _share_authkey(authkey: bytes) -> None:
    """Use the caller's ``multiprocessing`` authkey here, so the caller's Manager
    proxies (in arguments, closures, initargs) can connect to their manager.

    ``multiprocessing`` is not imported for it (it pulls in ``socket`` and
    more, paid on every worker start): the key is set once it is imported.
    """

    def set_key(process: Any) -> None:
        process.current_process().authkey = authkey

    after_import("multiprocessing.process", set_key)


def _close(fds: list[int]) -> None:
    for fd in fds:
        if fd >= 0:
            os.close(fd)


def _decode_or_close(frame: bytearray, fd: int) -> Message:
    try:
        return decode(frame, Message)
    except BaseException:
        _close([fd])
        raise


def main() -> None:
    """A fresh worker's entry: its descriptors and slot are its arguments."""
    conn_fd, mark_fd, slot = (int(arg) for arg in sys.argv[1:4])
    _die_with_parent()
    run(conn_fd, mark_fd, slot)


def run(conn_fd: int, mark_fd: int, slot: int) -> None:
    """A worker's life, from the handshake to its finalizer: the one body of
    fresh workers (``main``) and of workers forked by the template
    (``_template``). ``conn_fd`` is its socket end, ``mark_fd`` the pool's
    marks file, ``slot`` its mark in it; both descriptors are taken over."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the caller handles Ctrl-C
    # Not handed on to programs the user's code starts (a process it forks
    # keeps them, though: the pool watches the worker's process too).
    os.set_inheritable(conn_fd, False)
    conn = Channel(conn_fd)
    shared = mmap.mmap(mark_fd, 0)
    os.close(mark_fd)  # the map holds its own
    mark: Mark = memoryview(shared).cast("d")[slot * MARK_SIZE : (slot + 1) * MARK_SIZE]
    hello = decode(conn.recv_bytes(), Hello)
    sys.path[:] = hello.sys_path
    _share_authkey(hello.authkey)
    mark_process_as_worker()
    # Log records may come from any thread of the worker while a result goes
    # out: one frame at a time.
    sending = threading.Lock()

    def send(frame: bytes, fds: tuple[int, ...] = ()) -> None:
        with sending:
            conn.send_bytes(frame, fds)

    if hello.log_level is not None:
        forward_from_worker(lambda fields: send(encode(Log(fields))), hello.log_level,
                            hello.name)

    for module in hello.preload_modules:  # (imported already when forked by a template)
        try:
            __import__(module)
        except BaseException as exc:
            send(encode(InitFailed(PickledFailure.of(Failure.capture(exc)), "preload")))
            sys.exit(3)
    if hello.initializer is not None:
        assert hello.initargs is not None  # sent together
        try:
            loads(hello.initializer)(*loads(hello.initargs))
        except BaseException as exc:
            send(encode(InitFailed(PickledFailure.of(Failure.capture(exc)))))
            sys.exit(3)
    send(encode(Ready()))

    jobs = JobCache()

    def next_task() -> WorkerTask | None:
        while True:
            frame, fds = conn.recv_frame()  # a shared-memory segment may come along
            fd = fds.pop() if fds else -1
            _close(fds)
            message = _decode_or_close(frame, fd)
            if isinstance(message, Stop):
                _close([fd])
                return STOP
            if isinstance(message, Preload):  # the function only, its chunks follow
                jobs.load(message.job_id, message.function, _WHERE, fd=fd)
                send(encode(Loaded()))
                continue
            if not isinstance(message, Task):
                _close([fd])
                raise TypeError(f"a process worker cannot take a {type(message).__name__}")
            fn = jobs.load(message.job_id, message.function, _WHERE, fd=fd)
            items_blob, item_fds = conn.recv_frame()
            item_fd = item_fds.pop() if item_fds else -1
            _close(item_fds)
            if isinstance(fn, BaseException):
                _close([item_fd])
                items = fn
            else:
                items = decode_items(items_blob, _WHERE, fd=item_fd)
            if isinstance(items, BaseException):
                # Nothing of the chunk can run: say so for the whole chunk.
                send(encode(ChunkFailed(PickledFailure.of(Failure(items, "")))))
                continue
            return fn, Chunk.fresh(0, 0, items), message.watch_time, message.stop_at_failure, None

    max_memory = hello.max_memory

    def report(result: ChunkResult, _tag: Any) -> None:
        message, segment = Result.shared(result, take_released())
        if segment is None:
            send(encode(message))
            return
        try:  # the kernel holds the memory while the descriptor is in flight
            send(encode(message), (segment.fd,))
        finally:
            segment.close()

    def over_memory() -> bool:
        return max_memory is not None and _resident_bytes() > max_memory

    try:
        recycled = worker_loop(
            next_task,
            report,
            mark,
            name=hello.name,
            max_tasks=hello.max_tasks,
            should_retire=over_memory if max_memory is not None else None,
        )
        if recycled:
            send(encode(Retire()))
    except (EOFError, OSError):
        pass  # the pool is gone: nothing left to do but the finalizer
    finally:
        mark.release()
    # After the worker said it leaves: the pool waits for the exit (and kills
    # a worker that overstays its shutdown), so a finalizer cannot hang it.
    finalizer, finalargs = hello.finalizer, hello.finalargs
    if finalizer is not None and finalargs is not None:  # sent together
        # Unpickled inside the guard too: its failure is logged like its run's.
        run_finalizer(lambda: loads(finalizer)(*loads(finalargs)), (), hello.name)


if __name__ == "__main__":
    main()
