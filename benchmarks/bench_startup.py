"""Fixed costs of issue #17: a script's first call, tiny work, I/O auto's probe.

    python benchmarks/bench_startup.py [--repeats K] [--interpreters N]
                                       [--only first,tiny,sleep,pool,preload] [--src PATH]
                                       [--methods template,fresh]

``--src``: measure the parallax of another source tree (a ``src`` directory,
e.g. ``git archive <commit> src | tar -x -C /tmp/before`` for a "before" figure).

- **first**: ``import parallax`` plus a first ``parallax.map(f, range(10))``
  in auto mode (``f`` defined in the script, as in a script), timed inside
  each of N fresh interpreters (median), against a first
  ``ThreadPoolExecutor().map`` the same way; and the CPU time (getrusage) of
  the whole interpreter over a bare ``python -c pass``. Bytecode is cached
  (``PYTHONPYCACHEPREFIX``) and compiled by an untimed first run, as
  ``benchmarks/run.py`` does.
- **tiny**: ``x * 2`` over 100,000 and 1,000,000 items in one warm process:
  auto mode against ``[double(x) for x in items]``, repeats interleaved,
  medians; the target is >= 0.95x of the loop. Two more cases say where the
  rest goes: auto over the same items as a tuple (which cannot grow, so its
  tail needs no bound), and the floor for a list, which parallax cannot go
  below: the loop over the list's tail through ``islice`` (the bound that
  keeps a function appending to its own input from running on into what it
  appended), with 64 values moved in front of its result as the probe's are.
- **sleep**: ``time.sleep(0.02)`` x 400 in auto mode against a
  256-thread ``ThreadPoolExecutor``, each in a fresh interpreter (pool start
  included, for both), repeats interleaved, medians; the target is <= 1.2x.

- **pool**: process pools, each case in N fresh interpreters (median), parallax
  imported untimed: a cold pool of 2 workers + its first map of 10 items (the
  fork template's start included, for the template), a second cold pool in
  the same script right after it (the template already up; the first pool
  still open), the cost of a worker start as
  seen through ``max_tasks_per_worker=1`` (20 items, one worker, per item),
  ``multiprocessing.Pool(2)`` the same way; and the proportional set size
  (PSS, ``/proc/PID/smaps_rollup``: shared pages counted once) of two warm
  workers (plus the template, which counts too) against the caller's, in
  the script's first pool (after its timed map) and in a later one. Each
  case twice: with functions defined in the script (sent by value, with
  cloudpickle) and with importable ones (sent by reference).
  ``--methods``: the start methods measured (``default`` passes none: for a
  ``--src`` without the option); ``--before PATH``: the same cases for
  another source tree, repeats interleaved with this tree's (before/after
  figures from one run).
- **preload**: pools of a function that uses NumPy (the script imports it
  too), with and without ``preload="numpy"``, over both start methods, each
  case in ``--repeats`` fresh interpreters (median): a cold pool of 2 workers
  + its first map of 10 items, a worker start through
  ``max_tasks_per_worker=1`` (10 items, per item), and the PSS of the first
  pool's 2 workers plus every template of the script.

Prints a markdown section (paste it into benchmarks/RESULTS.md).
"""

from __future__ import annotations

import argparse
import itertools
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterable
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PYCACHE = ROOT / "benchmarks" / ".results" / "pycache"
#: the parallax source measured (``--src``)
SOURCE = [ROOT / "src"]

FIRST_PARALLAX = """
import time
started = time.perf_counter()
import parallax

def double(x):
    return x * 2

assert parallax.map(double, range(10)) == list(range(0, 20, 2))
print((time.perf_counter() - started) * 1e3)
"""

FIRST_THREADS = """
import time
started = time.perf_counter()
from concurrent.futures import ThreadPoolExecutor

def double(x):
    return x * 2

with ThreadPoolExecutor() as pool:
    assert list(pool.map(double, range(10))) == list(range(0, 20, 2))
print((time.perf_counter() - started) * 1e3)
"""

SLEEP_PARALLAX = """
import time
import parallax

# Imports done untimed, as the ThreadPoolExecutor's (the first call's
# imports are measured above): a thread pool of another size loads them.
parallax.map(abs, [1], mode="thread", workers=1)

def nap(x):
    time.sleep(0.02)
    return x

started = time.perf_counter()
assert parallax.map(nap, range(400){keywords}) == list(range(400))
print((time.perf_counter() - started) * 1e3)
"""

SLEEP_THREADS = """
import time
from concurrent.futures import ThreadPoolExecutor

def nap(x):
    time.sleep(0.02)
    return x

started = time.perf_counter()
with ThreadPoolExecutor(256) as pool:
    assert list(pool.map(nap, range(400))) == list(range(400))
print((time.perf_counter() - started) * 1e3)
"""


#: the pool scripts' reader of a process's proportional set size, in MB
PSS_HELPER = """
def pss(pid):
    with open(f"/proc/{pid}/smaps_rollup") as rollup:
        for line in rollup:
            if line.startswith("Pss:"):
                return int(line.split()[1]) / 1024
    return 0.0
"""

POOL_PARALLAX = """
import os, time
import parallax

{functions}

{pss}
def memory_of(pool):
    # Both workers, warm, then the proportional set size of the pool's processes.
    workers = set()
    for _ in range(50):
        workers |= set(pool.map(pid, PID_ITEMS, chunksize=1))
        if len(workers) >= 2:
            break
    time.sleep(0.2)
    try:
        from parallax import _template
        template = _template.running_pid()
    except ImportError:
        template = None
    return (sum(pss(worker) for worker in workers), pss(template) if template else 0.0,
            pss(os.getpid()))

options = dict({options})
started = time.perf_counter()
with parallax.Executor("process", workers=2, **options) as pool:
    assert list(pool.map(double, range(10))) == list(range(0, 20, 2))
    first = (time.perf_counter() - started) * 1e3
    # Right after the first (no idle time for a template to use in between).
    started = time.perf_counter()
    with parallax.Executor("process", workers=2, **options) as other:
        assert list(other.map(double, range(10))) == list(range(0, 20, 2))
    second = (time.perf_counter() - started) * 1e3
    memory, memory_template, caller = memory_of(pool)  # a script's first pool
with parallax.Executor("process", workers=1, max_tasks_per_worker=1, **options) as pool:
    list(pool.map(double, range(2)))
    started = time.perf_counter()
    assert list(pool.map(double, range(20), chunksize=1)) == list(range(0, 40, 2))
    respawn = (time.perf_counter() - started) * 1e3 / 20
with parallax.Executor("process", workers=2, **options) as pool:
    later = memory_of(pool)  # a later pool's
print(first, second, respawn, memory, memory_template, caller, *later)
"""

#: the pool cases' functions: defined in the script (sent by value, with
#: cloudpickle, which the worker then needs too) or importable ones (sent by
#: reference, plain pickle: no cloudpickle anywhere)
FUNCTIONS = {
    "by value": """
def double(x):
    return x * 2

def pid(_):
    return os.getpid()

PID_ITEMS = range(40)
""",
    "by reference": """
import functools, operator

double = functools.partial(operator.mul, 2)
pid = operator.call
PID_ITEMS = [os.getpid] * 40
""",
}

POOL_MULTIPROCESSING = """
import time
import multiprocessing

def double(x):
    return x * 2

if __name__ == "__main__":
    started = time.perf_counter()
    with multiprocessing.Pool(2) as pool:
        assert pool.map(double, range(10)) == list(range(0, 20, 2))
    print((time.perf_counter() - started) * 1e3)
"""


#: ``--only preload``: pools whose function uses NumPy, with and without
#: ``preload="numpy"``; prints the first pool's time, the worker start with
#: ``max_tasks_per_worker=1`` and the memory of the first pool's processes
POOL_PRELOAD = """
import os, time
import numpy as np
import parallax
from parallax import _template

def total(n):
    return float(np.arange(n).sum())

def where(_):
    return os.getpid()

{pss}
options = dict({options})
expected = [float(n * (n - 1) // 2) for n in range(10)]
started = time.perf_counter()
with parallax.Executor("process", workers=2, **options) as pool:
    assert list(pool.map(total, range(10))) == expected
    first = (time.perf_counter() - started) * 1e3
    workers = set()
    for _ in range(50):
        workers |= set(pool.map(where, range(40), chunksize=1))
        if len(workers) >= 2:
            break
    time.sleep(0.2)
    memory = sum(pss(pid) for pid in workers)
    memory += sum(pss(pid) for pid in _template.running_pids())
with parallax.Executor("process", workers=1, max_tasks_per_worker=1, **options) as pool:
    list(pool.map(total, range(2)))
    started = time.perf_counter()
    assert list(pool.map(total, range(10), chunksize=1)) == expected
    respawn = (time.perf_counter() - started) * 1e3 / 10
print(first, respawn, memory)
"""


def _environment(source: Path | None = None) -> dict[str, str]:
    env = dict(os.environ, PYTHONPYCACHEPREFIX=str(PYCACHE))
    env.pop("PYTHONDONTWRITEBYTECODE", None)  # a cached .pyc, as an installed package has
    src = str(source or SOURCE[0])
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [src, env.get("PYTHONPATH")]))
    return env


def _child(code: str) -> tuple[float, float]:
    """(milliseconds the child printed, CPU milliseconds of the child)."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    out = subprocess.run([sys.executable, "-c", code], env=_environment(), check=True,
                         capture_output=True, text=True, timeout=60).stdout
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime) * 1e3
    return float(out.split()[-1]) if out.strip() else 0.0, cpu


def _child_numbers(code: str, source: Path | None = None) -> list[float]:
    out = subprocess.run([sys.executable, "-c", code], env=_environment(source), check=True,
                         capture_output=True, text=True, timeout=120).stdout
    return [float(word) for word in out.split()]


def _interleaved(codes: dict[str, str], repeats: int) -> dict[str, list[tuple[float, float]]]:
    for code in codes.values():
        _child(code)  # compiles and caches the bytecode; untimed
    results: dict[str, list[tuple[float, float]]] = {name: [] for name in codes}
    for _ in range(repeats):
        for name, code in codes.items():
            results[name].append(_child(code))
    return results


def first_call(interpreters: int) -> list[str]:
    runs = _interleaved({"parallax": FIRST_PARALLAX, "threads": FIRST_THREADS,
                         "bare": "print(0)"}, interpreters)
    median = statistics.median
    wall = {name: median(ms for ms, _ in rows) for name, rows in runs.items()}
    cpu = {name: median(c for _, c in rows) for name, rows in runs.items()}
    low = {name: min(ms for ms, _ in rows) for name, rows in runs.items()}
    verdict = "met" if wall["parallax"] <= 15 else "**MISSED**"
    return [
        f"### first call: import + first map of 10 items, {interpreters} fresh interpreters",
        "",
        "| case | import + first call ms (median) | fastest ms | interpreter CPU ms over bare |",
        "|---|---|---|---|",
        f"| `import parallax; parallax.map(double, range(10))` (auto) | {wall['parallax']:.1f} "
        f"| {low['parallax']:.1f} | {cpu['parallax'] - cpu['bare']:.1f} |",
        f"| `ThreadPoolExecutor().map(double, range(10))` | {wall['threads']:.1f} "
        f"| {low['threads']:.1f} | {cpu['threads'] - cpu['bare']:.1f} |",
        "",
        f"Target: <= 15 ms for parallax: {verdict}. (A bare interpreter's CPU time: "
        f"{cpu['bare']:.1f} ms.)",
        "",
    ]


def double(x: int) -> int:
    return x * 2


def tiny(repeats: int) -> list[str]:
    import parallax

    lines = [
        f"### tiny: `x * 2` in auto mode against the loop, one warm process, {repeats} repeats",
        "",
        "| items | loop ms | parallax auto ms | loop / auto | loop / auto over a tuple "
        "| loop / bounded loop (the floor for a list) |",
        "|---|---|---|---|---|---|",
    ]
    for size in (100_000, 1_000_000):
        items = list(range(size))
        frozen = tuple(items)
        expected = [double(x) for x in items]
        assert parallax.map(double, items) == expected  # warm: pools, caches
        assert parallax.map(double, frozen) == expected

        def loop(items: list[int] = items) -> object:
            return [double(x) for x in items]

        def auto(items: list[int] = items) -> object:
            return parallax.map(double, items)

        def auto_tuple(frozen: tuple[int, ...] = frozen) -> object:
            return parallax.map(double, frozen)

        def bounded(items: list[int] = items, probed: list[int] = expected[:64]) -> object:
            rest = iter(items)
            rest.__setstate__(len(probed))  # type: ignore[attr-defined]
            values = _comprehension(double, itertools.islice(rest, len(items) - len(probed)))
            values[:0] = probed
            return values

        runs = (loop, auto, auto_tuple, bounded)
        times: dict[Callable[[], object], list[float]] = {run: [] for run in runs}
        for _ in range(repeats):
            for run in runs:
                started = time.perf_counter()
                run()
                times[run].append(time.perf_counter() - started)
        plain, ours, of_tuple, floor = (statistics.median(times[run]) for run in runs)
        lines.append(f"| {size:,} | {plain * 1e3:.2f} | {ours * 1e3:.2f} | {plain / ours:.3f}x "
                     f"| {plain / of_tuple:.3f}x | {plain / floor:.3f}x |")
    lines += ["", "Target: >= 0.95x at both sizes (loop / auto, a list).", ""]
    return lines


def _comprehension(fn: Callable[[int], int], items: Iterable[int]) -> list[int]:
    """The serial backend's loop (``_run_all_or_nothing``), over any items."""
    return [fn(item) for item in items]


def sleep(repeats: int) -> list[str]:
    runs = _interleaved({"parallax": SLEEP_PARALLAX.format(keywords=""),
                         "parallax thread": SLEEP_PARALLAX.format(
                             keywords=', mode="thread", workers=256'),
                         "threads": SLEEP_THREADS}, repeats)
    wall = {name: statistics.median(ms for ms, _ in rows) for name, rows in runs.items()}
    share = wall["parallax"] / wall["threads"]
    verdict = "met" if share <= 1.2 else "**MISSED**"
    return [
        f"### sleep: `time.sleep(0.02)` x 400, a fresh interpreter each, {repeats} repeats",
        "",
        "| case | ms (median; pool start included, imports not) |",
        "|---|---|",
        f"| parallax auto | {wall['parallax']:.1f} |",
        f"| parallax thread (256 workers) | {wall['parallax thread']:.1f} |",
        f"| ThreadPoolExecutor(256) | {wall['threads']:.1f} |",
        "",
        f"auto / ThreadPoolExecutor(256): {share:.2f}x; target <= 1.2x: {verdict}.",
        "",
    ]


def pools(interpreters: int, methods: list[str], before: Path | None = None) -> list[str]:
    """``before``: another source tree, measured in the same run, its repeats
    interleaved with this one's (rows "before: METHOD")."""
    median = statistics.median
    sources = [(f"{'before: ' if source else ''}{method}, {kind}", method, kind, source)
               for source in ([before] if before else []) + [None] for kind in FUNCTIONS
               for method in methods]
    codes = {name: (POOL_PARALLAX.format(
        options="" if method == "default" else f"start_method={method!r}",
        functions=FUNCTIONS[kind], pss=PSS_HELPER), source)
        for name, method, kind, source in sources}
    for code, source in codes.values():
        _child_numbers(code, source)  # compiles and caches the bytecode; untimed
    _child_numbers(POOL_MULTIPROCESSING)
    rows: dict[str, list[list[float]]] = {name: [] for name in codes}
    mp: list[float] = []
    for _ in range(interpreters):
        for name, (code, source) in codes.items():
            rows[name].append(_child_numbers(code, source))
        mp.append(_child_numbers(POOL_MULTIPROCESSING)[0])
    lines = [
        f"### pool: cold process pools, {interpreters} fresh interpreters (median)",
        "",
        "| start method | cold pool + map(10) ms | second cold pool ms | worker start "
        "(max_tasks_per_worker=1) ms/item | first pool: PSS of 2 workers + template MB "
        "| a later pool's | caller MB |",
        "|---|---|---|---|---|---|---|",
    ]
    for method, numbers in rows.items():
        first, second, respawn, memory, template, caller, later, later_template = (
            median(row[i] for row in numbers) for i in range(8))
        lines.append(f"| {method} | {first:.1f} | {second:.1f} | {respawn:.2f} "
                     f"| {memory:.1f} + {template:.1f} = {memory + template:.1f} "
                     f"| {later:.1f} + {later_template:.1f} = {later + later_template:.1f} "
                     f"| {caller:.1f} |")
    lines += [
        f"| `multiprocessing.Pool(2)` (fork) | {median(mp):.1f} | | | | | |",
        "",
        "Targets: cold pool + map(10) <= 20 ms and <= 1.5x `multiprocessing.Pool`'s; "
        "PSS of two workers <= 20 MB above the caller (the template's counted with them).",
        "",
    ]
    return lines


def preloads(interpreters: int) -> list[str]:
    """Pools of a function that uses NumPy, with and without ``preload``."""
    median = statistics.median
    cases = {
        "template": "start_method='template'",
        "template, `preload=\"numpy\"`": "start_method='template', preload='numpy'",
        "fresh": "start_method='fresh'",
        "fresh, `preload=\"numpy\"`": "start_method='fresh', preload='numpy'",
    }
    codes = {name: POOL_PRELOAD.format(options=options, pss=PSS_HELPER)
             for name, options in cases.items()}
    for code in codes.values():
        _child_numbers(code)  # compiles and caches the bytecode; untimed
    rows: dict[str, list[list[float]]] = {name: [] for name in codes}
    for _ in range(interpreters):
        for name, code in codes.items():
            rows[name].append(_child_numbers(code))
    lines = [
        f"### preload: a function that uses NumPy, {interpreters} fresh interpreters (median)",
        "",
        "| start method | cold pool + map(10) ms | worker start (max_tasks_per_worker=1) "
        "ms/item | first pool: PSS of 2 workers + template(s) MB |",
        "|---|---|---|---|",
    ]
    for name, numbers in rows.items():
        first, respawn, memory = (median(row[i] for row in numbers) for i in range(3))
        lines.append(f"| {name} | {first:.1f} | {respawn:.2f} | {memory:.1f} |")
    return [*lines, ""]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--interpreters", type=int, default=30)
    parser.add_argument("--only", default="first,tiny,sleep")
    parser.add_argument("--src", type=Path, default=SOURCE[0])
    parser.add_argument("--methods", default="template,fresh")
    parser.add_argument("--before", type=Path, default=None,
                        help="pool: also measure this source tree, interleaved")
    args = parser.parse_args()
    SOURCE[0] = args.src.resolve()
    sys.path.insert(0, str(SOURCE[0]))  # before parallax is imported (tiny)
    chosen = args.only.split(",")
    load = os.getloadavg()[0]
    lines = [
        "## Start-up costs (issue #17): `python benchmarks/bench_startup.py`",
        "",
        f"- {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}; Python "
        f"{platform.python_version()}; {os.cpu_count()} CPUs; 1-minute load average "
        f"{load:.2f} at the start; parallax from `{SOURCE[0]}`",
        "",
    ]
    if "first" in chosen:
        lines += first_call(args.interpreters)
    if "tiny" in chosen:
        lines += tiny(args.repeats)
    if "sleep" in chosen:
        lines += sleep(args.repeats)
    if "preload" in chosen:
        lines += preloads(args.repeats)
    if "pool" in chosen:
        lines += pools(args.repeats, args.methods.split(","),
                       args.before.resolve() if args.before else None)
    print("\n".join(lines))


if __name__ == "__main__":
    main()
