"""The benchmark workloads: task functions, inputs, expected results.

Every task function lives at the top level of this module, so that every
peer can ship it to a worker process by reference (pickle) and every worker
(forked, spawned or a fresh interpreter) can import it back.

The module imports only the standard library pieces the tasks need, so that
a case measuring the import cost of a library is not helped by this module
having imported its dependencies first.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, Literal

#: loop iterations of ``cpu_medium`` (about 10 ms of pure Python on the
#: reference machine) and of ``cpu_small`` (about 100 µs)
MEDIUM_ITERATIONS = 108_000
SMALL_ITERATIONS = 1_250
#: how long each I/O task waits
SLEEP_SECONDS = 0.02
#: bytes handed to each ``payload`` task
PAYLOAD_BYTES = 1 << 20


# -- task functions ------------------------------------------------------------------


def spin(x: int, iterations: int) -> int:
    """Pure-Python CPU work: ``sum(i * i + x for i in range(iterations))`` as a loop."""
    total = 0
    for i in range(iterations):
        total += i * i + x
    return total


def spin_expected(x: int, iterations: int) -> int:
    """What :func:`spin` returns, in closed form."""
    n = iterations
    return (n - 1) * n * (2 * n - 1) // 6 + n * x


#: the module-level constants of :func:`shared_constants_task`. Made at import
#: time, not written as literals: on a free-threaded build the literals of a
#: code object are immortal (no reference counting at all), while these are
#: ordinary objects owned by the importing thread, so every thread that reads
#: them updates their shared reference count (the contention being measured)
SHARED_MULTIPLIER = int("1000003")
SHARED_MODULUS = int("2147483647")


def shared_constants_task(x: int, iterations: int) -> int:
    """Pure-Python CPU work reading two module-level ints in every iteration."""
    total = x
    for i in range(iterations):
        total = (total * SHARED_MULTIPLIER + i) % SHARED_MODULUS
    return total


def private_constants_task(x: int, iterations: int) -> int:
    """:func:`shared_constants_task` with the constants made in the call: the thread's own."""
    multiplier = int(str(SHARED_MULTIPLIER))
    modulus = int(str(SHARED_MODULUS))
    total = x
    for i in range(iterations):
        total = (total * multiplier + i) % modulus
    return total


def cpu_medium_task(x: int) -> int:
    """About 10 ms of pure-Python CPU work."""
    return spin(x, MEDIUM_ITERATIONS)


def cpu_small_task(x: int) -> int:
    """About 100 µs of pure-Python CPU work."""
    return spin(x, SMALL_ITERATIONS)


def double(x: int) -> int:
    """The tiniest task: ``x * 2``."""
    return x * 2


def sleep_task(x: int) -> int:
    """Blocking I/O stand-in: sleeps 20 ms, returns its input."""
    time.sleep(SLEEP_SECONDS)
    return x


async def async_sleep_task(x: int) -> int:
    """Non-blocking I/O stand-in: ``await asyncio.sleep(0.02)``, returns its input."""
    import asyncio  # here, not at the top: see the module docstring

    await asyncio.sleep(SLEEP_SECONDS)
    return x


def sha256_task(data: bytes) -> str:
    """Hash a large buffer; hashlib releases the GIL while it works."""
    return hashlib.sha256(data).hexdigest()


def payload_item(index: int) -> bytes:
    """1 MB of bytes, distinct for every index."""
    return index.to_bytes(4, "little") * (PAYLOAD_BYTES // 4)


def int_stream(count: int) -> Iterator[int]:
    """A generator of ``count`` ints (never a list)."""
    yield from range(count)


# -- workloads -------------------------------------------------------------------------

Kind = Literal["list", "async", "stream", "startup"]


@dataclass(frozen=True)
class Workload:
    """One benchmark workload.

    ``kind`` says how a case calls it: ``list`` maps over a list and checks the
    result list; ``async`` does the same with a coroutine function; ``stream``
    feeds a fresh generator to a lazy map and sums what comes out (the results
    are never materialised); ``startup`` is a ``list`` workload timed for
    start-up cost rather than throughput.
    """

    name: str
    description: str
    kind: Kind
    fn: Callable[..., Any]
    full_size: int
    quick_size: int
    #: per-case time limit in seconds (full, quick)
    time_limit: tuple[float, float]
    #: the input item for an index, and the result expected for it
    item: Callable[[int], Any] = int
    expect: Callable[[int], Any] = int
    #: seconds one task takes when serial time is computed, not run
    computed_task_seconds: float | None = None

    def size(self, quick: bool) -> int:
        return self.quick_size if quick else self.full_size

    def limit(self, quick: bool) -> float:
        return self.time_limit[1] if quick else self.time_limit[0]

    def make_items(self, size: int) -> list[Any]:
        """The input list (list, async and startup kinds)."""
        return [self.item(index) for index in range(size)]

    def make_stream(self, size: int) -> Iterator[Any]:
        """A fresh input generator (stream kind)."""
        return map(self.item, int_stream(size))

    def expected(self, size: int) -> list[Any]:
        """The expected result list (list, async and startup kinds)."""
        return [self.expect(index) for index in range(size)]

    def expected_sum(self, size: int) -> int:
        """The expected sum of the results (stream kind)."""
        return sum(self.expect(index) for index in range(size))

    def computed_serial(self, size: int) -> float | None:
        """Serial seconds by arithmetic, for workloads whose serial run is not worth running."""
        if self.computed_task_seconds is None:
            return None
        return size * self.computed_task_seconds


def cpu_medium_expected(x: int) -> int:
    return spin_expected(x, MEDIUM_ITERATIONS)


def cpu_small_expected(x: int) -> int:
    return spin_expected(x, SMALL_ITERATIONS)


def payload_expected(index: int) -> str:
    return hashlib.sha256(payload_item(index)).hexdigest()


WORKLOADS: dict[str, Workload] = {
    workload.name: workload
    for workload in (
        Workload("cpu_medium", "pure-Python loop of ~10 ms per task", "list",
                 cpu_medium_task, 200, 60, (90, 30), expect=cpu_medium_expected),
        Workload("cpu_small", "pure-Python loop of ~100 µs per task", "list",
                 cpu_small_task, 20_000, 4_000, (90, 30), expect=cpu_small_expected),
        Workload("tiny", "`x * 2` per task", "list", double, 1_000_000, 200_000, (20, 8),
                 expect=double),
        Workload("io_sleep", "`time.sleep(0.02)` per task", "list", sleep_task, 2_000, 500,
                 (45, 20), computed_task_seconds=SLEEP_SECONDS),
        Workload("io_async", "`await asyncio.sleep(0.02)` per task", "async",
                 async_sleep_task, 10_000, 2_000, (45, 20),
                 computed_task_seconds=SLEEP_SECONDS),
        Workload("payload", "sha256 of 1 MB of distinct bytes per task", "list",
                 sha256_task, 200, 60, (60, 30), item=payload_item, expect=payload_expected),
        Workload("startup", "10 trivial tasks (`x * 2`): cold and warm call", "startup",
                 double, 10, 10, (30, 20), expect=double),
        Workload("stream_memory", "lazy `x * 2` over a generator of ints, summed", "stream",
                 double, 2_000_000, 400_000, (20, 10), expect=double),
    )
}
