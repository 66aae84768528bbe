"""An item past its timeout in a thread: abandoned, and the error says what that costs."""

from __future__ import annotations

import threading

import pytest

import parallax
from conftest import Backend


@pytest.fixture
def threads(backend: Backend) -> Backend:
    if backend.mode not in ("thread", "free-threaded"):
        pytest.skip(f"{backend.mode} mode does not abandon threads")
    return backend


def test_the_timeout_error_of_an_abandoned_thread_suggests_process_mode(
    threads: Backend,
) -> None:
    release = threading.Event()

    def stuck_at_one(x: int) -> int:
        if x == 1:
            release.wait(30)  # stands for a runaway: it outlives the timeout
        return x

    try:
        results = threads.map(stuck_at_one, range(3), timeout=0.3, errors="return", workers=2)
    finally:
        release.set()
    error = results[1]
    assert isinstance(error, parallax.TaskTimeoutError)
    message = str(error)
    # the documented text first, then what it costs and what to do
    assert message.startswith(f"item 1 (1) ran past the 0.3 s timeout in parallax-{threads.mode}-")
    assert "; the thread was abandoned (threads cannot be killed) and replaced. " in message
    assert "still using a CPU" in message
    assert 'use mode="process", whose stuck workers are killed' in message
    assert results[0] == 0 and results[2] == 2


def test_shutdown_does_not_wait_for_a_thread_abandoned_meanwhile(threads: Backend) -> None:
    release = threading.Event()
    item_returned = threading.Event()

    def stuck(_: int) -> None:
        release.wait(60)
        item_returned.set()

    executor = threads.executor(workers=1, timeout=0.2)
    future = executor.submit(stuck, 0)
    queued = executor.submit(abs, -3)
    try:
        executor.shutdown(wait=True)  # the stuck item is abandoned meanwhile
        assert not item_returned.is_set()  # shutdown returned without it
        with pytest.raises(parallax.TaskTimeoutError):
            future.result(timeout=0)
        assert queued.result(timeout=0) == 3  # its replacement ran the queue
    finally:
        release.set()
