"""``parallax demo``: the auto-selector on a CPU-bound and an I/O-bound workload.

The workload functions live here, at module level in an importable module,
so process workers (fresh interpreters) import them by reference.

Every figure the demo prints is measured or plainly computed, and says which:
the serial time of the CPU-bound job is measured on a few items run one
after another in the caller; that of the sleeping job is computed from the
sleep length (the sleeps alone take that long), not run.
"""

from __future__ import annotations

import platform
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final, TextIO

from ._api import map as parallel_map
from ._config import using
from ._host import gil_enabled, usable_cpus
from ._recorder import Monitor, monitor
from ._stats import Stats

__all__ = ["CPU_ITEMS", "IO_ITEMS", "SLEEP_SECONDS", "run_demo", "sleepy", "spin"]

#: iterations of the pure-Python loop: about 5-10 ms per item on a current CPU
SPIN_ITERATIONS: Final = 100_000
CPU_ITEMS: Final = 100
#: items of the CPU-bound job run serially to measure the serial time
SERIAL_SAMPLE: Final = 10
SLEEP_SECONDS: Final = 0.02
IO_ITEMS: Final = 200


def spin(seed: int) -> int:
    """CPU-bound work: a pure-Python loop that holds the GIL all along."""
    total = seed
    for step in range(SPIN_ITERATIONS):
        total = (total * 31 + step) % 1_000_003
    return total


def sleepy(item: int) -> int:
    """I/O-bound work: waits, as a network or disk call would, using no CPU."""
    time.sleep(SLEEP_SECONDS)
    return item * 2


def _seconds(value: float) -> str:
    if value >= 1:
        return f"{value:.2f} s"
    return f"{value * 1e3:.0f} ms"


@dataclass(frozen=True, slots=True)
class _Outcome:
    wall: float
    serial: float
    serial_how: str
    stats: Stats


def _timed(fn: Callable[[int], int], items: list[int], mon: Monitor) -> tuple[float, Stats]:
    """Wall time of ``parallax.map(fn, items)`` and the Stats it recorded."""
    before = len(mon.runs)
    started = time.perf_counter()
    parallel_map(fn, items)
    wall = time.perf_counter() - started
    if len(mon.runs) <= before:
        raise RuntimeError("parallax.monitor() recorded no run for the demo's map call")
    return wall, mon.runs[before]


def _report(out: TextIO, number: int, title: str, outcome: _Outcome) -> None:
    stats = outcome.stats
    print(f"{number}. {title}", file=out)
    print(f"   auto chose  {stats.mode}, {stats.workers} workers", file=out)
    print(f"   because     {stats.reason}", file=out)
    print(f"   wall time   {_seconds(outcome.wall)} (the whole parallax.map call)", file=out)
    print(f"   serial      {_seconds(outcome.serial)} ({outcome.serial_how})", file=out)
    print(f"   speed-up    {outcome.serial / outcome.wall:.1f}x", file=out)
    print(f"   efficiency  {stats.efficiency:.0%} (busy time / (wall time x workers))", file=out)
    print(file=out)


def run_demo(out: TextIO) -> None:
    """Run both workloads with ``mode="auto"`` and print what happened.

    Args:
        out: where the report goes (the CLI passes ``sys.stdout``).

    Raises:
        Exception: whatever a run raised; the workloads themselves never fail.
    """
    cpus = usable_cpus()
    build = "GIL enabled" if gil_enabled() else "GIL disabled (free-threaded)"
    print(
        f"parallax demo: mode='auto' on two workloads "
        f"(Python {platform.python_version()}, {build}, {cpus} usable CPUs)\n",
        file=out,
    )
    cpu_items = list(range(CPU_ITEMS))
    io_items = list(range(IO_ITEMS))

    # Measured before any pool exists, so the serial figure is not slowed
    # down by workers competing for the same cores.
    started = time.perf_counter()
    for item in cpu_items[:SERIAL_SAMPLE]:
        spin(item)
    per_item = (time.perf_counter() - started) / SERIAL_SAMPLE

    # using("auto") rather than the default: PARALLAX_MODE, if set, would
    # otherwise override the mode this demo is about.
    with using("auto"), monitor() as mon:
        cpu_wall, cpu_stats = _timed(spin, cpu_items, mon)
        io_wall, io_stats = _timed(sleepy, io_items, mon)

    _report(
        out, 1,
        f"CPU-bound: a pure-Python loop, {CPU_ITEMS} items of ~{_seconds(per_item)}",
        _Outcome(cpu_wall, per_item * CPU_ITEMS,
                 f"measured: {SERIAL_SAMPLE} items run one after another here, "
                 f"x {CPU_ITEMS // SERIAL_SAMPLE}", cpu_stats),
    )
    _report(
        out, 2,
        f"I/O-bound: time.sleep({SLEEP_SECONDS}), {IO_ITEMS} items",
        _Outcome(io_wall, SLEEP_SECONDS * IO_ITEMS,
                 f"computed, not run: {IO_ITEMS} x {_seconds(SLEEP_SECONDS)} of sleep",
                 io_stats),
    )
    print("Every run recorded by parallax.monitor():", file=out)
    print(mon.summary(), file=out)

