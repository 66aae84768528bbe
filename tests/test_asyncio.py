"""Asyncio mode from sync code and from a running loop."""

from __future__ import annotations

import asyncio
import threading

import pytest

import parallax


async def slow_double(x: int) -> int:
    await asyncio.sleep(0.01)
    return x * 2


def test_from_sync_code_runs_concurrently_on_a_private_loop() -> None:
    seen_threads: set[str] = set()
    active = 0
    peak = 0

    async def tracked(x: int) -> int:
        nonlocal active, peak
        seen_threads.add(threading.current_thread().name)
        active += 1
        peak = max(peak, active)
        await asyncio.sleep(0.02)
        active -= 1
        return x

    assert parallax.map(tracked, range(200), mode="asyncio", workers=50) == list(range(200))
    assert threading.current_thread().name not in seen_threads
    assert 1 < peak <= 50  # concurrent, within the limit


def test_amap_runs_coroutines_on_the_callers_loop() -> None:
    async def main() -> tuple[list[int], set[int]]:
        loop_ids: set[int] = set()

        async def on_loop(x: int) -> int:
            loop_ids.add(id(asyncio.get_running_loop()))
            return x + 1

        results = await parallax.amap(on_loop, range(50))
        assert loop_ids == {id(asyncio.get_running_loop())}
        return results, loop_ids

    results, _ = asyncio.run(main())
    assert results == list(range(1, 51))


def test_amap_with_a_plain_function_keeps_the_loop_free() -> None:
    """The items wait until the loop has ticked: they finish only if the loop
    runs while they do (however slow the machine; 30 s is a hang)."""

    async def main() -> list[tuple[int, bool]]:
        ticked = threading.Event()

        async def ticker() -> None:
            for _ in range(3):
                await asyncio.sleep(0.005)
            ticked.set()

        task = asyncio.create_task(ticker())
        results = await parallax.amap(lambda x: (x, ticked.wait(30)), range(4), mode="thread")
        await task
        return results

    # every item saw the loop tick while it waited
    assert asyncio.run(main()) == [(0, True), (1, True), (2, True), (3, True)]


def test_errors_and_timeouts() -> None:
    async def flaky(x: int) -> int:
        if x == 3:
            raise KeyError(x)
        if x == 5:
            await asyncio.sleep(10)
        return x

    results = parallax.map(flaky, range(8), mode="asyncio", timeout=0.2, errors="return")
    assert isinstance(results[3], KeyError)
    assert isinstance(results[5], parallax.TaskTimeoutError)
    assert [r for i, r in enumerate(results) if i not in (3, 5)] == [0, 1, 2, 4, 6, 7]
    with pytest.raises(KeyError):
        parallax.map(flaky, range(5), mode="asyncio")


def test_coroutines_run_in_other_modes_too(parallax_mode: str) -> None:
    assert parallax.map(slow_double, range(5)) == [0, 2, 4, 6, 8]


def test_stats_record_concurrent_items() -> None:
    with parallax.monitor() as monitor:
        parallax.map(slow_double, range(30), mode="asyncio", workers=10)
    stats = monitor.runs[-1]
    assert stats.mode == "asyncio" and stats.tasks == 30
    records = stats.task_records
    assert len(records) == 30
    assert all(0 <= record.started <= record.finished <= stats.wall_time for record in records)
