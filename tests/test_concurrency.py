"""Many threads using parallax at once: the library's shared state holds.

parallax keeps state shared by every thread of a process: the pool registry
and its leases, the idle reaper, ``using()`` contexts, active monitors, each
run's stats recorder, the exit hook's backends, the inside-worker flag. These
tests start several threads together (a barrier) calling ``map``, ``imap``,
``Executor.submit``, ``using()`` and ``monitor()`` at once, and check that
nothing fails and no result is lost or wrong. On a free-threaded build
(python3.13t) they run with no GIL to serialize anything; run them there
several times (``-p no:randomly --count`` is not needed: each test already
repeats its rounds).
"""

from __future__ import annotations

import asyncio
import itertools
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, as_completed

import pytest

import parallax
from helpers import double
from parallax import _pools

THREADS = 8
#: seconds a stress test may take before its threads count as hung (below
#: pytest-timeout's 120 s, so a hang is reported by the test itself)
HUNG = 100.0


def together(body: Callable[[int], None], threads: int = THREADS) -> None:
    """Run ``body(i)`` on ``threads`` threads released at once; raise the first
    failure of any of them (with the others' count)."""
    start = threading.Barrier(threads)
    failures: list[tuple[int, BaseException]] = []

    def run(index: int) -> None:
        try:
            start.wait()
            body(index)
        except BaseException as exc:  # reported below, in the test's thread
            failures.append((index, exc))

    workers = [threading.Thread(target=run, args=(index,), name=f"stress-{index}")
               for index in range(threads)]
    for worker in workers:
        worker.start()
    deadline = time.monotonic() + HUNG
    for worker in workers:
        worker.join(max(0.0, deadline - time.monotonic()))
    assert not any(worker.is_alive() for worker in workers), "stress threads hung"
    if failures:
        index, first = failures[0]
        raise AssertionError(f"{len(failures)} of {threads} threads failed; "
                             f"thread {index}: {first!r}") from first


async def adouble(x: int) -> int:
    await asyncio.sleep(0)
    return x * 2


def triple(x: int) -> int:
    return x * 3


#: (mode, function) pairs the threads take turns at: every in-process engine,
#: auto (which probes in the calling thread), and process now and then
TURNS: tuple[tuple[str, Callable[..., object]], ...] = (
    ("thread", triple),
    ("serial", triple),
    ("free-threaded", triple),
    ("asyncio", adouble),
    ("auto", triple),
    ("thread", triple),
    ("process", double),
)


def expected(fn: Callable[..., object], data: range) -> list[int]:
    factor = 3 if fn is triple else 2
    return [x * factor for x in data]


def test_map_and_imap_of_every_mode_at_once() -> None:
    def body(index: int) -> None:
        for round_ in range(6):
            mode, fn = TURNS[(index + round_) % len(TURNS)]
            data = range(index * 1000, index * 1000 + 200 + round_)
            assert parallax.map(fn, data, mode=mode) == expected(fn, data), mode
            # imap read in full, unordered, and left early (its run is cancelled)
            assert list(parallax.imap(fn, data, mode=mode, chunksize=7)) == expected(fn, data)
            unordered = parallax.imap(fn, data, mode=mode, ordered=False, chunksize=5)
            assert sorted(unordered) == expected(fn, data)  # type: ignore[type-var]
            partial = parallax.imap(fn, data, mode=mode, chunksize=3)
            assert list(itertools.islice(partial, 10)) == expected(fn, data)[:10]
            partial.close()  # type: ignore[attr-defined]

    together(body)


@pytest.mark.parametrize("mode", ["thread", "free-threaded", "asyncio"])
def test_one_executor_many_submitting_threads(mode: str) -> None:
    fn = adouble if mode == "asyncio" else double
    with parallax.Executor(mode, workers=3) as executor:

        def body(index: int) -> None:
            data = range(index * 100, index * 100 + 60)
            futures = [executor.submit(fn, x) for x in data]
            assert [future.result(timeout=HUNG) for future in futures] == [x * 2 for x in data]
            assert list(executor.map(fn, data)) == [x * 2 for x in data]

        together(body)


def test_executors_created_used_and_shut_down_at_once() -> None:
    modes = ("thread", "free-threaded", "asyncio", "serial")

    def body(index: int) -> None:
        for round_ in range(4):
            mode = modes[(index + round_) % len(modes)]
            fn = adouble if mode == "asyncio" else double
            executor = parallax.Executor(mode, workers=2, max_tasks_per_worker=3)
            futures = [executor.submit(fn, x) for x in range(20)]
            if round_ % 2:
                executor.shutdown(wait=True)
                assert [future.result(timeout=0) for future in futures] == [
                    x * 2 for x in range(20)
                ]
            else:
                executor.shutdown(wait=True, cancel_futures=True)
                # cancelled or done, never left pending; what ran is right
                for x, future in enumerate(futures):
                    assert future.done()
                    if not future.cancelled():
                        assert future.result(timeout=0) == x * 2

    together(body)


def test_using_contexts_stay_in_their_own_thread() -> None:
    def body(index: int) -> None:
        forced = ("serial", "thread")[index % 2]
        for round_ in range(10):
            data = range(50 + index)
            with parallax.monitor() as monitor:
                with parallax.using(forced):
                    assert parallax.map(triple, data, mode="process") == expected(triple, data)
                # outside the block the thread's own choice holds again
                assert parallax.map(triple, data, mode="thread") == expected(triple, data)
            mine = [run for run in monitor.runs if run.tasks == len(data)]
            forced_runs = [run for run in mine if "forced by parallax.using()" in run.reason]
            assert forced_runs and all(run.mode in ("serial", "thread") for run in forced_runs)
            # every forced run of this size is this thread's (sizes differ by thread)
            assert {run.mode for run in forced_runs} == {forced}, round_

    together(body)


def test_every_monitor_sees_every_run_of_its_block() -> None:
    def body(index: int) -> None:
        for round_ in range(5):
            sizes = [10_000 + index * 100 + round_ * 10 + n for n in range(3)]
            with parallax.monitor() as outer:
                with parallax.monitor() as inner:
                    for size in sizes[:2]:
                        parallax.map(triple, range(size), mode="thread")
                parallax.map(triple, range(sizes[2]), mode="serial")
            inner_sizes = {run.tasks for run in inner.runs}
            outer_sizes = {run.tasks for run in outer.runs}
            assert set(sizes[:2]) <= inner_sizes and sizes[2] not in inner_sizes
            assert set(sizes) <= outer_sizes

    together(body)


def test_pools_reaped_while_threads_lease_them(monkeypatch: pytest.MonkeyPatch) -> None:
    """The idle reaper shuts pools down between calls, over and over, while
    other threads lease them and submit one-off calls that hold no lease."""
    monkeypatch.setenv("PARALLAX_IDLE_TIMEOUT", "0.001")
    stop = threading.Event()
    reaped = 0

    def reap() -> None:
        nonlocal reaped
        while not stop.is_set():
            reaped += _pools.reap_idle()
            time.sleep(0.002)

    reaper = threading.Thread(target=reap, name="stress-reaper")
    reaper.start()
    try:
        submit = parallax.parallel(mode="thread", workers=2)(triple).submit

        def body(index: int) -> None:
            for round_ in range(8):
                data = range(round_ * 10, round_ * 10 + 40)
                mode = ("thread", "free-threaded", "asyncio")[(index + round_) % 3]
                fn = adouble if mode == "asyncio" else triple
                assert parallax.map(fn, data, mode=mode, workers=2) == expected(fn, data)
                futures: list[Future[int]] = [submit(x) for x in range(5)]
                done = as_completed(futures, timeout=HUNG)
                assert sorted(future.result() for future in done) == [0, 3, 6, 9, 12]

        together(body)
    finally:
        stop.set()
        reaper.join()
    assert reaped  # the reaper did reap, while the threads worked


def test_process_pool_leased_by_many_threads() -> None:
    def body(index: int) -> None:
        for round_ in range(2):
            data = range(index * 50, index * 50 + 30 + round_)
            assert parallax.map(double, data, mode="process", workers=2) == [
                x * 2 for x in data
            ]

    together(body, threads=4)
    assert len([key for key in _pools._pools if key[0] == "process"]) == 1  # one shared pool
