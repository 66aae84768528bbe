"""Executor: a concurrent.futures.Executor over every backend."""

from __future__ import annotations

import concurrent.futures
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest

import parallax
from conftest import Backend, child_pids, wait_until
from helpers import Boom, add, double, fail_on, nap


def test_is_a_concurrent_futures_executor(backend: Backend) -> None:
    with backend.executor() as executor:
        assert isinstance(executor, concurrent.futures.Executor)
        assert executor.mode == backend.mode


def test_submit_returns_a_future(backend: Backend) -> None:
    with backend.executor(workers=2) as executor:
        futures = [executor.submit(backend.fn(add), x, 10) for x in range(20)]
        assert isinstance(futures[0], concurrent.futures.Future)
        done = concurrent.futures.as_completed(futures, timeout=60)
        assert sorted(future.result() for future in done) == [x + 10 for x in range(20)]


def test_submit_exception_lands_on_the_future(backend: Backend) -> None:
    with backend.executor() as executor:
        future = executor.submit(backend.fn(fail_on({1})), 1)
        with pytest.raises(Boom):
            future.result(timeout=60)
        assert isinstance(future.exception().__cause__, parallax.WorkerTraceback)


def test_map_has_stdlib_semantics(backend: Backend) -> None:
    with backend.executor(workers=2) as executor:
        assert list(executor.map(backend.fn(double), range(100))) == [x * 2 for x in range(100)]
        assert list(executor.map(backend.fn(add), range(5), range(5, 10))) == [5, 7, 9, 11, 13]
        results = executor.map(backend.fn(fail_on({3})), range(10))
        assert [next(results) for _ in range(3)] == [0, 2, 4]
        with pytest.raises(Boom):
            next(results)


def test_map_timeout_bounds_the_whole_iteration() -> None:
    with parallax.Executor("thread", workers=1) as executor:
        results = executor.map(time.sleep, [0.5] * 4, timeout=0.2)
        with pytest.raises(TimeoutError):
            list(results)


def test_imap_unordered_and_starmap(backend: Backend) -> None:
    with backend.executor(workers=2) as executor:
        unordered = executor.imap(backend.fn(double), range(300), ordered=False, chunksize=3)
        assert sorted(unordered) == [x * 2 for x in range(300)]
        assert executor.starmap(backend.fn(add), [(1, 2), (3, 4)]) == [3, 7]


def test_use_after_shutdown_is_a_runtime_error(backend: Backend) -> None:
    executor = backend.executor()
    executor.shutdown()
    executor.shutdown()  # idempotent
    with pytest.raises(RuntimeError, match="after shutdown"):
        executor.submit(backend.fn(double), 1)
    with pytest.raises(RuntimeError, match="after shutdown"):
        list(executor.imap(backend.fn(double), [1]))


def test_shutdown_cancel_futures_drops_what_has_not_started() -> None:
    executor = parallax.Executor("thread", workers=1)
    started = threading.Event()
    release = threading.Event()

    def block(_: int) -> None:
        started.set()
        release.wait(10)

    first = executor.submit(block, 0)
    assert started.wait(10)
    queued = [executor.submit(double, x) for x in range(10)]
    executor.shutdown(wait=False, cancel_futures=True)
    release.set()
    first.result(timeout=10)
    assert all(future.cancelled() for future in queued)
    executor.shutdown(wait=True)


def test_shutdown_cancel_futures_lets_calls_already_taken_finish(backend: Backend) -> None:
    # The stdlib's meaning: only calls no worker has taken are cancelled; the
    # others finish (never a CancelledError raised from a running call).
    executor = backend.executor(workers=1)
    first = executor.submit(backend.fn(nap), 0.3)
    assert wait_until(lambda: first.running() or first.done(), 30)
    rest = [executor.submit(backend.fn(double), x) for x in range(6)]
    executor.shutdown(wait=True, cancel_futures=True)
    assert first.result(timeout=0) == 0.3
    for x, future in enumerate(rest):
        assert future.cancelled() or future.result(timeout=0) == x * 2


@pytest.mark.parametrize("method", ["terminate_workers", "kill_workers"])
def test_terminate_and_kill_workers_stop_everything_now(backend: Backend, method: str) -> None:
    executor = backend.executor(workers=1)
    # a process is stopped mid-call; threads and dask tasks cannot be, so keep it short
    running = executor.submit(backend.fn(nap), 60 if backend.processes else 0.5)
    assert wait_until(lambda: running.running() or running.done(), 30)
    queued = [executor.submit(backend.fn(double), x) for x in range(3)]
    getattr(executor, method)()
    # every call settles now: cancelled if it had not started, else failed
    _done, not_done = concurrent.futures.wait([running, *queued], timeout=30)
    assert not not_done
    for x, future in enumerate(queued):
        assert (future.cancelled()
                or isinstance(future.exception(timeout=0), parallax.WorkerCrashedError)
                or future.result(timeout=0) == x * 2)
    if backend.mode != "serial":  # (serial ran it in submit)
        error = running.exception(timeout=0)
        assert isinstance(error, parallax.WorkerCrashedError), error
        assert isinstance(error, concurrent.futures.BrokenExecutor)
        if backend.processes:
            signal = "SIGKILL" if method == "kill_workers" else "SIGTERM"
            assert method in str(error) and signal in str(error)
    with pytest.raises(RuntimeError, match="cannot schedule new futures after shutdown"):
        executor.submit(backend.fn(double), 1)
    executor.shutdown(wait=True)


def test_shutdown_wait_drains_queued_work(backend: Backend) -> None:
    executor = backend.executor(workers=2)
    futures = [executor.submit(backend.fn(double), x) for x in range(30)]
    executor.shutdown(wait=True)
    assert [future.result(timeout=0) for future in futures] == [x * 2 for x in range(30)]


def _workers_used(**options: object) -> set[int]:
    """The worker processes one process-mode call ran its items on."""
    return {pid for pid, _ in parallax.map(_pid_and_name, range(20), mode="process", **options)}


# Which of a pool's workers a call's chunks land on is up to the scheduler (a
# worker that boots first can take them all), so two calls on one pool may
# use different workers: the tests below compare each call with the pool's
# workers, which all start with the pool, not with the other call.


def test_process_pool_is_reused_across_calls() -> None:
    before = child_pids()
    first = _workers_used()
    pool = child_pids() - before  # every worker of the pool, started with it
    second = _workers_used()
    assert first and first <= pool
    assert second and second <= pool
    assert child_pids() - before == pool  # no worker was started or replaced


def _pid_and_name(_: int) -> tuple[int, str]:
    import os

    return os.getpid(), ""


def test_executor_stats_cover_its_runs(backend: Backend) -> None:
    with backend.executor(workers=2) as executor:
        list(executor.imap(backend.fn(double), range(100)))
        list(executor.imap(backend.fn(fail_on({1})), range(10), errors="skip"))
        stats = executor.stats
    assert stats.mode == backend.mode
    assert stats.tasks == 110
    assert stats.failed == 1
    assert len(stats.task_records) == 110


def test_repr_shows_mode_and_state() -> None:
    executor = parallax.Executor("serial")
    assert "serial" in repr(executor) and "running" in repr(executor)
    executor.shutdown()
    assert "closed" in repr(executor)


def test_idle_pools_are_shut_down(monkeypatch: pytest.MonkeyPatch) -> None:
    from parallax import _pools

    first = {pid for pid, _ in parallax.map(_pid_and_name, range(4), mode="process")}
    monkeypatch.setenv("PARALLAX_IDLE_TIMEOUT", "3600")
    assert _pools.reap_idle() == 0  # recently used: kept warm
    monkeypatch.setenv("PARALLAX_IDLE_TIMEOUT", "0.01")
    time.sleep(0.05)
    _pools.reap_idle()  # the background reaper may have been first: either way
    assert wait_until(lambda: not first & child_pids())  # its workers are gone
    second = {pid for pid, _ in parallax.map(_pid_and_name, range(4), mode="process")}
    assert second and not first & second  # a fresh pool


def test_shutdown_after_a_cancelled_run_does_not_hang(backend: Backend) -> None:
    executor = backend.executor(workers=1)
    results = executor.imap(backend.fn(lambda x: time.sleep(0.2) or x), range(10), chunksize=1)
    assert next(results) == 0
    results.close()  # type: ignore[attr-defined]  # queued chunks of the run are cancelled
    started = time.monotonic()
    executor.shutdown(wait=True)
    assert time.monotonic() - started < 5


def test_default_worker_count_and_explicit_default_share_a_pool() -> None:
    before = child_pids()
    first = _workers_used()
    pool = child_pids() - before
    second = _workers_used(workers=parallax.backends.usable_cpus())
    assert first and first <= pool
    assert second and second <= pool
    assert child_pids() - before == pool  # the explicit count started no pool of its own


def test_map_that_raises_ends_its_run_at_once() -> None:
    with parallax.Executor("thread", workers=2) as executor, parallax.monitor() as monitor:
        with pytest.raises(Boom):
            list(executor.map(fail_on({3}), range(10)))
        assert len(monitor.runs) == 1  # published now, not at garbage collection


# -- issues #12 and #13: the facade's holes ------------------------------------------------

AFTER_EXIT_SCRIPT = r"""
import atexit
import parallax

def late(print=print, RuntimeError=RuntimeError):
    for submit, args in ((executor.submit, (abs, -1)), (decorated.submit, (-1,))):
        try:
            print("late", submit(*args).result(timeout=10), flush=True)
        except RuntimeError as exc:
            print("late RuntimeError:", exc, flush=True)

atexit.register(late)  # before parallax's exit hook: runs after it
executor = parallax.Executor("thread", workers=1)
decorated = parallax.parallel(mode="thread")(abs)
assert executor.submit(abs, -2).result() == 2
"""


def test_submit_after_the_exit_time_shutdown_says_so_like_the_stdlib() -> None:
    import subprocess
    import sys

    done = subprocess.run([sys.executable, "-c", AFTER_EXIT_SCRIPT], capture_output=True,
                          text=True, timeout=60, check=False)
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == [
        "late RuntimeError: cannot schedule new futures after shutdown",
        "late 1",  # a function's own .submit runs serially at exit
    ], done.stdout + done.stderr


class Dummy:
    """A result object the test can watch with a weak reference."""

    def __init__(self, value: int) -> None:
        self.value = value

    def method(self) -> int:
        return self.value


def make_dummy(value: int) -> Dummy:
    return Dummy(value)


def test_map_buffersize_is_checked_like_the_stdlib() -> None:
    with parallax.Executor("serial") as executor:
        for bad in ("2", 2.0, True):
            with pytest.raises(TypeError, match="buffersize must be a positive integer or None"):
                executor.map(double, [1], buffersize=bad)  # type: ignore[arg-type]
        for bad in (0, -1):
            with pytest.raises(ValueError, match="buffersize must be a positive integer or None"):
                executor.map(double, [1], buffersize=bad)


def test_map_buffersize_bounds_what_is_read_ahead_of_the_consumer(backend: Backend) -> None:
    import itertools

    read: list[int] = []

    def endless() -> Iterator[int]:
        for number in itertools.count():
            read.append(number)
            yield number

    with backend.executor(workers=2) as executor:
        results = executor.map(backend.fn(double), endless(), buffersize=3, chunksize=10)
        for taken in range(1, 30):
            assert next(results) == 2 * (taken - 1)
            assert len(read) <= taken + 3
        results.close()  # type: ignore[attr-defined]


def test_map_buffersize_reads_no_further_after_shutdown(backend: Backend) -> None:
    # The standard library's test_map_buffersize_when_buffer_is_full.
    numbers = iter(range(4))
    executor = backend.executor()
    results = executor.map(backend.fn(str), numbers, buffersize=2)
    executor.shutdown(wait=True)
    assert next(numbers) == 2
    del results


def test_a_map_started_before_shutdown_delivers_every_result(backend: Backend) -> None:
    executor = backend.executor(workers=2)
    results = executor.map(backend.fn(double), range(300), chunksize=1)
    lazy = executor.imap(backend.fn(double), range(300), chunksize=2)
    executor.shutdown(wait=True)
    assert list(results) == [x * 2 for x in range(300)]
    assert list(lazy) == [x * 2 for x in range(300)]
    with pytest.raises(RuntimeError, match="cannot schedule new futures after shutdown"):
        executor.map(backend.fn(double), [1])


def test_shutdown_without_waiting_lets_an_open_map_finish(backend: Backend) -> None:
    executor = backend.executor(workers=2)
    results = executor.map(backend.fn(double), range(200), chunksize=1)
    executor.shutdown(wait=False)
    assert list(results) == [x * 2 for x in range(200)]


def test_an_unconsumed_map_after_shutdown_lets_the_workers_go(backend: Backend) -> None:
    before = child_pids()
    executor = backend.executor(workers=2)
    results = executor.map(backend.fn(double), range(300), chunksize=1)
    executor.shutdown(wait=True)
    del results  # dropped unconsumed: the workers stop (the leak check sees them go)
    assert wait_until(lambda: not (child_pids() - before))


def test_the_map_iterator_keeps_no_result_it_yielded(backend: Backend) -> None:
    # The standard library's test_free_reference (bpo-14406).
    import gc
    import weakref

    with backend.executor(workers=2) as executor:
        for obj in executor.map(backend.fn(make_dummy), range(10), chunksize=5):
            ref = weakref.ref(obj)
            del obj
            gc.collect()
            assert wait_until(lambda ref=ref: ref() is None), "a yielded result is kept alive"


def test_a_submitted_callable_is_let_go_once_its_task_finished(backend: Backend) -> None:
    # The standard library's test_no_stale_references (bpo-16284).
    import gc
    import weakref

    if backend.coroutines:
        pytest.skip("asyncio mode runs coroutine functions; a bound method is none")
    with backend.executor(workers=1) as executor:
        dummy = Dummy(3)
        collected = threading.Event()
        ref = weakref.ref(dummy, lambda _: collected.set())
        assert executor.submit(dummy.method).result(timeout=60) == 3
        del dummy
        gc.collect()
        assert wait_until(collected.is_set), "the submitted callable is still referenced"
        assert ref() is None


def test_submit_names_the_argument_that_does_not_pickle() -> None:
    lock = threading.Lock()
    with parallax.Executor("process", workers=1) as executor:
        with pytest.raises(parallax.SerializationError,
                           match=r"argument 1 \(.*lock.*\) of the call to add cannot be pickled"):
            executor.submit(add, 1, lock)
        with pytest.raises(parallax.SerializationError, match="keyword argument 'y'"):
            executor.submit(add, 1, y=lock)
        with pytest.raises(parallax.SerializationError,
                           match=r"the function .*<lambda> cannot be pickled"):
            executor.submit(lambda: lock)
    decorated = parallax.parallel(mode="process")(add)
    with pytest.raises(parallax.SerializationError, match=r"argument 0 \("):
        decorated.submit(lock, 1)


def test_submit_survives_recycled_workers() -> None:
    # A chunk handed to a worker about to retire goes to another one: its
    # future is claimed twice and must still settle once.
    with parallax.Executor("process", workers=1, max_tasks_per_worker=1) as executor:
        futures = [executor.submit(double, number) for number in range(8)]
        assert [future.result(timeout=60) for future in futures] == [n * 2 for n in range(8)]


# -- issue #12: the last gaps of the concurrent.futures conformance -----------------------


def test_an_executor_dropped_without_shutdown_stops_its_workers(backend: Backend) -> None:
    # The standard library's test_del_shutdown: the work submitted before the
    # drop finishes, the future kept and the open map still deliver, then the
    # workers go. Nothing it handed out keeps the executor itself alive.
    import gc
    import weakref

    from conftest import parallax_threads

    before = child_pids()
    executor = backend.executor(workers=2)
    future = executor.submit(backend.fn(double), 21)
    results = executor.map(backend.fn(double), range(20))
    dropped = weakref.ref(executor)
    del executor
    assert dropped() is None  # no reference cycle: collected at once, not at the next gc
    gc.collect()
    assert future.result(timeout=60) == 42
    assert list(results) == [x * 2 for x in range(20)]
    del results
    assert wait_until(lambda: not parallax_threads() and not (child_pids() - before), 30)


def test_an_executor_dropped_by_its_own_worker_shuts_down() -> None:
    # The finalizer may run in any thread: here in one of the pool's own, as
    # the task drops the last reference to its executor.
    from conftest import parallax_threads

    holder = [parallax.Executor("thread", workers=1)]
    future = holder[0].submit(holder.clear)
    assert future.result(timeout=30) is None
    assert not holder
    assert wait_until(lambda: not parallax_threads(), 30)


def test_map_reads_its_input_and_submits_every_call_at_once() -> None:
    # The standard library's test_map_submits_without_iteration, made certain:
    # the first call blocks until the iterator was dropped, never started.
    import gc

    read: list[int] = []
    finished: list[int] = []
    release = threading.Event()

    def source() -> Iterator[int]:
        for number in range(10):
            read.append(number)
            yield number

    def record(number: int) -> None:
        if number == 0:
            release.wait(10)
        finished.append(number)

    executor = parallax.Executor("thread", workers=2)
    executor.map(record, source())
    assert read == list(range(10))  # read at the call, as the stdlib's map does
    gc.collect()
    release.set()
    executor.shutdown(wait=True)
    assert sorted(finished) == list(range(10))


def test_map_after_shutdown_raises_before_reading_its_input() -> None:
    read: list[int] = []

    def source() -> Iterator[int]:
        read.append(0)
        yield 0

    executor = parallax.Executor("thread", workers=1)
    executor.shutdown()
    with pytest.raises(RuntimeError, match="cannot schedule new futures after shutdown"):
        executor.map(double, source())
    assert read == []


def test_closing_a_started_map_cancels_the_calls_not_yet_running() -> None:
    # The stdlib's result iterator cancels its remaining futures when it is closed.
    ran: list[int] = []
    release = threading.Event()

    def record(number: int) -> int:
        ran.append(number)
        if number == 1:
            release.wait(10)
        return number

    with parallax.Executor("thread", workers=1) as executor:
        results = executor.map(record, range(10), chunksize=1)
        assert next(results) == 0
        assert wait_until(lambda: len(ran) == 2)  # the second call is running
        results.close()  # type: ignore[attr-defined]
        release.set()
    assert ran == [0, 1]


def test_map_auto_chunks_are_cut_for_the_whole_input_at_once() -> None:
    # Nothing is measured before every chunk is submitted: about four per worker.
    with parallax.Executor("thread", workers=2) as executor:
        assert list(executor.map(double, range(80))) == [x * 2 for x in range(80)]
        assert executor.stats.chunksize == 10
        assert list(executor.map(double, [])) == []


def test_a_cancelling_shutdown_of_a_cold_process_pool_runs_the_oldest_calls() -> None:
    # As ProcessPoolExecutor's call queue: workers + 1 queued calls run even
    # when no worker has booted yet (CPython's test_cancel_futures).
    executor = parallax.Executor("process", workers=2)
    futures = [executor.submit(double, number) for number in range(20)]
    executor.shutdown(wait=True, cancel_futures=True)
    assert not any(future.cancelled() for future in futures[:3])
    for number, future in enumerate(futures):
        assert future.cancelled() or future.result(timeout=0) == number * 2
    assert any(future.cancelled() for future in futures)


class CollectedElsewhere:
    """Touches ``path`` when a copy of it is collected in another process."""

    def __init__(self, path: str) -> None:
        import os

        self.path = path
        self.maker = os.getpid()

    def __del__(self) -> None:
        import os

        if os.getpid() != self.maker:
            with open(self.path, "w"):
                pass


def test_a_process_worker_lets_go_of_a_calls_arguments_once_it_ran(tmp_path: Any) -> None:
    # The standard library's test_ressources_gced_in_workers: not kept until
    # the worker's next task, nor in its cache of recent functions.
    marker = tmp_path / "collected"
    with parallax.Executor("process", workers=1) as executor:
        assert executor.submit(id, CollectedElsewhere(str(marker))).result(timeout=60)
        assert wait_until(marker.exists, 30)
