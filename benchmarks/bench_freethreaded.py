"""Pure-Python CPU work on threads, processes and free threads, side by side (issue #14).

Runs under any interpreter; it is meant for the free-threaded CPython 3.13t::

    PY=$(bash /work/shared/python/ft-venv.sh /tmp/venv-ft -e .)   # prints its python last
    $PY -m benchmarks.bench_freethreaded            # 200 items, 3 repeats
    $PY -m benchmarks.bench_freethreaded --quick    # 80 items, 1 repeat

Two workloads of about 10 ms of pure Python per item (each one's loop count
is calibrated on the running interpreter, which on 3.13t runs single-threaded
code slower: its specialising interpreter is off; reading locals is cheaper
than reading globals, so ``private`` runs more iterations in its 10 ms):

* ``shared``: every iteration reads two module-level ints. On a free-threaded
  build every thread then updates the same objects' shared reference counts;
* ``private``: the same loop over ints the call makes itself, which only the
  thread that made them counts.

Peers, 2 workers each: the serial loop, parallax free-threaded, thread,
process and auto (with the mode auto chose), ``ThreadPoolExecutor(2)`` and
``ProcessPoolExecutor(2)``; warm pools, medians of repeats, speed-ups over
the serial loop of the same run. The section (with the interpreter's GIL
state) is printed and written to ``benchmarks/.results/freethreaded.md``.
"""

from __future__ import annotations

import argparse
import functools
import os
import sys
import time
from collections.abc import Callable

from . import tasks
from .peers import (
    ParallaxRunner,
    ProcessPoolExecutorRunner,
    SerialRunner,
    ThreadPoolExecutorRunner,
)
from .standalone import (
    Case,
    Peer,
    Task,
    case_table,
    child_main,
    common_arguments,
    gil_state,
    header_lines,
    make_quiet,
    run_all,
    write_report,
)

WORKERS = 2
FULL_REPEATS = 3
MODULE = "benchmarks.bench_freethreaded"
TARGET_SECONDS = 0.010
#: the loop count of one item of a case, set by the driver for its measuring interpreters
ITERATIONS_VARIABLE = "BENCH_FT_ITERATIONS_{case}"
#: every how many items the check recomputes one in the measuring interpreter
CHECK_EVERY = 25


def calibrate(task: Callable[..., int], target: float = TARGET_SECONDS,
              probe: int = 40_000) -> int:
    """Loop iterations of ``task`` that take ``target`` seconds on this interpreter.

    From the fastest of 7 probes: the one other processes disturbed least.
    """
    timings = []
    for _ in range(7):
        started = time.perf_counter()
        task(0, probe)
        timings.append(time.perf_counter() - started)
    return max(1, round(probe * target / min(timings)))


def _iterations(case: str, task: Callable[..., int]) -> int:
    return int(os.environ.get(ITERATIONS_VARIABLE.format(case=case)) or calibrate(task))


def _task(task: Callable[..., int], count: int, iterations: int) -> Task:
    fn = functools.partial(task, iterations=iterations)
    items = list(range(count))

    def check(results: list[int]) -> str | None:
        if len(results) != count:
            return f"{len(results)} results instead of {count}"
        for index in range(0, count, CHECK_EVERY):
            if results[index] != fn(index):
                return f"item {index}: {results[index]} instead of {fn(index)}"
        return None

    return Task(fn, items, check)


def _case(name: str, task: Callable[..., int], description: str) -> Case:
    return Case(name, description, 200, 80, (120, 60),
                build=lambda count: _task(task, count, _iterations(name, task)),
                warm=lambda: _task(task, 4, 100))


TASKS: dict[str, Callable[..., int]] = {
    "shared": tasks.shared_constants_task,
    "private": tasks.private_constants_task,
}
CASES = (
    _case("shared", TASKS["shared"],
          "~10 ms of pure Python per item, reading module-level int constants"),
    _case("private", TASKS["private"], "the same loop over int constants made in each call"),
)


def _parallax(mode: str) -> Peer:
    return Peer(f"parallax-{mode}", f"parallax {mode}",
                lambda size: ParallaxRunner(mode, workers=WORKERS))


PEERS = (
    Peer("serial", "serial loop", lambda size: SerialRunner()),
    _parallax("free-threaded"),
    _parallax("thread"),
    _parallax("process"),
    _parallax("auto"),
    Peer("tpe", f"ThreadPoolExecutor({WORKERS}).map",
         lambda size: ThreadPoolExecutorRunner(WORKERS)),
    Peer("ppe", f"ProcessPoolExecutor({WORKERS}).map (chunksize=1)",
         lambda size: ProcessPoolExecutorRunner(workers=WORKERS)),
)


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    common_arguments(parser, repeats=FULL_REPEATS)
    parser.add_argument("--iterations", type=int, default=None,
                        help="loop iterations per item (default: calibrated to ~10 ms here)")
    args = parser.parse_args(argv)
    if args.child:
        return child_main(args.child, CASES, PEERS)
    repeats = args.repeats or (1 if args.quick else FULL_REPEATS)
    iterations = {case.id: args.iterations or calibrate(TASKS[case.id]) for case in CASES}
    for case_id, count in iterations.items():  # the measuring interpreters read them
        os.environ[ITERATIONS_VARIABLE.format(case=case_id)] = str(count)
    counts = ", ".join(f"{case_id} {count:,}" for case_id, count in iterations.items())
    print(f"{gil_state()}; loop iterations per item: {counts}", file=sys.stderr)
    started = time.perf_counter()
    tables = run_all(MODULE, CASES, PEERS, quick=args.quick, repeats=repeats,
                     quiet=make_quiet(args))
    elapsed = time.perf_counter() - started
    states = sorted({run["gil"] for table in tables for row in table.rows for run in row.runs
                     if "gil" in run})
    lines = header_lines(
        f"Free-threading: pure-Python CPU work, {gil_state()}",
        ("python -m benchmarks.bench_freethreaded " + " ".join(argv)).strip(),
        quick=args.quick, repeats=repeats, elapsed=elapsed, libraries=("parallax",),
        extra=[f"- loop iterations per item: {counts} "
               f"({'as given' if args.iterations else 'calibrated to ~10 ms on this interpreter'}"
               f"); in the measuring interpreters: {'; '.join(states) or '—'}",
               f"- {WORKERS} workers everywhere; ProcessPoolExecutor forks its workers, "
               "parallax process forks them from its fork template (default start method "
               "on Linux)"],
    )
    for table in tables:
        lines += case_table(table)
    return write_report("freethreaded", lines, tables, args.output)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
