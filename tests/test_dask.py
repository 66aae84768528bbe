"""Dask mode on a real ``distributed`` cluster (processes, loopback, 2 workers).

The session's ``LocalCluster`` (``dask_cluster`` in conftest.py, which the
generic suite's dask runs use too) serves most tests through ``address=``;
the tests that kill workers get a cluster of their own, closed before the
leftover check runs (a nanny restarts a killed worker as a new process).
Skipped as a whole when ``distributed`` is not installed.
"""

from __future__ import annotations

import concurrent.futures
import importlib
import itertools
import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

distributed = pytest.importorskip("distributed")
import dask  # noqa: E402  (after the skip: only there when distributed is)

import parallax  # noqa: E402
from conftest import start_dask_cluster, wait_until  # noqa: E402
from faults import FailOnce, Faulty, failing_initializer, record_pid  # noqa: E402
from helpers import Boom, add, double, fail_on, nap, where  # noqa: E402
from parallax import _pools  # noqa: E402
from parallax._units import Job  # noqa: E402
from parallax.backends._dask import DaskBackend  # noqa: E402

pytestmark = pytest.mark.dask


@pytest.fixture(scope="module", autouse=True)
def cluster(dask_cluster: Any) -> Any:
    """The session's cluster (shared with the generic suite's dask runs), up
    before any test of this module starts."""
    return dask_cluster


@pytest.fixture
def address(cluster: Any) -> str:
    return str(cluster.scheduler_address)


@pytest.fixture
def fresh_cluster() -> Iterator[str]:
    """A cluster of its own, for tests that kill its workers (with the session
    cluster's settings, which hold while it runs)."""
    local = start_dask_cluster()
    try:
        yield str(local.scheduler_address)
    finally:
        _pools.shutdown_pools(wait=True)
        local.close()


def dmap(fn: Any, data: Any, address: str, **kw: Any) -> list[Any]:
    return parallax.map(fn, data, mode="dask", address=address, **kw)


# -- worker-side functions (the workers import this module by name) -----------------------


class Sleepy:
    """``fn(x) = x``, except that item ``slow`` sleeps ``seconds`` first."""

    def __init__(self, slow: int, seconds: float) -> None:
        self.slow = slow
        self.seconds = seconds

    def __call__(self, x: int) -> int:
        if x == self.slow:
            time.sleep(self.seconds)
        return x


def fail_first_else_nap(x: int) -> int:
    if x == 0:
        raise Boom("first")
    time.sleep(0.05)
    return x


def lock_for(x: int) -> Any:
    return threading.Lock() if x == 3 else x


def nested_map(x: int) -> list[int]:
    # Inside a worker, dask mode (like process mode) degrades to serial.
    return parallax.map(double, range(x), mode="dask")


def pid_of(_: Any) -> int:
    return os.getpid()


# -- results equal the list comprehension --------------------------------------------------


@pytest.mark.parametrize("size", [0, 1, 5_000])
def test_map_equals_list_comprehension(address: str, size: int) -> None:
    data = list(range(size))
    assert dmap(double, data, address) == [double(x) for x in data]


@pytest.mark.parametrize("chunksize", [1, 7, 250, 5_000])
def test_explicit_chunk_sizes(address: str, chunksize: int) -> None:
    data = range(1_000)
    assert dmap(double, data, address, chunksize=chunksize) == [x * 2 for x in data]


def test_unordered_returns_every_result_once(address: str) -> None:
    results = dmap(double, range(3_000), address, ordered=False, chunksize=11)
    assert sorted(results) == [x * 2 for x in range(3_000)]


def test_generator_input(address: str) -> None:
    assert dmap(double, (x for x in range(2_000)), address) == [x * 2 for x in range(2_000)]


def test_starmap_and_closures(address: str) -> None:
    pairs = [(x, x + 1) for x in range(300)]
    assert parallax.starmap(add, pairs, mode="dask", address=address) == [
        add(*pair) for pair in pairs
    ]
    offset = 17
    assert dmap(lambda x: x + offset, range(100), address) == [x + 17 for x in range(100)]


def test_imap_is_lazy_and_ordered(address: str) -> None:
    iterator = parallax.imap(double, range(300), mode="dask", address=address, chunksize=5)
    assert next(iterator) == 0
    assert list(iterator) == [x * 2 for x in range(1, 300)]


def test_imap_over_an_endless_generator_keeps_bounded_work(address: str) -> None:
    consumed = itertools.count()

    def endless() -> Iterator[int]:
        yield from consumed

    iterator = parallax.imap(double, endless(), mode="dask", address=address, chunksize=100)
    taken = []
    for value in iterator:
        taken.append(value)
        if len(taken) == 1_000:
            break
    iterator.close()  # type: ignore[attr-defined]
    assert taken == [x * 2 for x in range(1_000)]
    # 2 workers x (2 + prefetch 1) chunks of 100 in play, so the input is
    # read at most a few hundred items past what was taken.
    assert next(consumed) <= 1_000 + 2 * 3 * 100 + 100


# -- errors -----------------------------------------------------------------------------------


def test_user_exception_keeps_its_type_and_names_the_item(address: str) -> None:
    with pytest.raises(Boom, match="bad item 37") as caught:
        dmap(fail_on({37}), range(200), address)
    notes = getattr(caught.value, "__notes__", [])
    assert any("item 37" in note and "tcp://127.0.0.1" in note for note in notes)
    assert "Traceback" in str(caught.value.__cause__)  # the worker's traceback


def test_errors_return_places_the_exception(address: str) -> None:
    results = dmap(fail_on({3, 50}), range(60), address, errors="return", chunksize=8)
    assert isinstance(results[3], Boom)
    assert isinstance(results[50], Boom)
    assert [r for i, r in enumerate(results) if i not in (3, 50)] == [
        x * 2 for x in range(60) if x not in (3, 50)
    ]


def test_errors_skip_leaves_failed_items_out(address: str) -> None:
    assert dmap(fail_on({1, 2}), range(6), address, errors="skip") == [0, 6, 8, 10]


def test_raise_stops_the_run_promptly(address: str) -> None:
    started = time.monotonic()
    with pytest.raises(Boom):
        # 400 items of 50 ms would take 10 s on 2 workers.
        dmap(fail_first_else_nap, range(400), address, chunksize=1)
    assert time.monotonic() - started < 5


def test_unpicklable_argument_fails_its_item(address: str) -> None:
    data: list[Any] = [1, 2, threading.Lock(), 4]
    results = dmap(double, data, address, errors="return", chunksize=4)
    assert isinstance(results[2], parallax.SerializationError)
    assert "argument of item 2" in str(results[2])
    assert [results[0], results[1], results[3]] == [2, 4, 8]


def test_unpicklable_result_fails_its_item(address: str) -> None:
    results = dmap(lock_for, range(6), address, errors="return", chunksize=6)
    assert isinstance(results[3], parallax.SerializationError)
    assert "result" in str(results[3])
    assert [r for i, r in enumerate(results) if i != 3] == [0, 1, 2, 4, 5]


def test_code_missing_on_the_workers_is_a_serialization_error(
    address: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A module the caller has and the workers lack: left to Dask, unpickling the
    task would break the workers' connection and stall the whole cluster."""
    (tmp_path / "only_here.py").write_text(
        "class Box:\n"
        "    def __init__(self, v):\n"
        "        self.v = v\n"
        "\n"
        "def triple(x):\n"
        "    return 3 * x\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))  # the workers started without it
    monkeypatch.delitem(sys.modules, "only_here", raising=False)
    only_here = importlib.import_module("only_here")
    with pytest.raises(parallax.SerializationError, match="function could not be unpickled"):
        dmap(only_here.triple, range(10), address)
    results = dmap(pid_of, [only_here.Box(1)], address, errors="return")
    assert isinstance(results[0], parallax.SerializationError)
    assert "only_here" in str(results[0].__cause__)  # the worker's traceback
    assert dmap(double, range(10), address) == [x * 2 for x in range(10)]  # cluster intact
    monkeypatch.delitem(sys.modules, "only_here")


# -- per-task timeout: abandoned, not killed --------------------------------------------------


def test_timeout_abandons_the_item_and_keeps_the_rest(address: str) -> None:
    started = time.monotonic()
    results = dmap(Sleepy(3, 4.0), range(10), address, timeout=0.5, errors="return",
                   chunksize=5)
    assert time.monotonic() - started < 3.5  # not the 4 s the item sleeps
    assert isinstance(results[3], parallax.TaskTimeoutError)
    assert isinstance(results[3], TimeoutError)
    assert "abandoned" in str(results[3])
    assert [r for i, r in enumerate(results) if i != 3] == [0, 1, 2, 4, 5, 6, 7, 8, 9]


def test_timeout_raises_with_errors_raise(address: str) -> None:
    with pytest.raises(parallax.TaskTimeoutError, match="item 1 "):
        dmap(Sleepy(1, 3.0), range(4), address, timeout=0.3)


# -- a worker killed mid-run ------------------------------------------------------------------


def test_worker_killed_once_dask_recovers(fresh_cluster: str, tmp_path: Path) -> None:
    """Dask's own recovery: the task is re-run on the restarted worker."""
    marker = tmp_path / "killed"
    fn = FailOnce("sigkill", 13, str(marker))
    results = dmap(fn, range(40), fresh_cluster, chunksize=5)
    assert marker.exists()  # the worker was killed
    assert results == [x * 10 for x in range(40)]


def test_large_function_survives_a_killed_worker(fresh_cluster: str, tmp_path: Path) -> None:
    blob = os.urandom(1 << 20)  # scattered: above the 64 KiB threshold
    fail_once = FailOnce("sigkill", 7, str(tmp_path / "killed"))

    def fn(x: int) -> int:
        return fail_once(x) + len(blob)

    results = dmap(fn, range(30), fresh_cluster, chunksize=3)
    assert (tmp_path / "killed").exists()
    assert results == [x * 10 + (1 << 20) for x in range(30)]


def test_poison_item_fails_alone_with_worker_crashed(fresh_cluster: str) -> None:
    """An item that kills every worker it runs on: Dask retries its task on
    other workers and gives up (KilledWorker); parallax re-runs the chunk's
    items one per task and reports only that item, as WorkerCrashedError."""
    started = time.monotonic()
    results = dmap(Faulty("sigkill", 13), range(40), fresh_cluster, chunksize=5,
                   errors="return")
    assert time.monotonic() - started < 40
    crash = results[13]
    assert isinstance(crash, parallax.WorkerCrashedError)
    assert "item 13" in str(crash) and "KilledWorker" in str(crash)
    assert isinstance(crash.__cause__, distributed.KilledWorker)
    assert [r for i, r in enumerate(results) if i != 13] == [
        x * 10 for x in range(40) if x != 13
    ]
    with pytest.raises(parallax.WorkerCrashedError, match="item 2 "):
        dmap(Faulty("sigkill", 2), range(4), fresh_cluster, chunksize=1)


# -- backend options: address, client, none ---------------------------------------------------


def test_mode_dask_without_address_runs_its_own_local_cluster() -> None:
    assert parallax.map(double, range(100), mode="dask") == [x * 2 for x in range(100)]
    (backend,) = [pooled.backend for pooled in _pools._pools.values()]
    assert isinstance(backend, DaskBackend)
    client = backend.client
    assert client.cluster is not None  # a LocalCluster it started
    assert sum(client.nthreads().values()) == backend.workers
    _pools.shutdown_pools(wait=True)
    assert client.status == "closed"  # no_leftovers checks its processes are gone


def test_its_own_cluster_runs_without_the_sampling_profiler_when_the_gil_is_off(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # The profiler reads other threads' frames, which crashes a free-threaded 3.13.
    from parallax.backends import _dask

    monkeypatch.setattr(_dask, "gil_enabled", lambda: False)
    assert parallax.map(double, range(10), mode="dask") == [x * 2 for x in range(10)]
    (backend,) = [pooled.backend for pooled in _pools._pools.values()]
    assert isinstance(backend, DaskBackend)
    profiling = backend.client.run(lambda: dask.config.get("distributed.worker.profile.enabled"))
    _pools.shutdown_pools(wait=True)
    assert profiling and set(profiling.values()) == {False}


def test_existing_client_is_used_and_left_open(address: str) -> None:
    with distributed.Client(address, set_as_default=False) as client:
        assert parallax.map(double, range(500), mode="dask", client=client) == [
            x * 2 for x in range(500)
        ]
        _pools.shutdown_pools(wait=True)
        assert client.status == "running"
        assert client.submit(double, 21).result() == 42


def test_executor_with_address_submit_and_map(address: str) -> None:
    with parallax.Executor("dask", address=address) as executor:
        assert executor.mode == "dask"
        assert executor.workers == 2
        future = executor.submit(pow, 2, 10)
        assert future.result(timeout=30) == 1024
        failing = executor.submit(fail_on({1}), 1)
        assert isinstance(failing.exception(timeout=30), Boom)
        assert list(executor.map(add, range(50), range(50))) == [2 * x for x in range(50)]
        assert executor.stats.tasks == 50


def test_executor_shutdown_cancel_futures_does_not_hang(address: str) -> None:
    executor = parallax.Executor("dask", address=address)
    futures = [executor.submit(time.sleep, 0.5) for _ in range(20)]
    started = time.monotonic()
    executor.shutdown(wait=True, cancel_futures=True)
    _done, not_done = concurrent.futures.wait(futures, timeout=15)
    assert not not_done  # each ran, failed as cancelled, or was cancelled
    assert time.monotonic() - started < 15


def test_address_and_client_together_are_rejected(address: str) -> None:
    with pytest.raises(ValueError, match="not both"):
        DaskBackend(address=address, client=object())


def test_unreachable_address_fails_at_the_call() -> None:
    with dask.config.set({"distributed.comm.timeouts.connect": "1s"}), pytest.raises(
        parallax.ParallaxError, match="could not connect"
    ):
        DaskBackend(address="tcp://127.0.0.1:9")


# -- initializer, shipping, nesting, stats ----------------------------------------------------


def test_initializer_runs_once_in_every_worker(address: str, tmp_path: Path) -> None:
    with parallax.Executor("dask", address=address, initializer=record_pid,
                           initargs=(str(tmp_path),)) as executor:
        pids = set(executor.map(pid_of, range(200), chunksize=1))
    recorded = {int(path.name) for path in tmp_path.iterdir()}
    assert pids <= recorded
    assert len(recorded) == 2  # once per worker, not per chunk

    def plugins(dask_scheduler: Any) -> list[str]:
        return list(dask_scheduler.worker_plugins)

    with distributed.Client(address, set_as_default=False) as client:
        # left on someone else's cluster, later workers would run it too
        assert not [name for name in client.run_on_scheduler(plugins) if "parallax" in name]


def test_failing_initializer_fails_the_run(address: str) -> None:
    with parallax.Executor("dask", address=address,
                           initializer=failing_initializer) as executor, pytest.raises(
        parallax.ParallaxError, match="initializer"
    ):
        list(executor.map(double, range(10)))


def test_a_large_function_is_scattered_once(address: str) -> None:
    blob = os.urandom(1 << 20)

    def size_plus(x: int) -> int:
        return len(blob) + x

    backend = DaskBackend(address=address)
    try:
        job = Job(size_plus, lambda result: None)
        backend.prepare(job)
        scattered = backend._functions[job]
        assert isinstance(scattered, distributed.Future)
        assert scattered.status == "finished"
        small = Job(double, lambda result: None)
        backend.prepare(small)
        assert small not in backend._functions  # small functions travel inline
    finally:
        backend.shutdown()
    assert dmap(size_plus, range(40), address, chunksize=1) == [(1 << 20) + x for x in range(40)]


def test_nested_call_inside_a_worker_runs_serially(address: str) -> None:
    assert dmap(nested_map, [0, 3], address) == [[], [0, 2, 4]]


def test_stats_name_the_dask_workers(address: str) -> None:
    with parallax.monitor() as monitor:
        dmap(double, range(2_000), address, chunksize=100)
    # (a run left open by an earlier test may be finalised, and so recorded,
    # inside the block too)
    (run,) = [run for run in monitor.runs if run.tasks == 2_000]
    assert run.mode == "dask"
    assert run.tasks == 2_000
    workers = {record.name for record in run.worker_records}
    assert workers and all(name.startswith("tcp://127.0.0.1:") for name in workers)
    for record in run.worker_records:
        # worker clocks moved onto the caller's: inside the run's wall time
        assert -0.5 <= record.first_started <= record.last_finished <= run.wall_time + 0.5


def test_work_runs_on_the_worker_processes(address: str, cluster: Any) -> None:
    ran_on = {pid for pid, _thread in dmap(where, range(100), address, chunksize=5)}
    assert os.getpid() not in ran_on


def test_breaking_out_of_imap_cancels_what_has_not_run(address: str) -> None:
    with parallax.Executor("dask", address=address) as executor:
        iterator = executor.imap(nap, itertools.repeat(0.01, 10_000), chunksize=10)
        assert next(iterator) == 0.01
        iterator.close()  # type: ignore[attr-defined]
        backend = executor._backend
        assert isinstance(backend, DaskBackend)
        assert wait_until(lambda: not backend._tasks, 10)


# -- the optional extra -----------------------------------------------------------------------


def _python(code: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=False
    )


def test_import_parallax_does_not_import_dask() -> None:
    result = _python(
        "import sys, parallax\n"
        "parallax.map(abs, [1, -2], mode='serial')\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] in ('dask', 'distributed')))"
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"


def test_the_task_imports_without_the_callers_side_of_the_backend() -> None:
    # Dask workers import the task's module by name: it must not pull in the backend.
    result = _python(
        "import sys, parallax.backends._dask_task\n"
        "print('parallax.backends._dask' in sys.modules)"
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "False"


def test_missing_distributed_names_the_extra() -> None:
    result = _python(
        "import sys\n"
        "sys.modules['distributed'] = None  # as if not installed\n"
        "try:\n"
        "    import parallax.backends._dask\n"
        "except ImportError as exc:\n"
        "    print(exc)\n"
    )
    assert result.returncode == 0, result.stderr
    assert "pip install 'parallax[dask]'" in result.stdout


def test_an_unexpected_error_in_the_collector_fails_the_run(
    address: str, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    # The collector thread must never die silently, leaving the run waiting.
    def bug(self: DaskBackend, batch: Any) -> None:
        raise RuntimeError("a bug in the collector")

    monkeypatch.setattr(DaskBackend, "_take", bug)
    with parallax.Executor("dask", address=address) as executor:
        future = executor.submit(double, 2)
        error = future.exception(timeout=60)
        assert isinstance(error, parallax.ParallaxError)
        assert "a bug in the collector" in str(error)
        assert executor._backend.broken is not None
    assert "the dask collector failed" in caplog.text
