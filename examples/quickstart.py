"""Quickstart: ``map``, ``imap`` and ``starmap``, with ``mode="auto"`` and explicit modes.

Shows:

* ``parallax.map`` with the default ``mode="auto"``: it measures the first
  items, picks an engine, and says why (``parallax.plan`` gives the same
  decision without running the job);
* the same call with an explicit mode, and that every mode returns exactly
  ``[fn(x) for x in data]``;
* ``parallax.imap`` reading an endless generator lazily, stopped with ``break``;
* ``parallax.starmap`` for functions of several arguments;
* ``ordered=False`` to take results as they finish.

Run it: ``python examples/quickstart.py`` (a few seconds on 2 cores).
"""

from __future__ import annotations

import itertools
import math
import time
from collections.abc import Iterator

import parallax


def count_primes(limit: int) -> int:
    """CPU-bound: primes below ``limit``, by trial division in pure Python."""
    count = 0
    for candidate in range(2, limit):
        if all(candidate % divisor for divisor in range(2, math.isqrt(candidate) + 1)):
            count += 1
    return count


def slow_square(x: int) -> int:
    """I/O-bound stand-in: waits 10 ms (as a network call would), then squares."""
    time.sleep(0.01)
    return x * x


def power(base: int, exponent: int) -> int:
    return int(base**exponent)


def readings() -> Iterator[int]:
    """An endless stream of inputs, as from a sensor or a queue."""
    yield from itertools.count()


def main() -> None:
    limits = [20_000 + 500 * step for step in range(24)]
    expected = [count_primes(limit) for limit in limits[:2]]

    # 1. mode="auto": measure, pick, explain.
    decision = parallax.plan(count_primes, limits)
    print(f"plan for count_primes: {decision.mode} ({decision.reason})")
    with parallax.monitor() as mon:
        primes = parallax.map(count_primes, limits)
    assert primes[:2] == expected
    print(f"auto ran count_primes as {mon.runs[0].mode!r}: {primes[:4]} ...")

    # 2. Explicit modes give the same results, in input order.
    small = limits[:6]
    reference = [count_primes(limit) for limit in small]
    for mode in ("serial", "thread", "process"):
        assert parallax.map(count_primes, small, mode=mode) == reference
    print(f"serial, thread and process all returned {reference}")

    # 3. I/O-bound work: auto picks threads.
    with parallax.monitor() as mon:
        squares = parallax.map(slow_square, range(100))
    assert squares == [x * x for x in range(100)]
    io_run = mon.runs[0]
    print(f"auto ran slow_square as {io_run.mode!r} with {io_run.workers} workers "
          f"in {io_run.wall_time:.2f} s (100 x 10 ms one after another would be 1.0 s)")

    # 4. imap: lazy and bounded, so an endless input is fine; break stops it.
    # Small chunks because each item is slow: results arrive a few at a time
    # and little is left running after the break.
    total = 0
    stream = parallax.imap(slow_square, readings(), mode="thread", workers=8, chunksize=2)
    for number, square in enumerate(stream):
        total += square
        if number == 49:
            break
    assert total == sum(x * x for x in range(50))
    print(f"imap over an endless generator: first 50 squares sum to {total}")

    # 5. starmap: one tuple of arguments per call.
    pairs = [(2, 10), (3, 5), (10, 3)]
    powers = parallax.starmap(power, pairs, mode="thread")
    assert powers == [1024, 243, 1000]
    print(f"starmap(power, {pairs}) = {powers}")

    # 6. ordered=False: results as they finish (here: shortest sleep first).
    def nap(seconds: float) -> float:
        time.sleep(seconds)
        return seconds

    finished = parallax.map(nap, [0.3, 0.1, 0.2], mode="thread", workers=3, ordered=False)
    assert sorted(finished) == [0.1, 0.2, 0.3]
    print(f"ordered=False returned {finished} (completion order)")


if __name__ == "__main__":
    main()
