"""One measurement of one case, in a fresh interpreter (run by ``benchmarks/run.py``).

``python -m benchmarks.case WORKLOAD CASE_ID SIZE [--profile PATH]`` imports
the case's library, then times two calls on the same pool:

* cold: pool creation and the first call, until the results are in hand;
* warm: a second call, same process, same pool.

It checks both results against the expected ones and prints one line,
``RESULT {json}``, with ``status`` ``ok``, ``wrong`` (a result differed),
``na`` (the parallax mode does not exist yet) or ``error``. With
``--profile PATH`` the cold call runs under cProfile (in this process only;
its timing is then not comparable) and the statistics are written to PATH.
For the stream workload a thread samples the resident memory of this process
and of all its children every few milliseconds.
"""

from __future__ import annotations

import json
import os
import sys
import threading
import time
from collections.abc import Callable
from typing import Any

from .peers import ParallaxRunner, Runner, find_case
from .workloads import WORKLOADS, Workload

RESULT_PREFIX = "RESULT "
SAMPLE_SECONDS = 0.005
#: proportional set size is read every this many samples (reading
#: ``smaps_rollup`` walks a process's mappings: dearer than its RSS)
PSS_EVERY = 4


class MemorySampler:
    """Peak resident memory of this process and its children, sampled in a thread.

    Two views: resident set size (RSS) of the parent and of parent + children,
    where a page shared by several processes (a fork's, a library's) counts
    once per process; and the children's proportional set size (PSS, Linux
    ``/proc/PID/smaps_rollup``), where a shared page is split between the
    processes sharing it: what the issue #17 memory target measures.
    """

    def __init__(self) -> None:
        import psutil

        self.psutil = psutil
        self.process = psutil.Process(os.getpid())
        self.baseline = self.process.memory_info().rss
        self.peak_total = self.peak_parent = self.baseline
        #: peak PSS of the children together (None: not readable here)
        self.peak_children_pss: int | None = None
        self._samples = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="rss-sampler", daemon=True)

    def __enter__(self) -> MemorySampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.sample()

    def sample(self) -> None:
        parent = self.process.memory_info().rss
        total = parent
        children = self.process.children(recursive=True)
        for child in children:
            try:
                total += child.memory_info().rss
            except (self.psutil.NoSuchProcess, self.psutil.AccessDenied):
                continue
        self.peak_parent = max(self.peak_parent, parent)
        self.peak_total = max(self.peak_total, total)
        self._samples += 1
        if self._samples % PSS_EVERY == 1 or self._stop.is_set():
            proportional = sum(_pss(child.pid) or 0 for child in children)
            if children and (self.peak_children_pss is None
                             or proportional > self.peak_children_pss):
                self.peak_children_pss = proportional

    def _run(self) -> None:
        while not self._stop.wait(SAMPLE_SECONDS):
            self.sample()


def _pss(pid: int) -> int | None:
    """Proportional set size of process ``pid`` in bytes (None: gone, or not Linux)."""
    try:
        with open(f"/proc/{pid}/smaps_rollup", "rb") as rollup:
            for line in rollup:
                if line.startswith(b"Pss:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError):
        return None
    return None


def _mismatch(got: Any, expected: Any) -> str | None:
    if got == expected:
        return None
    if isinstance(got, list) and isinstance(expected, list):
        if len(got) != len(expected):
            return f"{len(got)} results instead of {len(expected)}"
        for index, (value, wanted) in enumerate(zip(got, expected, strict=True)):
            if value != wanted:
                return f"item {index}: {value!r:.60} instead of {wanted!r:.60}"
    return f"{got!r:.60} instead of {expected!r:.60}"


def _timed(call: Callable[[], Any]) -> tuple[Any, float]:
    started = time.perf_counter()
    outcome = call()
    return outcome, time.perf_counter() - started


def measure(workload: Workload, runner: Runner, size: int,
            profile: str | None = None) -> dict[str, Any]:
    """Import, cold call, warm call, checks; the fields of the RESULT line."""
    fn = workload.fn
    started = time.perf_counter()
    runner.load()
    imported = time.perf_counter() - started

    if workload.kind == "stream":

        def call() -> Any:
            return sum(runner.imap(fn, workload.make_stream(size)))

        expected: Any = workload.expected_sum(size)
        sampler: MemorySampler | None = MemorySampler()
    else:
        items = workload.make_items(size)

        def call() -> Any:
            return runner.map(fn, items)

        expected = None
        sampler = None

    def cold_call() -> Any:
        runner.start()
        if profile is None:
            return call()
        import cProfile

        with cProfile.Profile() as profiler:
            outcome = call()
        profiler.dump_stats(profile)
        return outcome

    try:
        if sampler is not None:
            with sampler:
                cold_result, cold = _timed(cold_call)
                warm_result, warm = _timed(call)
        else:
            cold_result, cold = _timed(cold_call)
            warm_result, warm = _timed(call)
    finally:
        runner.stop()

    if workload.kind == "stream":
        note = runner.describe(fn, workload.make_stream(size))
    else:
        note = runner.describe(fn, items)
        expected = workload.expected(size)
    wrong = _mismatch(cold_result, expected) or _mismatch(warm_result, expected)
    result: dict[str, Any] = {
        "status": "wrong" if wrong else "ok",
        "import": imported,
        "cold": cold,
        "warm": warm,
        "note": wrong or note,
    }
    if sampler is not None:
        result["rss_growth"] = sampler.peak_total - sampler.baseline
        result["parent_growth"] = sampler.peak_parent - sampler.baseline
        if sampler.peak_children_pss is not None:
            result["children_pss"] = sampler.peak_children_pss
    return result


def main(argv: list[str]) -> int:
    import argparse

    parser = argparse.ArgumentParser(description="Measure one benchmark case.")
    parser.add_argument("workload", choices=sorted(WORKLOADS))
    parser.add_argument("case_id")
    parser.add_argument("size", type=int)
    parser.add_argument("--profile", metavar="PATH", help="cProfile the cold call into PATH")
    args = parser.parse_args(argv)
    workload = WORKLOADS[args.workload]
    case = find_case(workload, args.size, args.case_id)
    runner = case.make()
    try:
        result = measure(workload, runner, args.size, args.profile)
    except Exception as exc:
        message = f"{type(exc).__name__}: {exc}"
        if isinstance(runner, ParallaxRunner) and "unknown mode" in str(exc):
            result = {"status": "na", "note": "n/a (not yet)"}
        elif isinstance(runner, ParallaxRunner) and runner.mode == "free-threaded":
            result = {"status": "na", "note": f"n/a: {message}"}
        else:
            result = {"status": "error", "note": message}
    print(RESULT_PREFIX + json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
