"""What recording stats costs: a 1,000,000-item run of ``x*2``, records on vs off.

    python benchmarks/bench_recording.py [--items N] [--repeat K]

Prints the median time of each variant in one process, and the recording
overhead = (records on - records off) / records off. The target is < 10%.
Recording keeps one record per chunk, so its cost does not grow with the
number of items; the per-item work of the run (calling the function) is the
same in both variants.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import parallax


def double(x: int) -> int:
    return x * 2


def median_seconds(run: Callable[[], object], repeat: int) -> float:
    times = []
    for _ in range(repeat):
        started = time.perf_counter()
        run()
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--items", type=int, default=1_000_000)
    parser.add_argument("--repeat", type=int, default=9)
    args = parser.parse_args()
    data = list(range(args.items))
    expected = [x * 2 for x in data]
    print(f"{args.items:,} items of x*2, median of {args.repeat} runs\n")
    print(f"| {'variant':<34} | {'seconds':>8} | {'recording overhead':>18} |")
    print(f"|{'-' * 36}|{'-' * 10}|{'-' * 20}|")
    plain = median_seconds(lambda: [double(x) for x in data], args.repeat)
    print(f"| {'list comprehension':<34} | {plain:>8.4f} | {'':>18} |")
    for mode in ("serial", "thread", "process"):
        assert parallax.map(double, data, mode=mode) == expected  # warm, and checked
        off = median_seconds(
            lambda mode=mode: parallax.map(double, data, mode=mode, record_tasks=False),
            args.repeat,
        )
        on = median_seconds(lambda mode=mode: parallax.map(double, data, mode=mode), args.repeat)
        overhead = (on - off) / off
        print(f"| {'parallax ' + mode + ', records off':<34} | {off:>8.4f} | {'':>18} |")
        print(f"| {'parallax ' + mode + ', records on':<34} | {on:>8.4f} | {overhead:>17.1%} |")


if __name__ == "__main__":
    main()
