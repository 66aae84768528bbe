"""Executor: a concurrent.futures.Executor over every backend."""

from __future__ import annotations

import concurrent.futures
import threading
import time

import pytest

import parallax
from conftest import Backend, child_pids, wait_until
from helpers import Boom, add, double, fail_on


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
