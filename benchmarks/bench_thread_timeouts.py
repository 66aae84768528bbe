"""CPU-bound runaways under a timeout: threads abandoned and replaced vs processes killed (#13.10).

A thread cannot be killed: thread mode abandons a thread whose item runs past
``timeout=`` and starts a fresh one in its place. Does the replacement keep
the pool's throughput when the runaway items are CPU-bound? The abandoned
threads keep running (here: until the benchmark ends), and with the GIL they
take their turns at it like any thread::

    python -m benchmarks.bench_thread_timeouts            # 1000 items, 100 runaways, timeout 2 s
    python -m benchmarks.bench_thread_timeouts --quick    # 200 items, 20 runaways, timeout 0.5 s

Every tenth item (offset 5) never returns on its own; the others are about
2 ms of pure-Python work each (calibrated on the running interpreter), one
item per chunk, results unordered (so the pool is measured, not the run
waiting for a runaway's turn). For
each configuration it prints the wall time, the throughput of the ordinary
items (overall, and over the first and the last tenth of them), and how
many abandoned threads were still spinning when the run ended; then the
throughput over ten equal slices of the thread run's wall time, beside the
number of abandoned threads spinning meanwhile. Configurations: thread mode
without runaways (the baseline), thread mode with them, and process mode with
them (a stuck worker is killed, so nothing keeps spinning).
"""

from __future__ import annotations

import argparse
import threading
import time
import warnings
from dataclasses import dataclass

import parallax
from parallax.backends import default_workers

TARGET_SECONDS = 0.002
#: an item is a runaway when ``index % RUNAWAY_EVERY == RUNAWAY_OFFSET``
RUNAWAY_EVERY = 10
RUNAWAY_OFFSET = 5

#: set when the benchmark is over: the abandoned threads' runaways then return
_stop = threading.Event()
#: loop count of an ordinary item, set by the driver (process workers get it in the item)
_iterations = 0


def _spin(count: int) -> int:
    total = 0
    for value in range(count):
        total += value * value
    return total


def calibrate(target: float = TARGET_SECONDS) -> int:
    probe = 50_000
    fastest = min(_timed(probe) for _ in range(5))
    return max(1, round(probe * target / fastest))


def _timed(count: int) -> float:
    started = time.perf_counter()
    _spin(count)
    return time.perf_counter() - started


def work(item: tuple[int, int, bool]) -> float:
    """One item: ``(index, loop count, runaway?)``; returns when it finished."""
    _, count, runaway = item
    if runaway:
        # Pure Python that never returns by itself (in a worker process the
        # event is never set: only killing the worker stops it).
        while not _stop.is_set():
            _spin(1000)
    _spin(count)
    return time.perf_counter()


def pool_threads() -> int:
    """Thread-pool threads alive: the pool's workers, and the abandoned
    threads (they keep their names) beyond them."""
    names = [thread.name for thread in threading.enumerate()]
    return sum(1 for name in names
               if name.startswith("parallax-thread") and not name.endswith("watchdog"))


@dataclass
class Outcome:
    label: str
    wall: float
    finished: list[float]  # perf_counter() at the end of each ordinary item
    timeouts: int
    spinning: int
    samples: list[tuple[float, int]]  # (seconds since start, parallax-thread threads alive)
    started: float

    def rate(self, ends: list[float], since: float) -> float:
        span = (ends[-1] - since) if ends else 0.0
        return len(ends) / span if span > 0 else 0.0


def run(mode: str, items: int, runaways: bool, timeout: float, workers: int) -> Outcome:
    data = [(index, _iterations, runaways and index % RUNAWAY_EVERY == RUNAWAY_OFFSET)
            for index in range(items)]
    samples: list[tuple[float, int]] = []
    sampling = threading.Event()
    started = time.perf_counter()

    def sample() -> None:
        while not sampling.wait(0.1):
            samples.append((time.perf_counter() - started, pool_threads()))

    sampler = threading.Thread(target=sample, name="bench-sampler", daemon=True)
    sampler.start()
    try:
        # Unordered: a runaway holding its place in line would stall the
        # run's window of chunks in play, and that would be measured instead
        # of the pool.
        results = list(parallax.imap(work, data, mode=mode, workers=workers, chunksize=1,
                                     timeout=timeout, errors="return", ordered=False))
    finally:
        sampling.set()
        sampler.join()
    wall = time.perf_counter() - started
    finished = sorted(value for value in results if isinstance(value, float))
    timeouts = sum(isinstance(value, parallax.TaskTimeoutError) for value in results)
    spinning = max(0, pool_threads() - workers) if mode == "thread" else 0
    label = f"{mode}, {'with' if runaways else 'no'} runaways"
    return Outcome(label, wall, finished, timeouts, spinning, samples, started)


def report(outcomes: list[Outcome], workers: int, timeout: float) -> None:
    print(f"\n{workers} workers, timeout {timeout:g} s, ordinary items of "
          f"{TARGET_SECONDS * 1e3:g} ms (pure Python)\n")
    print(f"{'configuration':<26} {'wall s':>7} {'timeouts':>8} {'items/s':>8} "
          f"{'first 10%':>9} {'last 10%':>9} {'spinning at end':>15}")
    for outcome in outcomes:
        ends = outcome.finished
        tenth = max(1, len(ends) // 10)
        first = outcome.rate(ends[:tenth], outcome.started)
        last = outcome.rate(ends[-tenth:], ends[-tenth - 1] if len(ends) > tenth else
                            outcome.started)
        overall = outcome.rate(ends, outcome.started)
        print(f"{outcome.label:<26} {outcome.wall:>7.1f} {outcome.timeouts:>8} "
              f"{overall:>8.0f} {first:>9.0f} {last:>9.0f} {outcome.spinning:>15}")
    threaded = next((o for o in outcomes if o.label == "thread, with runaways"), None)
    if threaded is None:
        return
    print("\nthread mode with runaways, over time (ordinary items finished per second, "
          "abandoned threads spinning):")
    slices = 10
    step = threaded.wall / slices
    for index in range(slices):
        low, high = index * step, (index + 1) * step
        done = sum(1 for end in threaded.finished
                   if low <= end - threaded.started < high)
        alive = [count for when, count in threaded.samples if low <= when < high]
        spinning = max(0, max(alive, default=workers) - workers)
        print(f"  {low:6.1f}-{high:6.1f} s  {done / step:8.0f} items/s  "
              f"{spinning:4d} spinning")


def main() -> None:
    global _iterations
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true",
                        help="200 items, 20 runaways, timeout 0.5 s")
    parser.add_argument("--items", type=int, default=1000)
    parser.add_argument("--timeout", type=float, default=2.0)
    parser.add_argument("--workers", type=int, default=None,
                        help="threads (default: the thread pool's default)")
    parser.add_argument("--process-workers", type=int, default=None,
                        help="process workers (default: as many as the threads)")
    arguments = parser.parse_args()
    items, timeout = arguments.items, arguments.timeout
    if arguments.quick:
        items, timeout = 200, 0.5
    workers = arguments.workers or default_workers("thread")
    process_workers = arguments.process_workers or workers
    _iterations = calibrate()
    warnings.simplefilter("ignore")
    outcomes = [
        run("thread", items, False, timeout, workers),
        run("thread", items, True, timeout, workers),
    ]
    _stop.set()  # the abandoned threads may end now
    outcomes.append(run("process", items, True, timeout, process_workers))
    report(outcomes, workers, timeout)
    if process_workers != workers:
        print(f"(process mode ran {process_workers} workers)")


if __name__ == "__main__":
    # Run as the importable module, not as __main__: process workers import
    # ``work`` by name (by value, it would drag this module's event along).
    import importlib

    importlib.import_module("benchmarks.bench_thread_timeouts").main()
