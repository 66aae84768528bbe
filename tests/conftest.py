"""Shared fixtures: every backend through one fixture, and a leak check.

``backend`` parametrises a test over every mode, so a new backend is tested
by the whole suite at once. Modes that run coroutine functions (asyncio) get
the test's plain function wrapped in ``async def``; everything else about the
call is the same.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any

import pytest

import parallax
from parallax import _pools

MODES = ("serial", "thread", "process", "free-threaded", "asyncio")


def as_coroutine(fn: Callable[..., Any]) -> Callable[..., Any]:
    async def wrapper(*args: Any) -> Any:
        return fn(*args)

    wrapper.__name__ = getattr(fn, "__name__", "wrapper")
    return wrapper


@dataclass(frozen=True)
class Backend:
    """A mode under test, and how to call parallax in it."""

    mode: str

    @property
    def coroutines(self) -> bool:
        return self.mode == "asyncio"

    @property
    def processes(self) -> bool:
        return self.mode == "process"

    def fn(self, fn: Callable[..., Any]) -> Callable[..., Any]:
        return as_coroutine(fn) if self.coroutines else fn

    def map(self, fn: Callable[..., Any], data: Iterable[Any], **kw: Any) -> list[Any]:
        return parallax.map(self.fn(fn), data, mode=self.mode, **kw)

    def imap(self, fn: Callable[..., Any], data: Iterable[Any], **kw: Any) -> Iterator[Any]:
        return parallax.imap(self.fn(fn), data, mode=self.mode, **kw)

    def starmap(self, fn: Callable[..., Any], data: Iterable[Any], **kw: Any) -> list[Any]:
        return parallax.starmap(self.fn(fn), data, mode=self.mode, **kw)

    def executor(self, **kw: Any) -> parallax.Executor:
        return parallax.Executor(self.mode, **kw)


@pytest.fixture(params=MODES)
def backend(request: pytest.FixtureRequest) -> Backend:
    return Backend(request.param)


# -- leak check ---------------------------------------------------------------------------


def child_pids() -> set[int]:
    """Live child processes of this process (Linux /proc)."""
    me = os.getpid()
    found = set()
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as stat:
                fields = stat.read().rsplit(b")", 1)[1].split()
        except OSError:
            continue
        state, parent = fields[0], int(fields[1])
        if parent == me and state != b"Z":
            found.add(int(entry))
    return found


def parallax_threads() -> list[threading.Thread]:
    return [
        thread
        for thread in threading.enumerate()
        if thread.name.startswith("parallax-") and thread.name != "parallax-pool-reaper"
    ]


def wait_until(condition: Callable[[], bool], seconds: float = 10.0) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.02)
    return condition()


@pytest.fixture(autouse=True)
def no_leftovers() -> Iterator[None]:
    """After each test: pools shut down, no child process or worker thread left."""
    before = child_pids()
    yield
    _pools.shutdown_pools(wait=True)
    assert wait_until(lambda: not (child_pids() - before)), (
        f"leftover child processes: {child_pids() - before}"
    )
    assert wait_until(lambda: not parallax_threads()), (
        f"leftover threads: {[thread.name for thread in parallax_threads()]}"
    )
