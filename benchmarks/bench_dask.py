"""parallax's dask mode against plain ``client.map`` on the same local cluster.

Run from the repository root (``distributed`` installed)::

    python -m benchmarks.bench_dask             # full sizes, best of 3
    python -m benchmarks.bench_dask --quick     # a smoke run: small sizes, once

Both sides use one ``LocalCluster`` of 2 worker processes with 1 thread each,
on loopback, and the core CPU workloads of ``benchmarks/tasks.py``:
``cpu_small`` (about 100 µs of pure Python per item) and ``cpu_medium``
(about 10 ms). Plain ``client.map`` makes one Dask task per item, so on tiny
items it pays the scheduler's per-task cost (about a millisecond of
scheduler, network and bookkeeping) every time; parallax's auto chunking
makes each task a chunk of ~0.1 s, so that cost is paid once per chunk.

Each timing is warm: the cluster is up and both sides have run once before
being timed. Results are checked against the expected values.
"""

from __future__ import annotations

import argparse
import logging
import statistics
import sys
from collections.abc import Callable
from dataclasses import dataclass
from time import perf_counter
from typing import Any

import parallax
from parallax.backends import available_modes

from .tasks import (
    MEDIUM_ITERATIONS,
    SMALL_ITERATIONS,
    cpu_medium_task,
    cpu_small_task,
    spin_expected,
)

WORKERS = 2


@dataclass(frozen=True)
class Case:
    name: str
    fn: Callable[[int], int]
    iterations: int
    size: int
    quick_size: int


CASES = (
    Case("cpu_small (~100 µs)", cpu_small_task, SMALL_ITERATIONS, 20_000, 2_000),
    Case("cpu_medium (~10 ms)", cpu_medium_task, MEDIUM_ITERATIONS, 200, 40),
)


def plain_map(client: Any, fn: Callable[[int], int], items: list[int]) -> list[int]:
    """One Dask task per item, the way the Dask docs show it."""
    futures = client.map(fn, items, pure=False)
    results: list[int] = client.gather(futures)
    del futures
    return results


def parallax_map(client: Any, fn: Callable[[int], int], items: list[int]) -> list[int]:
    return parallax.map(fn, items, mode="dask", client=client)


def timed(
    run: Callable[[Any, Callable[[int], int], list[int]], list[int]],
    client: Any,
    fn: Callable[[int], int],
    items: list[int],
    expected: list[int],
    repeat: int,
) -> list[float]:
    times = []
    for _ in range(repeat):
        started = perf_counter()
        results = run(client, fn, items)
        times.append(perf_counter() - started)
        if results != expected:
            raise AssertionError("wrong results")
    return times


def serial_seconds(fn: Callable[[int], int], sample: int = 50) -> float:
    """Seconds per item in this process, to show the ideal parallel time."""
    started = perf_counter()
    for x in range(sample):
        fn(x)
    return (perf_counter() - started) / sample


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="small sizes, one run each")
    parser.add_argument("--repeat", type=int, default=3, help="timed runs per side (best kept)")
    args = parser.parse_args(argv)
    repeat = 1 if args.quick else args.repeat

    try:
        from distributed import Client, LocalCluster
    except ImportError:
        print("needs the 'distributed' package: pip install 'parallax[dask]'", file=sys.stderr)
        return 2
    if "dask" not in available_modes():  # before the backend is registered built in
        from parallax.backends._dask import DaskBackend

        parallax.register_backend("dask", DaskBackend)

    cluster = LocalCluster(
        n_workers=WORKERS,
        threads_per_worker=1,
        processes=True,
        host="127.0.0.1",
        dashboard_address="127.0.0.1:0",  # not 8787: several clusters at once
        silence_logs=logging.ERROR,
    )
    client = Client(cluster, set_as_default=False)
    rows = []
    try:
        for case in CASES:
            size = case.quick_size if args.quick else case.size
            items = list(range(size))
            expected = [spin_expected(x, case.iterations) for x in items]
            per_item = serial_seconds(case.fn)
            # Warm both sides: imports on the workers, parallax's pooled backend.
            plain_map(client, case.fn, items[:50])
            parallax_map(client, case.fn, items[:50])
            plain = timed(plain_map, client, case.fn, items, expected, repeat)
            ours = timed(parallax_map, client, case.fn, items, expected, repeat)
            rows.append((case.name, size, per_item * size / WORKERS, min(plain), min(ours)))
            print(
                f"{case.name}: client.map {statistics.median(plain):.2f} s median, "
                f"parallax {statistics.median(ours):.2f} s median",
                file=sys.stderr,
            )
    finally:
        from parallax import _pools

        _pools.shutdown_pools()  # parallax's backend over this client, before it closes
        client.close()
        cluster.close()

    print(f"\nLocalCluster: {WORKERS} worker processes x 1 thread, loopback; best of {repeat}\n")
    print(f"{'workload':<22} {'items':>7} {'ideal s':>8} {'client.map s':>13} "
          f"{'parallax s':>11} {'speed-up':>9}")
    for name, size, ideal, plain_best, ours_best in rows:
        print(f"{name:<22} {size:>7} {ideal:>8.2f} {plain_best:>13.2f} "
              f"{ours_best:>11.2f} {plain_best / ours_best:>8.1f}x")
    print("\nideal: serial time per item measured here x items / workers")
    return 0


if __name__ == "__main__":
    sys.exit(main())
