"""How fast two processes can run fft_inputs on this machine, transport aside.

    python -m benchmarks.fft_ceiling [--repeats N]

The issue #15 target for ``fft_inputs`` (parallax process >= 1.7x the serial
loop) is a ratio this script bounds from above, with no library involved:

- **serial**: the 120 FFTs of ``bench_large_data``'s fft_inputs in one process;
- **forked pair**: two processes forked after the arrays exist, each running
  its half of them: no pickling, no copy, no transfer of any kind, the best
  any two workers can do (they still share the caches and the memory bus);
- **copy**: the CPU time of writing every input once into fresh shared
  memory (a memfd each, ``pwrite``): what a transport pays when its segments
  are new, as on a pool's first call over large inputs; and the same copy
  into segments written once already (recycled), the least it can pay.

A process-mode run must do the forked pair's work plus one copy of the
inputs, on the same 2 cores; the ceilings printed divide the serial time by
``pair + copy / 2``. Medians of ``--repeats`` rounds, interleaved.
"""

from __future__ import annotations

import argparse
import mmap
import os
import statistics
import time

import numpy as np

from benchmarks.arrays import fft_arrays, fft_task

COUNT = 120


def serial(arrays: list[np.ndarray]) -> float:
    started = time.perf_counter()
    for values in arrays:
        fft_task(values)
    return time.perf_counter() - started


def forked_pair(arrays: list[np.ndarray]) -> float:
    started = time.perf_counter()
    children = []
    for half in (arrays[0::2], arrays[1::2]):
        pid = os.fork()
        if pid == 0:  # pragma: no cover (a child)
            for values in half:
                fft_task(values)
            os._exit(0)
        children.append(pid)
    for pid in children:
        os.waitpid(pid, 0)
    return time.perf_counter() - started


def copy_fresh(arrays: list[np.ndarray]) -> float:
    started = time.process_time()
    for values in arrays:
        fd = os.memfd_create("ceiling")
        try:
            os.pwrite(fd, values.data.cast("B"), 0)
        finally:
            os.close(fd)
    return time.process_time() - started


def copy_recycled(arrays: list[np.ndarray]) -> float:
    size = arrays[0].nbytes
    fd = os.memfd_create("ceiling")
    try:
        os.ftruncate(fd, size)
        with mmap.mmap(fd, size) as segment:
            segment[:] = arrays[0].data.cast("B")  # its pages exist from here on
            started = time.process_time()
            for values in arrays:
                segment[:] = values.data.cast("B")
            return time.process_time() - started
    finally:
        os.close(fd)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    arrays = fft_arrays(COUNT)
    rows: dict[str, list[float]] = {"serial": [], "pair": [], "fresh": [], "recycled": []}
    for _ in range(args.repeats):
        rows["serial"].append(serial(arrays))
        rows["pair"].append(forked_pair(arrays))
        rows["fresh"].append(copy_fresh(arrays))
        rows["recycled"].append(copy_recycled(arrays))
    median = {name: statistics.median(values) for name, values in rows.items()}
    print(f"fft_inputs, {COUNT} arrays of {arrays[0].nbytes >> 20} MB, {os.cpu_count()} CPUs, "
          f"medians of {args.repeats}:")
    print(f"  serial loop                       {median['serial']:.3f} s")
    print(f"  forked pair, no transfer          {median['pair']:.3f} s "
          f"({median['serial'] / median['pair']:.2f}x serial)")
    print(f"  one copy of the inputs: fresh shared pages {median['fresh']:.3f} s CPU, "
          f"recycled ones {median['recycled']:.3f} s CPU")
    for kind in ("recycled", "fresh"):
        ceiling = median["serial"] / (median["pair"] + median[kind] / 2)
        print(f"  ceiling of a process transport, {kind} segments: {ceiling:.2f}x serial")


if __name__ == "__main__":
    main()
