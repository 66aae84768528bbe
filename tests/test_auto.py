"""The auto-selector: a pure decision over measured facts, and the probe."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Iterator
from typing import Any

import pytest

import parallax
from conftest import wait_until
from helpers import busy_3ms, spin
from parallax import _auto, _host
from parallax._auto import Facts, Probe, decide, probe, probe_more
from parallax._worker import inside_worker

CPU20MS = 0  # calibrated below


def cpu_bound(_: int) -> int:
    # ~20 ms of pure Python on this class of machine; exact time does not matter
    return spin(600_000)


def io_bound(_: int) -> None:
    time.sleep(0.05)


async def coroutine(x: int) -> int:
    await asyncio.sleep(0)
    return x


#: the CPU count the machine-pinning fixture reports
PINNED_CPUS = 2


@pytest.fixture
def gil_build(monkeypatch: pytest.MonkeyPatch) -> int:
    """Pin the machine facts auto mode reads to a GIL build with 2 CPUs; the CPU count.

    CPU-bound work goes to processes only where the GIL is on and a second
    core exists: a test that expects process mode states those facts rather
    than reading them off the interpreter and machine it happens to run on.
    """
    monkeypatch.setattr(_host, "gil_enabled", lambda: True)
    monkeypatch.setattr(_host, "usable_cpus", lambda: PINNED_CPUS)
    return PINNED_CPUS


@pytest.mark.parametrize(
    ("facts", "mode"),
    [
        (Facts(coroutine=True, cpus=2), "asyncio"),
        (Facts(probed=1, item_wall=0.02, item_cpu=0.0199, total=100, cpus=2), "process"),
        (Facts(probed=1, item_wall=0.02, item_cpu=0.0199, total=100, cpus=8,
               gil_enabled=False), "free-threaded"),
        (Facts(probed=1, item_wall=0.05, item_cpu=0.0001, total=100, cpus=2), "thread"),
        (Facts(probed=10, item_wall=1e-6, item_cpu=1e-6, total=10, cpus=2), "serial"),
        (Facts(probed=64, item_wall=1e-7, item_cpu=1e-7, total=1_000_000, cpus=2), "serial"),
        (Facts(probed=1, item_wall=0.02, item_cpu=0.02, total=100, cpus=1), "serial"),
        (Facts(probed=1, item_wall=0.02, item_cpu=0.02, total=100, cpus=2, picklable=False,
               unpicklable="the function f"), "serial"),
        (Facts(probed=3, item_wall=5e-4, item_cpu=5e-4, total=200, cpus=2,
               item_bytes=1_000_000, thread_speedup=1.8), "thread"),
        (Facts(probed=3, item_wall=5e-4, item_cpu=5e-4, total=200, cpus=2,
               item_bytes=1_000_000, thread_speedup=1.0), "serial"),
        (Facts(probed=3, item_wall=0.05, item_cpu=0.05, total=200, cpus=2,
               item_bytes=1_000_000, thread_speedup=1.0), "process"),
        (Facts(cpus=2), "process"),
        (Facts(cpus=2, gil_enabled=False), "free-threaded"),
        # a busy machine: the one probed item waited 5 ms for a CPU, but is tiny work
        (Facts(probed=1, item_wall=0.005, item_cpu=1e-6, item_runqueue=0.005 - 1e-6, total=10,
               cpus=2), "serial"),
        (Facts(probed=1, item_wall=0.005, item_cpu=1e-6, item_runqueue=0.005 - 1e-6,
               total=1_000_000, cpus=2), "serial"),
    ],
)
def test_decide_over_a_table_of_facts(facts: Facts, mode: str) -> None:
    plan = decide(facts)
    assert plan.mode == mode
    assert plan.reason and "->" in plan.reason
    assert plan.workers >= 1


def test_decide_respects_workers_and_caps_io_threads() -> None:
    facts = Facts(probed=1, item_wall=0.02, item_cpu=1e-6, total=100_000, cpus=2)
    assert decide(facts).workers == 256
    assert decide(facts, workers=7).workers == 7
    # sized by the wait/CPU ratio, rounded up to a power of two so that similar
    # calls share one warm pool
    mixed = Facts(probed=1, item_wall=0.02, item_cpu=0.004, total=100, cpus=2)
    assert decide(mixed).workers == 16


def test_reason_names_the_measurements() -> None:
    plan = decide(Facts(probed=1, item_wall=0.012, item_cpu=0.0115, total=400, cpus=2))
    assert plan.reason.startswith("CPU-bound: 96% of 12 ms per item is CPU, GIL enabled, 2 cores")
    assert "process, chunks of" in plan.reason


def test_the_planned_chunk_size_follows_the_process_backends_overhead(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from parallax.backends._process import ProcessBackend

    facts = Facts(probed=1, item_wall=1e-4, item_cpu=1e-4, total=1_000_000, cpus=2)
    monkeypatch.setattr(ProcessBackend, "chunk_overhead", 3e-4)  # chunks of 30 ms
    assert decide(facts).reason.endswith("process, chunks of 300")
    monkeypatch.setattr(ProcessBackend, "chunk_overhead", 1e-3)  # chunks of 100 ms
    assert decide(facts).reason.endswith("process, chunks of 1000")


@pytest.mark.usefixtures("gil_build")
def test_plan_picks_process_for_cpu_work() -> None:
    plan = parallax.plan(cpu_bound, range(8))
    assert plan.mode == "process", plan.reason
    assert "CPU-bound" in plan.reason


def test_plan_picks_thread_for_sleeping_work() -> None:
    plan = parallax.plan(io_bound, range(8))
    assert plan.mode == "thread", plan.reason
    assert "I/O-bound" in plan.reason


def test_plan_picks_asyncio_for_coroutines() -> None:
    plan = parallax.plan(coroutine, range(8))
    assert plan.mode == "asyncio" and plan.reason


def test_plan_picks_serial_for_tiny_input() -> None:
    plan = parallax.plan(lambda x: x + 1, range(10))
    assert plan.mode == "serial" and "tiny" in plan.reason


def test_a_busy_machine_does_not_make_tiny_work_worth_a_pool(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The first item waits for a CPU (other processes hold them): the probe
    reads that wait off the run queue, and it is neither work nor I/O."""
    waited = [0.0]
    monkeypatch.setattr(_auto, "_runqueue_seconds", lambda: waited[0])

    def preempted_first(x: int) -> int:
        if x == 0:
            started = time.perf_counter()
            time.sleep(0.01)  # stands for 10 ms on the run queue
            waited[0] += time.perf_counter() - started
        return x + 1

    plan = parallax.plan(preempted_first, range(10))
    assert plan.mode == "serial" and "tiny" in plan.reason, plan.reason
    many = parallax.plan(preempted_first, range(100_000))
    assert many.mode == "serial" and "tiny tasks" in many.reason, many.reason


def test_auto_map_records_its_reason_and_never_runs_the_probe_twice() -> None:
    runs: dict[int, int] = {}

    def counted(x: int) -> int:
        runs[x] = runs.get(x, 0) + 1
        time.sleep(0.02)
        return x * 3

    with parallax.monitor() as monitor:
        assert parallax.map(counted, range(12)) == [x * 3 for x in range(12)]
    assert runs == dict.fromkeys(range(12), 1)
    stats = monitor.runs[-1]
    assert stats.mode == "thread" and "I/O-bound" in stats.reason
    assert stats.tasks == 12


def test_auto_over_a_generator_keeps_probed_items() -> None:
    results = parallax.map(lambda x: spin(200_000) * 0 + x, (x for x in range(10)))
    assert results == list(range(10))


def test_auto_probe_failure_follows_the_error_policy() -> None:
    def bad_first(x: int) -> int:
        if x == 0:
            raise KeyError(x)
        return x

    with pytest.raises(KeyError):
        parallax.map(bad_first, range(5))
    results = parallax.map(bad_first, range(5), errors="return")
    assert isinstance(results[0], KeyError) and results[1:] == [1, 2, 3, 4]
    assert parallax.map(bad_first, range(5), errors="skip") == [1, 2, 3, 4]


def test_timeout_applies_to_probed_items_after_the_fact() -> None:
    def slow_first(x: int) -> int:
        if x == 0:
            time.sleep(0.3)
        return x

    results = parallax.map(slow_first, range(4), timeout=0.1, errors="return")
    assert isinstance(results[0], parallax.TaskTimeoutError)
    assert "auto probe" in str(results[0])
    assert results[1:] == [1, 2, 3]


def test_probed_items_have_sane_queue_times() -> None:
    with parallax.monitor() as monitor:
        parallax.map(lambda x: spin(300_000), range(6))
    for record in monitor.runs[-1].task_records:
        assert 0 <= record.queued <= record.started


def test_auto_calls_of_different_sizes_share_one_warm_pool() -> None:
    import threading

    def pool_of(_: int) -> str:
        time.sleep(0.01)
        return threading.current_thread().name.rsplit("-", 1)[0]

    small = set(parallax.map(pool_of, range(6))) - {"MainThread"}  # minus the probe
    large = set(parallax.map(pool_of, range(40))) - {"MainThread"}
    assert len(small) == 1 and small == large


def test_auto_with_an_initializer_does_not_probe_in_the_caller() -> None:
    with parallax.monitor() as monitor:
        results = parallax.map(_initialized, range(20), initializer=_initialize)
    assert results == [True] * 20  # every item ran where the initializer had run
    assert "initializer given" in monitor.runs[-1].reason


_state: dict[str, bool] = {}


def _initialize() -> None:
    _state["ready"] = True


def _initialized(_: int) -> bool:
    return _state.get("ready", False)


def test_no_warm_up_when_the_workers_take_every_core(
    gil_build: int, monkeypatch: pytest.MonkeyPatch,
) -> None:
    from parallax import _launch, _pools

    warm_ups: list[object] = []

    def recorded_probe_more(*args: Any, **kwargs: Any) -> None:
        warm_ups.append(args)
        probe_more(*args, **kwargs)

    monkeypatch.setattr(_launch, "probe_more", recorded_probe_more)
    _pools.shutdown_pools(wait=True)
    with parallax.monitor() as monitor:
        parallax.map(busy_3ms, range(40), workers=gil_build)
    stats = monitor.runs[-1]
    assert stats.mode == "process"
    assert warm_ups == []  # booting workers need the cores: the caller does not go on
    # The caller ran the probe's items only: one, or a few more where the
    # machine kept it waiting for a CPU (the probe then goes on: the time in
    # the run queue is not the work's); the workers ran all the rest.
    in_caller = sorted(record.index for record in stats.task_records
                       if record.worker.startswith("caller"))
    assert in_caller == list(range(len(in_caller))) and 1 <= len(in_caller) < 40


@pytest.mark.usefixtures("gil_build")
def test_the_caller_works_while_a_cold_process_pool_boots(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from parallax import _pools

    _pools.shutdown_pools(wait=True)  # a cold pool: its interpreters take a while to start
    # (fresh ones: a running fork template makes a pool ready almost at once)
    monkeypatch.setenv("PARALLAX_START_METHOD", "fresh")
    data = list(range(300))

    def warm_at_item_2() -> Iterator[int]:
        # However long the boot takes on a busy machine, the caller is still
        # at work when it ends: the input holds back item 2 until then.
        for item in data:
            if item == 2:
                assert wait_until(
                    lambda: any(not pooled.backend.starting for pooled in _pools._pools.values()),
                    seconds=60,
                )
            yield item

    with parallax.monitor() as monitor:
        # One worker: the caller has a core of its own to work on meanwhile.
        results = parallax.map(busy_3ms, warm_at_item_2(), workers=1)
    assert results == data
    stats = monitor.runs[-1]
    assert stats.mode == "process"
    in_caller = [record for record in stats.task_records if record.worker.startswith("caller")]
    workers = [record for record in stats.task_records if not record.worker.startswith("caller")]
    # The probe alone stops after ~2 ms of work (one item here); the caller
    # went on while the workers booted (items 1 and 2), and the workers did the rest.
    assert len(in_caller) >= 2
    assert workers and len(in_caller) + len(workers) == len(data)
    assert sorted(record.index for record in in_caller) == list(range(len(in_caller)))


@pytest.mark.usefixtures("gil_build")
def test_the_caller_stops_warming_up_at_a_failure() -> None:
    from parallax import _pools

    _pools.shutdown_pools(wait=True)
    ran: list[int] = []

    def fails_at_one(x: int) -> int:
        ran.append(x)
        busy_3ms(x)
        if x == 1:
            raise KeyError(x)
        return x

    with pytest.raises(KeyError):
        parallax.map(fails_at_one, range(40), workers=1)
    # item 0 was the probe, item 1 failed while the workers booted: in the
    # caller nothing ran after it (the workers' items append to their own copy)
    assert ran == [0, 1]


@pytest.mark.usefixtures("gil_build")
def test_the_thread_overlap_probe_keeps_every_item_in_order() -> None:
    import hashlib

    from parallax._auto import OVERLAP_MIN_ITEMS, probe

    def digest(data: bytes) -> str:
        if data[:1] == b"\x07":
            raise ValueError("item 7")
        for _ in range(3):
            data = hashlib.sha256(data).digest() * (len(data) // 32)
        return data[:8].hex()

    items = [bytes([index]) * 300_000 for index in range(40)]  # big: the payload rule applies
    measured = probe(digest, iter(items), total=len(items))
    # (a bytes object of 64 KiB or more ships through shared memory)
    assert measured.facts.shared_bytes >= 300_000
    assert measured.facts.thread_speedup is not None and measured.facts.thread_speedup > 0
    count = len(measured.items)
    assert count == measured.facts.probed and count > OVERLAP_MIN_ITEMS
    assert measured.items == items[:count]
    for index, outcome in enumerate(measured.outcomes):
        if index == 7:
            assert isinstance(outcome.exception, ValueError)
        else:
            assert outcome == digest(items[index])
    assert measured.ends == sorted(measured.ends)


def test_io_thread_counts_are_coarse_so_similar_calls_share_a_pool() -> None:
    # A 10 ms sleep measures anywhere from 20 to 200 µs of CPU: one pool size.
    sizes = {decide(Facts(probed=1, item_wall=0.01, item_cpu=cpu, total=1000, cpus=2)).workers
             for cpu in (20e-6, 50e-6, 100e-6, 150e-6, 200e-6)}
    assert sizes == {256}
    for cpu in (0.001, 0.002, 0.004, 0.0045):
        workers = decide(Facts(probed=1, item_wall=0.01, item_cpu=cpu, total=1000, cpus=2)).workers
        assert workers in (4, 16, 64, 256)


def _nested(x: int) -> int:
    # a parallax call inside the mapped function: nested, whatever it asks for
    return sum(parallax.map(abs, range(-3, 1), mode="process")) + x


def test_a_nested_call_in_a_probed_item_runs_serially() -> None:
    with parallax.monitor() as monitor:
        assert parallax.map(_nested, range(4)) == [6, 7, 8, 9]
    outer = monitor.runs[-1]
    in_caller = [r for r in outer.task_records if r.worker.startswith("caller")]
    assert in_caller  # the probe ran items in the caller...
    nested = monitor.runs[:-1]
    assert nested and all(run.mode == "serial" for run in nested)  # ...and their calls nested
    assert all("inside a parallax worker" in run.reason for run in nested)
    assert not inside_worker()  # the caller is itself again


def test_probe_and_warm_up_count_as_a_worker_and_restore_the_flag() -> None:
    seen: list[bool] = []

    def record(x: int) -> int:
        seen.append(inside_worker())
        return x

    measured = probe(record, iter(range(3)), total=3)
    assert not inside_worker()
    probe_more(record, iter(range(3, 6)), measured, while_=lambda: True)
    assert seen == [True] * 6
    assert not inside_worker()


@pytest.mark.parametrize("stage", ["probe", "probe_more"])
def test_the_worker_flag_is_restored_when_an_item_interrupts(stage: str) -> None:
    def interrupt(_: int) -> int:
        raise KeyboardInterrupt

    def run_stage() -> None:
        if stage == "probe":
            probe(interrupt, iter(range(3)), total=3)
        else:
            probe_more(interrupt, iter(range(3)), Probe(Facts()), while_=lambda: True)

    with pytest.raises(KeyboardInterrupt):
        run_stage()
    assert not inside_worker()


@pytest.mark.skipif(not __import__("os").path.exists("/proc/thread-self/schedstat"),
                    reason="Linux schedstat only")
def test_reading_the_run_queue_leaves_no_descriptor_open() -> None:
    import os
    import threading

    def schedstat_files() -> list[str]:
        found = []
        for fd in os.listdir("/proc/self/fd"):
            with contextlib.suppress(OSError):
                target = os.readlink(f"/proc/self/fd/{fd}")
                if target.endswith("/schedstat"):
                    found.append(target)
        return found

    read: list[float] = [_auto._runqueue_seconds(),
                         _auto._runqueue_seconds(threading.get_native_id())]
    assert all(seconds >= 0 for seconds in read)
    assert schedstat_files() == []


# -- the cost of data (issue #15) ------------------------------------------------------------


def test_shared_memory_makes_large_items_cheap_enough_for_processes() -> None:
    """8 MB per item and 10 ms of work that threads do not speed up: through
    the socket shipping costs more than half the work (serial); through
    shared memory it does not (process)."""
    work = Facts(probed=3, item_wall=0.01, item_cpu=0.01, total=200, cpus=2, thread_speedup=1.0)
    through_socket = decide(work.replace(item_bytes=8_000_000))
    assert through_socket.mode == "serial", through_socket.reason
    assert "payload-heavy: shipping 8 MB per item" in through_socket.reason
    shared = decide(work.replace(item_bytes=2_000, shared_bytes=8_000_000))
    assert shared.mode == "process", shared.reason


def test_a_bound_payload_is_paid_once_per_run() -> None:
    """A 2.5 GB object bound into the function costs ~1 s to write once: over
    10 items of 10 ms that is payload-heavy, over 100,000 items it is not."""
    facts = Facts(probed=3, item_wall=0.01, item_cpu=0.01, total=10, cpus=2, item_bytes=100,
                  payload_bytes=2_500_000_000, thread_speedup=1.0)
    assert decide(facts).mode == "serial"
    assert decide(facts.replace(total=100_000)).mode == "process"
    assert facts.shipping_seconds(10) == pytest.approx(2 * 100 / 1e9 + 0.1)


@pytest.mark.usefixtures("gil_build")
def test_the_probe_counts_what_would_go_through_shared_memory() -> None:
    numpy = pytest.importorskip("numpy")
    import functools

    from parallax import _shm

    if not _shm.AVAILABLE:
        pytest.skip("shared memory needs memfd (Linux)")
    table = numpy.ones(1_000_000)  # 8 MB, bound into the function

    def heavy(table: Any, x: int) -> Any:
        busy_3ms(x)
        return numpy.full(100_000, float(table[x]))  # 800 kB back

    measured = probe(functools.partial(heavy, table), iter(range(20)), total=20)
    facts = measured.facts
    assert facts.payload_bytes >= table.nbytes  # counted, not shipped per item
    assert facts.item_bytes is not None and facts.item_bytes < 1_000  # an int in
    assert facts.shared_bytes >= 800_000  # the result's array
