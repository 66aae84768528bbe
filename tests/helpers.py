"""Module-level functions for tests (process workers import them by reference)."""

from __future__ import annotations

import os
import threading
import time
from typing import Any


def double(x: int) -> int:
    return x * 2


def add(x: int, y: int) -> int:
    return x + y


def identity(x: Any) -> Any:
    return x


class Boom(ValueError):
    """A user exception with a custom constructor (pickles via args)."""


def fail_on(bad: set[int]) -> Any:
    def fn(x: int) -> int:
        if x in bad:
            raise Boom(f"bad item {x}")
        return x * 2

    return fn


def nap(seconds: float) -> float:
    time.sleep(seconds)
    return seconds


def where(_: Any) -> tuple[int, str]:
    return os.getpid(), threading.current_thread().name


def process_alive(pid: int) -> bool:
    """Running (a zombie waiting for its reaper counts as gone); Linux ``/proc``."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as stat:
            return stat.read().rsplit(b")", 1)[1].split()[0] != b"Z"
    except OSError:
        return False


def spin(n: int) -> int:
    total = 0
    for i in range(n):
        total += i * i
    return total


def busy_3ms(x: int) -> int:
    """At least 3 ms of CPU: more than the auto probe's 2 ms, so it probes one item."""
    started = time.thread_time()
    while time.thread_time() - started < 0.003:
        pass
    return x


def log_and_double(x: int) -> int:
    """Logs a warning and an info record on the ``app.tasks`` logger."""
    import logging

    log = logging.getLogger("app.tasks")
    log.warning("warning from item %d", x)
    log.info("info from item %d", x)
    return x * 2


def log_failure(x: int) -> int:
    """Logs a caught exception with its traceback."""
    import logging

    try:
        raise ValueError(f"item {x} is odd")
    except ValueError:
        logging.getLogger("app.tasks").exception("item %d failed", x)
    return x


def configure_worker_logging() -> None:
    """Initializer: the worker prints its own records to stdout."""
    import logging
    import sys

    logging.basicConfig(stream=sys.stdout, level=logging.INFO, format="WORKER %(message)s")


def has_cloudpickle(_: object) -> bool:
    """Whether this process has imported cloudpickle (a process worker's,
    called by reference: loading it does not import cloudpickle)."""
    import sys

    return "cloudpickle" in sys.modules
