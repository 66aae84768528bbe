"""What the standalone ``bench_*`` scripts share: warm measurements in fresh interpreters.

A script names its cases (a task built inside the measuring interpreter, its
inputs and a check of the results) and its peers (runners from ``peers.py``).
:func:`run_all` runs every (case, peer) pair in a fresh interpreter once per
repeat, repeats interleaved so that a slow spell of a shared machine does not
land on one peer only, with a time limit; :func:`render` gives medians and
speed-ups over the serial loop *of the same run*.

In the measuring interpreter (:func:`child_main`) the peer's pool is started
and warmed with a small call first (workers up, their imports done), then the
full task is built and one call on it is timed, until the results are in
hand; the check and the shutdown are not timed.
"""

from __future__ import annotations

import argparse
import datetime
import gc
import json
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .case import RESULT_PREFIX
from .peers import ParallaxRunner, Runner
from .run import (
    ROOT,
    Quiet,
    _cpu_model,
    _table,
    _version,
    divide,
    measure_child,
    parallax_source,
    ratio,
    seconds,
)

RAW_DIRECTORY = ROOT / "benchmarks" / ".results"


# -- what a script defines -------------------------------------------------------------


@dataclass(frozen=True)
class Task:
    """One call's worth of work, built in the measuring interpreter."""

    fn: Callable[[Any], Any]
    items: list[Any]
    #: what is wrong with the results (None: nothing)
    check: Callable[[list[Any]], str | None]


@dataclass(frozen=True)
class Case:
    """One table: a task of a given size, run by every peer."""

    id: str
    description: str
    full_size: int
    quick_size: int
    #: per-measurement time limit in seconds (full, quick)
    time_limit: tuple[float, float]
    #: the timed task for a size
    build: Callable[[int], Task]
    #: a small task of the same kind, run once untimed to start and warm the pool
    warm: Callable[[], Task]
    #: bytes of results that come home for a size (None: not reported)
    result_bytes: Callable[[int], int] | None = None

    def size(self, quick: bool) -> int:
        return self.quick_size if quick else self.full_size

    def limit(self, quick: bool) -> float:
        return self.time_limit[1] if quick else self.time_limit[0]


@dataclass(frozen=True)
class Peer:
    """One row of every table: a library in one configuration."""

    id: str
    label: str
    #: the runner, for a number of items
    make: Callable[[int], Runner]


# -- the measuring interpreter ---------------------------------------------------------


def gil_enabled() -> bool:
    is_enabled = getattr(sys, "_is_gil_enabled", None)
    return True if is_enabled is None else bool(is_enabled())


def gil_state() -> str:
    """Whether this interpreter's GIL is on, and whether the build can turn it off."""
    if not hasattr(sys, "_is_gil_enabled"):
        return "GIL on, not a free-threaded build"
    if gil_enabled():
        return "GIL on, a free-threaded build with the GIL re-enabled"
    return "GIL off, free-threaded build"


def _warm_partners(runner: Runner) -> list[Runner]:
    """The pools parallax auto may pick, so that auto, too, is measured on warm pools.

    Auto with the same ``workers`` leases the same pooled backend as the fixed
    mode it picks; warming them here keeps pool start-up out of its timing.
    """
    if not isinstance(runner, ParallaxRunner) or runner.mode != "auto":
        return []
    workers = runner.options.get("workers")
    modes = ["process", "thread"]
    if not gil_enabled():
        modes.append("free-threaded")
    return [ParallaxRunner(mode, workers=workers) for mode in modes]


@contextmanager
def _parallax_runs(runner: Runner) -> Iterator[list[Any]]:
    """The Stats of the parallax runs inside the block (empty for other runners)."""
    if not isinstance(runner, ParallaxRunner):
        yield []
        return
    with runner.parallax.monitor() as watching:
        yield watching.runs


def measure(case: Case, peer: Peer, size: int) -> dict[str, Any]:
    """Warm the peer's pool, time one call on the full task, check it: the RESULT fields."""
    runner = peer.make(size)
    runner.load()
    runner.start()
    try:
        warm = case.warm()
        for partner in _warm_partners(runner):
            partner.load()
            partner.map(warm.fn, warm.items)
        problem = warm.check(runner.map(warm.fn, warm.items))
        if problem:
            return {"status": "wrong", "note": f"warm-up call: {problem}"}
        task = case.build(size)
        del warm
        gc.collect()
        with _parallax_runs(runner) as runs:
            started = time.perf_counter()
            results = runner.map(task.fn, task.items)
            elapsed = time.perf_counter() - started
        problem = task.check(results)
        del results, task
    finally:
        runner.stop()
    note = ""
    if runs and isinstance(runner, ParallaxRunner) and runner.mode == "auto":
        note = f"auto -> {runs[-1].mode}: {runs[-1].reason}"
    return {"status": "wrong" if problem else "ok", "seconds": elapsed,
            "note": problem or note, "gil": gil_state()}


def child_main(argv: Sequence[str], cases: Sequence[Case], peers: Sequence[Peer]) -> int:
    """``--child CASE PEER SIZE``: one measurement, printed as a RESULT line."""
    case_id, peer_id, size = argv
    case = next(case for case in cases if case.id == case_id)
    peer = next(peer for peer in peers if peer.id == peer_id)
    try:
        result = measure(case, peer, int(size))
    except Exception as exc:
        result = {"status": "error", "note": f"{type(exc).__name__}: {exc}"}
    print(RESULT_PREFIX + json.dumps(result), flush=True)
    return 0


# -- the driver ------------------------------------------------------------------------


def _progress(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def run_child(module: str, case: Case, peer: Peer, size: int, limit: float) -> dict[str, Any]:
    """One measurement in a fresh interpreter, killed with its process group past ``limit``.

    Also the share of the machine's CPU that other processes used meanwhile
    (``others_cpu``): the machine's busy time less this measurement's own.
    """
    command = [sys.executable, "-m", module, "--child", case.id, peer.id, str(size)]
    return measure_child(command, limit)


@dataclass
class Row:
    """Every repeat of one peer on one case."""

    peer: Peer
    runs: list[dict[str, Any]] = field(default_factory=list)

    @property
    def status(self) -> str:
        for bad in ("wrong", "error", "timeout"):
            if any(run["status"] == bad for run in self.runs):
                return bad
        return "ok" if self.runs else "pending"

    @property
    def finished(self) -> bool:
        return self.status not in ("ok", "pending")

    def times(self) -> list[float]:
        return [run["seconds"] for run in self.runs if run["status"] == "ok"]

    def median(self) -> float | None:
        times = self.times()
        return statistics.median(times) if times else None

    @property
    def note(self) -> str:
        notes = [run["note"] for run in self.runs if run.get("note")]
        return notes[-1] if notes else ""


@dataclass
class Table:
    case: Case
    size: int
    rows: list[Row]

    def median(self, peer_id: str) -> float | None:
        row = next((row for row in self.rows if row.peer.id == peer_id), None)
        return row.median() if row else None

    def others_cpu(self) -> tuple[float, float] | None:
        shares = [run["others_cpu"] for row in self.rows for run in row.runs
                  if "others_cpu" in run]
        return (statistics.fmean(shares), max(shares)) if shares else None


def run_all(module: str, cases: Sequence[Case], peers: Sequence[Peer], *, quick: bool,
            repeats: int, quiet: Quiet) -> list[Table]:
    """Every peer on every case, ``repeats`` times, interleaved."""
    tables = [Table(case, case.size(quick), [Row(peer) for peer in peers]) for case in cases]
    for repeat in range(repeats):
        for table in tables:
            limit = table.case.limit(quick)
            for row in table.rows:
                if row.finished:
                    continue
                quiet.wait()
                run = run_child(module, table.case, row.peer, table.size, limit)
                row.runs.append(run)
                shown = (f"{run['seconds']:.3g} s" if run["status"] == "ok"
                         else f"{run['status']}: {run.get('note', '')}")
                others = (f" (others used {run['others_cpu']:.0%} of the CPUs)"
                          if "others_cpu" in run else "")
                _progress(f"   [{repeat + 1}/{repeats}] {table.case.id}, {row.peer.label}: "
                          f"{shown}{others}")
    return tables


# -- the report ------------------------------------------------------------------------


def _time_cell(row: Row) -> str:
    if row.status in ("wrong", "error"):
        return f"**{row.status.upper()}**"
    if row.status == "timeout" and row.median() is None:
        return "timeout"
    return seconds(row.median())


def _range_cell(row: Row) -> str:
    times = row.times()
    return f"{seconds(min(times))} to {seconds(max(times))}" if len(times) > 1 else "—"


def throughput(value: float | None) -> str:
    """Bytes per second as MB/s (MB = 2**20 bytes)."""
    return "—" if value is None else f"{value / 2**20:,.0f}"


def case_table(table: Table, *, serial_id: str = "serial") -> list[str]:
    case = table.case
    serial = table.median(serial_id)
    lines = [f"### {case.id}: {case.description}, {table.size:,} items", ""]
    shares = table.others_cpu()
    if shares is not None:
        lines += [f"Other processes used {shares[0]:.0%} of the machine's CPU time on average "
                  f"while these measurements ran (at most {shares[1]:.0%} during one).", ""]
    header = ["peer", "median s", "range s", "vs serial"]
    result_bytes = case.result_bytes(table.size) if case.result_bytes else None
    if result_bytes is not None:
        header.append(f"results home MB/s ({result_bytes / 2**20:,.0f} MB in all)")
    header.append("note")
    rows = []
    for row in table.rows:
        median = row.median()
        cells = [row.peer.label, _time_cell(row), _range_cell(row),
                 ratio(divide(serial, median))]
        if result_bytes is not None:
            cells.append(throughput(divide(result_bytes, median)))
        cells.append(row.note)
        rows.append(cells)
    return [*lines, *_table(header, rows), ""]


def header_lines(title: str, command: str, *, quick: bool, repeats: int, elapsed: float,
                 libraries: Sequence[str], extra: Sequence[str] = ()) -> list[str]:
    """The section's heading and how, where and when it was measured."""
    cpus = os.cpu_count()
    versions = ", ".join(f"{name} {_version(name)}" for name in libraries)
    date = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")
    return [
        f"## {title}",
        "",
        f"- date: {date}; command: `{command}`; {repeats} repeat(s) per peer, "
        f"{'quick' if quick else 'full'} sizes; whole run {elapsed / 60:.1f} min",
        f"- machine: {cpus} CPUs ({_cpu_model()}), {platform.platform()}; 1-minute load "
        f"average at the end {os.getloadavg()[0]:.2f}",
        f"- Python {platform.python_version()} ({platform.python_implementation()}; "
        f"{gil_state()}); {versions}; parallax source: {parallax_source()}",
        *extra,
        "",
        f"**This machine has {cpus} cores, so the parallel speed-up on CPU-bound work is at "
        f"most {cpus}x.** Every measurement runs in a fresh interpreter; the peer's pool is "
        "started and warmed with a small untimed call first, then one call on the full input "
        "is timed until the results are in hand (building the input, checking the results "
        "and shutting the pool down are not timed). Tables show medians of the repeats; "
        "*range* is the fastest and slowest repeat; *vs serial* is the serial loop's median "
        "time in this run / the peer's (above 1.00x: faster). Every result is checked.",
        "",
    ]


def write_report(name: str, lines: list[str], tables: list[Table], output: Path | None) -> int:
    """Print the markdown section, write it and the raw runs; 1 if a peer failed."""
    report = "\n".join(lines).rstrip() + "\n"
    print(report)
    output = output or RAW_DIRECTORY / f"{name}.md"
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(report)
    raw = {table.case.id: {"size": table.size,
                           "peers": {row.peer.id: row.runs for row in table.rows}}
           for table in tables}
    raw_file = RAW_DIRECTORY / f"{output.stem}.json"  # named after the section, as run.py does
    raw_file.parent.mkdir(parents=True, exist_ok=True)
    raw_file.write_text(json.dumps(raw, indent=1))
    _progress(f"wrote {output} (the section to paste) and {raw_file} (the raw runs)")
    failed = [f"{table.case.id}: {row.peer.label} ({row.status}: {row.note})"
              for table in tables for row in table.rows if row.status in ("wrong", "error")]
    if failed:
        _progress("FAILED:\n  " + "\n  ".join(failed))
        return 1
    return 0


def common_arguments(parser: argparse.ArgumentParser, *, repeats: int) -> None:
    parser.add_argument("--quick", action="store_true", help="smaller inputs, one repeat")
    parser.add_argument("--repeats", type=int, default=None,
                        help=f"repeats per peer (default {repeats}, 1 with --quick)")
    parser.add_argument("--quiet-wait", type=float, default=10.0, metavar="SECONDS",
                        help="before each measurement, wait up to this long for other "
                             "processes to leave the CPUs idle (0: do not wait; default 10)")
    parser.add_argument("--output", type=Path, default=None,
                        help="where to write the markdown section "
                             "(default benchmarks/.results/<script>.md)")
    parser.add_argument("--child", nargs=3, metavar=("CASE", "PEER", "SIZE"),
                        help=argparse.SUPPRESS)


def make_quiet(args: argparse.Namespace) -> Quiet:
    return Quiet(per_case=args.quiet_wait, budget=20.0 if args.quick else 300.0)
