"""Fault injection for tests/test_faults.py: module-level so workers import it."""

from __future__ import annotations

import ctypes
import os
import signal
import threading
import time
from pathlib import Path
from typing import Any


class InjectedError(RuntimeError):
    pass


def misbehave(kind: str, x: int) -> Any:
    if kind == "raise":
        raise InjectedError(f"injected at {x}")
    if kind == "exit":
        os._exit(13)
    if kind == "sigkill":
        os.kill(os.getpid(), signal.SIGKILL)
    if kind == "segfault":
        ctypes.string_at(0)
    if kind == "hang":
        time.sleep(30)
    if kind == "unpicklable":
        return threading.Lock()
    raise AssertionError(kind)


class Faulty:
    """``fn(x) = x * 10``, except that item ``bad`` misbehaves as ``kind``."""

    def __init__(self, kind: str, bad: int) -> None:
        self.kind = kind
        self.bad = bad

    def __call__(self, x: int) -> Any:
        if x == self.bad:
            return misbehave(self.kind, x)
        return x * 10


class FailOnce:
    """Misbehaves the first time it sees ``bad`` (remembered in a marker file)."""

    def __init__(self, kind: str, bad: int, marker: str) -> None:
        self.kind = kind
        self.bad = bad
        self.marker = marker

    def __call__(self, x: int) -> Any:
        time.sleep(0.001)  # slow enough to be marked item by item
        if x == self.bad and not Path(self.marker).exists():
            Path(self.marker).touch()
            return misbehave(self.kind, x)
        return x * 10


def failing_initializer() -> None:
    raise InjectedError("initializer refuses")


def record_pid(directory: str) -> None:
    Path(directory, str(os.getpid())).touch()


def sleep_and_record(directory: str, x: int) -> int:
    Path(directory, str(os.getpid())).touch()
    time.sleep(60)
    return x


class UnprintableError(Exception):
    """An exception whose ``str()`` raises."""

    def __str__(self) -> str:
        raise RuntimeError("no str for you")


class UnprintableUnpicklableError(UnprintableError):
    """... and that cannot be pickled either."""

    def __reduce__(self) -> Any:
        raise TypeError("no pickle for you")


def raise_unprintable(x: int) -> int:
    if x == 1:
        raise UnprintableError()
    return x


def raise_unprintable_unpicklable(x: int) -> int:
    if x == 1:
        raise UnprintableUnpicklableError()
    return x
