"""The benchmark task functions: what the workers run.

Every task function lives at the top level of this module, so that every
peer can ship it to a worker process by reference (pickle) and every worker
(forked, spawned or a fresh interpreter) can import it back.

A worker that imports this module gets only what its task needs: ``time``
here, anything more (``asyncio``, ``hashlib``) inside the one task that uses
it. So a case measuring a worker's memory (``stream_memory``) or the import
cost of a library measures the library, not this module: the registry of
workloads (``workloads.py``, with ``dataclasses`` and ``typing``) is the
driver's, never imported by a worker.
"""

from __future__ import annotations

import time
from collections.abc import Iterator

#: loop iterations of ``cpu_medium`` (about 10 ms of pure Python on the
#: reference machine) and of ``cpu_small`` (about 100 µs)
MEDIUM_ITERATIONS = 108_000
SMALL_ITERATIONS = 1_250
#: how long each I/O task waits
SLEEP_SECONDS = 0.02
#: bytes handed to each ``payload`` task
PAYLOAD_BYTES = 1 << 20


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
    import hashlib  # here, not at the top: OpenSSL is 1.4 MB of every worker's memory

    return hashlib.sha256(data).hexdigest()


def payload_item(index: int) -> bytes:
    """1 MB of bytes, distinct for every index."""
    return index.to_bytes(4, "little") * (PAYLOAD_BYTES // 4)


def int_stream(count: int) -> Iterator[int]:
    """A generator of ``count`` ints (never a list)."""
    yield from range(count)
