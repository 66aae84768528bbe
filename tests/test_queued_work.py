"""Queued work is never lost: at exit, through recycled workers, at shutdown.

``concurrent.futures`` runs every submitted work item before the interpreter
exits, and ``shutdown(cancel_futures=True)`` cancels only the futures no
worker has taken. The thread, free-threaded and asyncio backends do the same.
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
import textwrap
import threading
import time
from concurrent.futures import CancelledError, Future, wait

import pytest

from conftest import Backend

#: the engines that run on threads of this process (process and dask have tests of their own)
THREADED = ("thread", "free-threaded", "asyncio")


@pytest.fixture
def threaded(backend: Backend) -> Backend:
    if backend.mode not in THREADED:
        pytest.skip(f"{backend.mode} mode: covered by its own backend's tests")
    return backend


EXIT_SCRIPT = textwrap.dedent(
    """
    import asyncio, os, sys, time, warnings
    import parallax

    warnings.simplefilter("ignore")  # free-threaded mode on a GIL build warns
    mode, how = sys.argv[1], sys.argv[2]

    def task(x):
        time.sleep(0.05)
        os.write(1, f"ran {x}\\n".encode())  # one write: lines of threads do not mix
        return x

    async def atask(x):
        await asyncio.sleep(0.05)
        os.write(1, f"ran {x}\\n".encode())
        return x

    fn = atask if mode == "asyncio" else task
    if how == "executor":  # an executor of its own, never shut down
        executor = parallax.Executor(mode, workers=2)
        for x in range(8):
            executor.submit(fn, x)
    else:  # a shared pool, through @parallel's submit
        parallel_fn = parallax.parallel(mode=mode, workers=2)(fn)
        for x in range(8):
            parallel_fn.submit(x)
    os.write(1, b"main thread done\\n")
    """
)


@pytest.mark.parametrize("how", ["executor", "shared-pool"])
def test_queued_work_runs_before_the_interpreter_exits(threaded: Backend, how: str) -> None:
    done = subprocess.run(
        [sys.executable, "-c", EXIT_SCRIPT, threaded.mode, how],
        capture_output=True, text=True, timeout=60, check=False,
    )
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert "main thread done" in lines  # it ended before the work did
    ran = sorted(int(line.split()[1]) for line in lines if line.startswith("ran "))
    assert ran == list(range(8)), done.stdout


def test_recycled_workers_are_replaced_while_work_is_queued(threaded: Backend) -> None:
    executor = threaded.executor(workers=2, max_tasks_per_worker=2)
    futures = [executor.submit(threaded.fn(time.sleep), 0.02) for _ in range(6)]
    executor.shutdown(wait=True)
    # shutdown(wait=True) returned: every future is settled, none pending
    assert [future.done() for future in futures] == [True] * 6
    assert [future.result(timeout=0) for future in futures] == [None] * 6


def test_recycling_replaces_workers_without_a_shutdown(threaded: Backend) -> None:
    with threaded.executor(workers=2, max_tasks_per_worker=1) as executor:
        futures = [executor.submit(threaded.fn(time.sleep), 0.01) for _ in range(10)]
        finished, pending = wait(futures, timeout=60)
        assert not pending and all(future.exception() is None for future in finished)


def test_cancel_futures_cancels_only_what_no_worker_has_taken(threaded: Backend) -> None:
    running = threading.Semaphore(0)
    release = threading.Event()

    def block(x: int) -> int:
        running.release()
        release.wait(30)
        return x

    if threaded.coroutines:

        async def call(x: int) -> int:
            running.release()
            while not release.is_set():  # the loop must not block on the event
                await asyncio.sleep(0.005)
            return x
    else:
        call = block  # type: ignore[assignment]

    executor = threaded.executor(workers=2)
    futures: list[Future[int]] = [executor.submit(call, x) for x in range(6)]
    for _ in range(2):
        assert running.acquire(timeout=30)  # two have been taken and run
    executor.shutdown(wait=False, cancel_futures=True)
    release.set()
    executor.shutdown(wait=True)
    assert [future.result(timeout=10) for future in futures[:2]] == [0, 1]
    assert all(future.cancelled() for future in futures[2:])


def test_cancel_pending_without_cancelled_jobs_says_why_they_never_ran(
    threaded: Backend,
) -> None:
    """A chunk dropped at shutdown whose owner did not cancel it first is
    delivered as cancelled: its future does not wait forever."""
    from parallax._calls import BoundCall
    from parallax._launch import start_future
    from parallax._pools import new_backend
    from parallax.backends import WorkerSetup

    backend = new_backend(threaded.mode, workers=1, setup=WorkerSetup(), options={})
    release = threading.Event()
    started = threading.Event()

    def block() -> int:
        started.set()
        release.wait(30)
        return 1

    async def ablock() -> int:
        started.set()
        while not release.is_set():
            await asyncio.sleep(0.005)
        return 1

    first: Future[int] = Future()
    start_future(backend, BoundCall(ablock if threaded.coroutines else block), None, first)
    assert started.wait(30)
    queued: list[Future[int]] = [Future() for _ in range(3)]
    for future in queued:
        start_future(backend, BoundCall(ablock if threaded.coroutines else block), None, future)
    backend.shutdown(wait=False, cancel_pending=True)
    release.set()
    backend.shutdown(wait=True)
    assert first.result(timeout=10) == 1
    for future in queued:
        with pytest.raises(CancelledError, match="shut down before it ran"):
            future.result(timeout=10)
