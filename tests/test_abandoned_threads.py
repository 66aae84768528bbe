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
