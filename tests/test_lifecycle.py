"""Per-worker state and teardown: ``parallax.worker_state()`` and ``finalizer=``.

The initializer, every task a worker runs and its finalizer see one dict; the
finalizer runs once per worker as it stops (shutdown, recycling); a failing
finalizer is logged and fails no result; bad ``finalizer=``/``finalargs=``
are refused before any work. Each worker's finalizer writes a marker file
named after the worker's token, so process workers can be counted too.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from pathlib import Path
from typing import Any

import pytest

import parallax
from conftest import Backend


def open_state() -> None:
    state = parallax.worker_state()
    state["token"] = uuid.uuid4().hex
    state["count"] = 0
    state["id"] = id(state)


def count_item(x: int) -> tuple[str, bool]:
    """The worker's token, and whether the task saw the initializer's dict."""
    state = parallax.worker_state()
    state["count"] += 1
    return state["token"], id(state) == state["id"]


def write_marker(directory: str) -> None:
    state = parallax.worker_state()
    # Appended: a finalizer run twice for one worker leaves two lines.
    with open(Path(directory) / state["token"], "a") as marker:
        marker.write(f"{state['count']}\n")


def failing_finalizer() -> None:
    raise ValueError("finalizer boom")


def markers(directory: Path) -> dict[str, list[int]]:
    return {path.name: [int(line) for line in path.read_text().split()]
            for path in directory.iterdir()}


def test_initializer_tasks_and_finalizer_share_one_dict(backend: Backend, tmp_path: Path) -> None:
    results = backend.map(count_item, range(40), workers=2, initializer=open_state,
                          finalizer=write_marker, finalargs=(str(tmp_path),))
    assert all(same for _, same in results)
    found = markers(tmp_path)
    # Once per worker: one marker per worker that ran items, each written once.
    assert {token for token, _ in results} <= set(found)
    assert all(len(counts) == 1 for counts in found.values()), found
    assert sum(counts[0] for counts in found.values()) == 40
    if backend.mode == "serial":
        assert len(found) == 1  # one worker state per run


def test_finalizer_runs_when_a_worker_is_recycled(backend: Backend, tmp_path: Path) -> None:
    if backend.mode in ("serial", "asyncio", "dask"):
        pytest.skip(f"{backend.mode} mode recycles no worker (max_tasks_per_worker)")
    results = backend.map(count_item, range(20), workers=2, chunksize=1,
                          max_tasks_per_worker=5, initializer=open_state,
                          finalizer=write_marker, finalargs=(str(tmp_path),))
    found = markers(tmp_path)
    # A successor started after the last item stops unused: its marker says 0.
    assert {token for token, _ in results} <= set(found)
    assert len({token for token, _ in results}) >= 4  # 20 items, at most 5 per worker
    assert all(len(counts) == 1 and counts[0] <= 5 for counts in found.values()), found
    assert sum(counts[0] for counts in found.values()) == 20


def test_executor_shutdown_runs_the_finalizers(backend: Backend, tmp_path: Path) -> None:
    with backend.executor(workers=2, initializer=open_state, finalizer=write_marker,
                          finalargs=(str(tmp_path),)) as executor:
        results = list(executor.map(backend.fn(count_item), range(10)))
        assert all(same for _, same in results)
    found = markers(tmp_path)
    assert {token for token, _ in results} <= set(found)
    assert sum(counts[0] for counts in found.values()) == 10


def test_worker_state_without_an_initializer(backend: Backend) -> None:
    def remember(x: int) -> int:
        state = parallax.worker_state()
        state[x] = x
        return len(state)

    assert all(size >= 1 for size in backend.map(remember, range(10), workers=2))


def test_a_failing_finalizer_is_logged_and_fails_no_result(
    backend: Backend, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.ERROR, logger="parallax"):
        results = backend.map(abs, [-1, -2, -3], workers=2, finalizer=failing_finalizer)
    assert results == [1, 2, 3]
    if backend.processes:
        # Logged in the worker process, the record forwarded to the caller's
        # handlers (the traceback as text).
        assert any("worker finalizer failed" in record.getMessage()
                   and "finalizer boom" in (record.exc_text or "")
                   for record in caplog.records), caplog.records
    elif backend.mode == "dask":
        pass  # logged on the Dask worker, whose logs Dask keeps
    else:
        assert any("worker finalizer failed" in record.getMessage()
                   and "finalizer boom" in str(record.exc_info) for record in caplog.records)


async def count_item_async(x: int) -> tuple[str, bool]:
    return count_item(x)


def test_amap_on_the_callers_loop_runs_the_finalizer_on_it(tmp_path: Path) -> None:
    loops: list[asyncio.AbstractEventLoop] = []

    def finalize(directory: str) -> None:
        loops.append(asyncio.get_running_loop())
        write_marker(directory)

    async def main() -> tuple[list[tuple[str, bool]], asyncio.AbstractEventLoop]:
        results = await parallax.amap(count_item_async, range(12), mode="asyncio",
                                      initializer=open_state, finalizer=finalize,
                                      finalargs=(str(tmp_path),))
        await asyncio.sleep(0)  # a finalizer scheduled from another thread runs now
        return results, asyncio.get_running_loop()

    results, loop = asyncio.run(main())
    assert all(same for _, same in results)
    assert loops == [loop]  # once, on the caller's loop
    assert markers(tmp_path) == {results[0][0]: [12]}


def test_worker_state_in_auto_mode_items_the_caller_probes() -> None:
    def remember(x: int) -> int:
        parallax.worker_state()[x] = x
        return x

    assert parallax.map(remember, range(2000)) == list(range(2000))


def test_worker_state_outside_a_worker_raises() -> None:
    with pytest.raises(RuntimeError, match="only available inside a parallax worker"):
        parallax.worker_state()


def test_worker_state_is_exported() -> None:
    assert "worker_state" in parallax.__all__
    assert parallax.worker_state.__module__ == "parallax._worker"


@pytest.mark.parametrize(
    ("keywords", "message"),
    [
        ({"finalizer": 1}, "finalizer"),
        ({"finalizer": abs, "finalargs": [1]}, "finalargs must be a tuple"),
    ],
)
def test_bad_finalizer_refused_before_any_work(keywords: dict[str, Any], message: str) -> None:
    ran: list[int] = []
    with pytest.raises(TypeError, match=message):
        parallax.map(ran.append, [1, 2], mode="thread", **keywords)
    with pytest.raises(TypeError, match=message):
        parallax.Executor("thread", **keywords)
    with pytest.raises(TypeError, match=message):
        parallax.parallel(**keywords)(abs)
    with pytest.raises(TypeError, match=message), parallax.using("thread", **keywords):
        pass
    assert ran == []


def test_serial_mode_gives_each_run_its_own_state() -> None:
    """One dict per run in serial mode, also on the shared serial pool."""

    def count(_: int) -> int:
        state = parallax.worker_state()
        state["n"] = state.get("n", 0) + 1
        return int(state["n"])

    assert parallax.map(count, range(3), mode="serial") == [1, 2, 3]
    assert parallax.map(count, range(3), mode="serial") == [1, 2, 3]
