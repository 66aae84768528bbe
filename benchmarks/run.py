"""Run parallax's benchmark suite and write the results as markdown.

    python benchmarks/run.py [--quick] [--only WORKLOAD,...] [--output benchmarks/RESULTS.md]

Every case (one library, one configuration, one workload) runs in a fresh
interpreter (``python -m benchmarks.case``), once per repeat, with a time
limit; repeats of different cases are interleaved so that a slow spell of
the machine does not land on one case only. The run prints a markdown
report (per-workload tables, the core and auto summary tables, the targets)
and writes it to ``--output`` with the machine's description; the raw
measurements go to ``benchmarks/.results/<output name>.json`` (``RESULTS.json``
for the default output), from which ``--render-only`` rewrites the report.

Exit status: 0, or 1 if any case returned a wrong result or failed.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import importlib.metadata
import json
import os
import platform
import resource
import signal
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from benchmarks.case import RESULT_PREFIX  # noqa: E402
from benchmarks.peers import CPUS, IO_CONCURRENCY, STREAM_CHUNK, Planned, plan_cases  # noqa: E402
from benchmarks.workloads import WORKLOADS, Workload  # noqa: E402

FULL_REPEATS = 3
QUICK_REPEATS = 1
LIBRARIES = ("parallax", "cloudpickle", "joblib", "mpire", "pebble", "psutil")
RAW_DIRECTORY = ROOT / "benchmarks" / ".results"
#: bytecode cache of the cases' interpreters: outside the source tree, and on even
#: where PYTHONDONTWRITEBYTECODE is set, so that the editable parallax is not
#: compiled from source at every start while the installed peers load their .pyc
PYCACHE = RAW_DIRECTORY / "pycache"


# -- running cases ---------------------------------------------------------------------


def _child_environment() -> dict[str, str]:
    env = {name: value for name, value in os.environ.items()
           if not name.startswith("PARALLAX_")}  # PARALLAX_MODE would override every mode
    path = env.get("PYTHONPATH")
    env["PYTHONPATH"] = str(ROOT) + (os.pathsep + path if path else "")
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    env["PYTHONPYCACHEPREFIX"] = str(PYCACHE)
    return env


def warm_up() -> None:
    """Fill the cases' bytecode cache (and the OS file cache) before anything is timed.

    Compiles parallax and the benchmarks, then runs every startup case once,
    untimed, so that every module a case imports is already compiled.
    """
    import parallax

    _progress("== warming up (bytecode cache, one untimed startup run of every case)")
    source = Path(parallax.__file__).parent
    subprocess.run(
        [sys.executable, "-m", "compileall", "-q", str(source), str(ROOT / "benchmarks")],
        cwd=ROOT, env=_child_environment(), check=False, stdout=subprocess.DEVNULL,
    )
    startup = WORKLOADS["startup"]
    for planned in plan_cases(startup, startup.quick_size):
        if planned.skip is None:
            run_once(startup, planned.case.id, startup.quick_size, startup.limit(quick=True))


def _kill_group(pgid: int) -> None:
    """Kill what is left of a case's process group (its pool workers included)."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, signal.SIGKILL)


def _warning_in(stderr: str) -> str:
    for line in stderr.splitlines():
        if "Warning:" in line:
            return line.split("Warning:", 1)[1].strip()
    return ""


def _machine_cpu() -> tuple[float, float]:
    """Busy and total CPU seconds of the whole machine, all cores, since boot.

    From the first line of /proc/stat; time stolen by the hypervisor counts
    as busy (it is capacity this machine did not get). (0, 0) where there is
    no /proc/stat.
    """
    try:
        fields = Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:9]
    except OSError:
        return 0.0, 0.0
    user, nice, system, idle, iowait, irq, softirq, steal = (int(value) for value in fields)
    tick = os.sysconf("SC_CLK_TCK")
    busy = user + nice + system + irq + softirq + steal
    return busy / tick, (busy + idle + iowait) / tick


def _own_cpu() -> float:
    """CPU seconds used by this process's finished children and their descendants."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


@dataclass
class Quiet:
    """Waiting for other processes to leave the cores alone before a case starts."""

    per_case: float  # most seconds to wait before one case
    budget: float  # most seconds to wait in the whole run
    threshold: float = 0.25  # busy share of the machine that counts as "not quiet"
    waited: float = 0.0

    def wait(self) -> None:
        deadline = time.monotonic() + min(self.per_case, self.budget - self.waited)
        started = time.monotonic()
        while time.monotonic() < deadline:
            busy, total = _machine_cpu()
            time.sleep(0.5)
            busy_after, total_after = _machine_cpu()
            if total_after <= total or (busy_after - busy) / (total_after - total) < self.threshold:
                break
        self.waited += time.monotonic() - started


def run_once(workload: Workload, case_id: str, size: int, limit: float) -> dict[str, Any]:
    """One repeat of one case, in a fresh interpreter, within ``limit`` seconds.

    Also measures how much of the machine's CPU other processes used meanwhile
    (``others_cpu``, a share of all cores): the whole machine's busy time,
    less the CPU time of the case's own process tree.
    """
    command = [sys.executable, "-m", "benchmarks.case", workload.name, case_id, str(size)]
    return measure_child(command, limit)


def measure_child(command: list[str], limit: float) -> dict[str, Any]:
    """Run ``command`` (a measuring child) and add the share of the machine's CPU
    that other processes used meanwhile (``others_cpu``): the machine's busy
    time less the CPU time of the child's own process tree."""
    _become_subreaper()
    busy, total = _machine_cpu()
    own = _own_cpu()
    result = _run_child(command, limit)
    _reap_orphans()
    busy_after, total_after = _machine_cpu()
    if total_after > total:
        others = (busy_after - busy) - (_own_cpu() - own)
        result["others_cpu"] = min(1.0, max(0.0, others / (total_after - total)))
    return result


_subreaper = False


def _become_subreaper() -> None:
    """Linux: have the processes a child leaves behind re-parented here, not to
    init (``PR_SET_CHILD_SUBREAPER``), so that their CPU time counts as the
    child's (:func:`_own_cpu` reads what was reaped). parallax's fork
    template, for one, is the child's own child and its workers are the
    template's: they outlive the child by a moment, then end unreaped by it."""
    global _subreaper
    if _subreaper or not sys.platform.startswith("linux"):
        return
    import ctypes

    set_child_subreaper = 36  # (prctl's PR_SET_CHILD_SUBREAPER)
    _subreaper = ctypes.CDLL(None, use_errno=True).prctl(set_child_subreaper, 1, 0, 0, 0) == 0


def _reap_orphans(timeout: float = 5.0) -> None:
    """Wait (at most ``timeout`` seconds) for the child's leftover descendants,
    re-parented here, to end, reaping them: their CPU time joins ``_own_cpu``."""
    if not _subreaper:
        return
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            pid, _ = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return  # none left
        if pid == 0:
            time.sleep(0.01)


def _run_child(command: list[str], limit: float) -> dict[str, Any]:
    """The child's result line, killed with its process group past ``limit``."""
    process = subprocess.Popen(
        command, cwd=ROOT, env=_child_environment(), stdout=subprocess.PIPE,
        stderr=subprocess.PIPE, text=True, start_new_session=True,
    )
    try:
        stdout, stderr = process.communicate(timeout=limit)
    except subprocess.TimeoutExpired:
        _kill_group(process.pid)
        process.communicate()
        return {"status": "timeout", "note": f"over the {limit:.0f} s time limit"}
    finally:
        _kill_group(process.pid)
    lines = [line for line in stdout.splitlines() if line.startswith(RESULT_PREFIX)]
    if not lines:
        tail = " | ".join(stderr.strip().splitlines()[-3:])
        return {"status": "error", "note": f"exit code {process.returncode}: {tail}"}
    result: dict[str, Any] = json.loads(lines[-1][len(RESULT_PREFIX):])
    warning = _warning_in(stderr)
    if warning and result.get("status") == "ok":
        result["note"] = "; ".join(part for part in (result.get("note"), warning) if part)
    return result


@dataclass
class CaseResult:
    """Every repeat of one case on one workload."""

    planned: Planned
    runs: list[dict[str, Any]] = field(default_factory=list)
    computed: float | None = None  # serial time by arithmetic

    @property
    def id(self) -> str:
        return self.planned.case.id

    @property
    def label(self) -> str:
        return self.planned.case.label

    @property
    def status(self) -> str:
        if self.computed is not None:
            return "computed"
        if self.planned.skip is not None:
            return "skipped"
        for bad in ("wrong", "error", "timeout", "na"):
            if any(run["status"] == bad for run in self.runs):
                return bad
        return "ok" if self.runs else "pending"

    @property
    def finished(self) -> bool:
        """No more repeats: skipped, or a repeat went wrong, timed out or was n/a."""
        return self.status not in ("ok", "pending")

    def values(self, key: str) -> list[float]:
        return [run[key] for run in self.runs if run["status"] == "ok" and key in run]

    def median(self, key: str = "cold") -> float | None:
        if self.computed is not None and key in ("cold", "warm"):
            return self.computed
        values = self.values(key)
        return statistics.median(values) if values else None

    def spread(self, key: str = "cold") -> tuple[float, float] | None:
        values = self.values(key)
        return (min(values), max(values)) if len(values) > 1 else None

    @property
    def note(self) -> str:
        if self.planned.skip is not None:
            return self.planned.skip
        notes = [run.get("note", "") for run in self.runs if run.get("note")]
        return notes[-1] if notes else ""


@dataclass
class WorkloadResult:
    workload: Workload
    size: int
    cases: list[CaseResult]

    def case(self, case_id: str) -> CaseResult | None:
        return next((case for case in self.cases if case.id == case_id), None)

    def median(self, case_id: str, key: str = "cold") -> float | None:
        case = self.case(case_id)
        return case.median(key) if case else None

    @property
    def serial(self) -> float | None:
        return self.median("serial")

    @property
    def others_cpu(self) -> tuple[float, float] | None:
        """Mean and largest share of the CPUs other processes used during these cases."""
        shares = [run["others_cpu"] for case in self.cases for run in case.runs
                  if "others_cpu" in run]
        return (statistics.fmean(shares), max(shares)) if shares else None

    def load_note(self) -> str:
        shares = self.others_cpu
        if shares is None:
            return ""
        return (f"Other processes used {shares[0]:.0%} of the machine's CPU time on average "
                f"while these cases ran (at most {shares[1]:.0%} during one case).")


def _progress(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def run_workload(workload: Workload, *, quick: bool, repeats: int,
                 cases: set[str] | None, quiet: Quiet) -> WorkloadResult:
    size = workload.size(quick)
    limit = workload.limit(quick)
    results = [CaseResult(planned) for planned in plan_cases(workload, size)
               if cases is None or planned.case.id in cases]
    for case in results:
        if case.id == "serial" and workload.computed_serial(size) is not None:
            case.computed = workload.computed_serial(size)
    _progress(f"== {workload.name} (size {size:,}, limit {limit:.0f} s, {repeats} repeats)")
    for repeat in range(repeats):
        for case in results:
            if case.finished:
                continue
            quiet.wait()
            run = run_once(workload, case.id, size, limit)
            case.runs.append(run)
            shown = f"{run['cold']:.4g} s cold, {run['warm']:.4g} s warm" if (
                run["status"] == "ok") else f"{run['status']}: {run.get('note', '')}"
            others = f" (others used {run['others_cpu']:.0%} of the CPUs)" if (
                "others_cpu" in run) else ""
            _progress(f"   [{repeat + 1}/{repeats}] {case.label}: {shown}{others}")
    return WorkloadResult(workload, size, results)


# -- formatting ------------------------------------------------------------------------


def seconds(value: float | None) -> str:
    if value is None:
        return "—"
    return f"{value:.3g}"


def millis(value: float | None) -> str:
    return "—" if value is None else f"{value * 1e3:.3g}"


def ratio(value: float | None) -> str:
    return "—" if value is None else f"{value:.2f}x"


def divide(top: float | None, bottom: float | None) -> float | None:
    if top is None or bottom is None or bottom <= 0:
        return None
    return top / bottom


def megabytes(value: float | None) -> str:
    return "—" if value is None else f"{value / 2**20:.1f}"


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(cell.replace("|", "\\|") for cell in row) + " |" for row in rows]
    return lines


def _time_cell(case: CaseResult, key: str, unit: Callable[[float | None], str]) -> str:
    status = case.status
    if status == "skipped":
        return "skipped"
    if status == "na":
        return "n/a"
    if status in ("wrong", "error"):
        return f"**{status.upper()}**"
    if status == "timeout" and case.median(key) is None:
        return "timeout"
    return unit(case.median(key))


def _range_cell(case: CaseResult, unit: Callable[[float | None], str]) -> str:
    spread = case.spread("cold")
    return "—" if spread is None else f"{unit(spread[0])} to {unit(spread[1])}"


def workload_table(result: WorkloadResult) -> list[str]:
    workload = result.workload
    serial = result.serial
    lines = [f"### {workload.name}: {workload.description}, {result.size:,} tasks", ""]
    if result.load_note():
        lines += [result.load_note(), ""]
    if workload.kind == "startup":
        header = ["case", "import ms", "cold ms", "cold range ms", "warm ms", "note"]
        rows = [[case.label, _time_cell(case, "import", millis), _time_cell(case, "cold", millis),
                 _range_cell(case, millis), _time_cell(case, "warm", millis), case.note]
                for case in result.cases]
        return [*lines, *_table(header, rows), ""]
    header = ["case", "cold s", "range s", "vs serial", "warm s", "warm vs serial"]
    if workload.kind == "stream":
        header += ["peak RSS growth MB (parent+children)", "parent only MB",
                   "peak PSS of the children MB"]
    header.append("note")
    rows = []
    for case in result.cases:
        row = [
            case.label,
            _time_cell(case, "cold", seconds),
            _range_cell(case, seconds),
            ratio(divide(serial, case.median("cold"))),
            _time_cell(case, "warm", seconds),
            ratio(divide(result.median("serial", "warm"), case.median("warm"))),
        ]
        if workload.kind == "stream":
            growth = case.values("rss_growth")
            parent = case.values("parent_growth")
            children = case.values("children_pss")
            row += [megabytes(max(growth) if growth else None),
                    megabytes(max(parent) if parent else None),
                    megabytes(max(children) if children else None)]
        row.append(case.note)
        rows.append(row)
    return [*lines, *_table(header, rows), ""]


def core_table(results: dict[str, WorkloadResult]) -> list[str]:
    header = ["workload", "call", "serial s", "parallax thread", "parallax process",
              "Pool.map", "ProcessPoolExecutor.map (tuned chunksize)",
              "parallax process vs Pool.map"]
    rows = []
    for name in ("cpu_medium", "cpu_small", "tiny"):
        result = results.get(name)
        if result is None:
            continue
        for key in ("cold", "warm"):
            serial = result.median("serial", key)

            def cell(case_id: str, key: str = key, serial: float | None = serial,
                     result: WorkloadResult = result) -> str:
                value = result.median(case_id, key)
                if value is None:
                    return "—"
                return f"{seconds(value)} s ({ratio(divide(serial, value))})"

            rows.append([
                name, key, seconds(serial), cell("parallax-thread"), cell("parallax-process"),
                cell("pool"), cell("ppe-tuned"),
                ratio(divide(result.median("pool", key), result.median("parallax-process", key))),
            ])
    if not rows:
        return []
    return [
        "## Core table",
        "",
        "Median seconds and speed-up over the serial loop (in brackets). *cold*: a fresh "
        "process, pool start-up included; *warm*: the second call in that process. The last "
        "column is parallax process's throughput relative to `multiprocessing.Pool.map` "
        "(above 1.00x: parallax is faster).",
        "",
        *_table(header, rows),
        "",
    ]


PARALLAX_FIXED = ("parallax-serial", "parallax-thread", "parallax-thread-256", "parallax-process",
                  "parallax-asyncio", "parallax-free-threaded")


def _best_fixed(result: WorkloadResult, key: str) -> tuple[str, float] | None:
    timed = [(case.label, value) for case in result.cases
             if case.id in PARALLAX_FIXED and (value := case.median(key)) is not None]
    return min(timed, key=lambda pair: pair[1]) if timed else None


def _auto_choice(result: WorkloadResult) -> str:
    note = (result.case("parallax-auto") or result.cases[0]).note
    if note.startswith("auto -> "):
        return note[len("auto -> "):].split(":", 1)[0]
    return "—"


def auto_table(results: dict[str, WorkloadResult]) -> list[str]:
    header = ["workload", "auto chose", "auto s", "best fixed parallax mode", "its s",
              "auto / best", "auto vs serial", "auto vs ThreadPoolExecutor()"]
    rows = []
    for name in ("cpu_medium", "cpu_small", "tiny", "io_sleep", "io_async", "payload",
                 "stream_memory"):
        result = results.get(name)
        if result is None:
            continue
        auto = result.median("parallax-auto")
        best = _best_fixed(result, "cold")
        versus_threads = "—"
        if name == "io_sleep":
            versus_threads = ratio(divide(result.median("tpe"), auto)) + " faster"
        rows.append([
            name, _auto_choice(result), seconds(auto),
            best[0] if best else "—", seconds(best[1]) if best else "—",
            ratio(divide(auto, best[1] if best else None)),
            ratio(divide(result.serial, auto)), versus_threads,
        ])
    if not rows:
        return []
    return [
        "## Auto table",
        "",
        "`mode=\"auto\"` (no tuning) against the best fixed parallax mode on the same workload "
        "(cold calls, medians). *auto / best*: 1.00x means auto matched the best fixed mode; "
        "above means it was slower by that factor.",
        "",
        *_table(header, rows),
        "",
    ]


@dataclass
class Target:
    what: str
    measured: str
    met: bool | None  # None: could not be measured


def precise_ratio(value: float | None) -> str:
    return "—" if value is None else f"{value:.3f}x"


def _target(what: str, value: float | None, *, at_least: float | None = None,
            at_most: float | None = None, shown: Callable[[float | None], str] = precise_ratio,
            extra: str = "") -> Target:
    if value is None:
        return Target(what, "not measured", None)
    met = (at_least is None or value >= at_least) and (at_most is None or value <= at_most)
    return Target(what, shown(value) + (f" ({extra})" if extra else ""), met)


def _iter_targets(results: dict[str, WorkloadResult]) -> Iterator[Target]:
    def get(name: str, case_id: str, key: str = "cold") -> float | None:
        result = results.get(name)
        return result.median(case_id, key) if result else None

    def speedup(name: str, case_id: str, key: str = "cold") -> float | None:
        return divide(get(name, "serial", key), get(name, case_id, key))

    for name, goal in (("cpu_medium", 1.95), ("cpu_small", 1.85), ("tiny", 0.9),
                       ("payload", 1.4)):
        if name in results:
            warm = ratio(speedup(name, "parallax-auto", "warm"))
            yield _target(f"{name}: auto >= {goal}x serial", speedup(name, "parallax-auto"),
                          at_least=goal, extra=f"warm {warm}")
    if "tiny" in results:
        warm = ratio(divide(get("tiny", "pool", "warm"), get("tiny", "parallax-process", "warm")))
        yield _target("tiny: parallax process throughput >= Pool.map (Pool time / parallax time)",
                      divide(get("tiny", "pool"), get("tiny", "parallax-process")),
                      at_least=1.0, extra=f"warm {warm}")
    if "io_sleep" in results:
        yield _target(f"io_sleep: auto within 1.5x of ThreadPoolExecutor({IO_CONCURRENCY}) "
                      "(auto time / its time)",
                      divide(get("io_sleep", "parallax-auto"), get("io_sleep", "tpe-256")),
                      at_most=1.5)
        yield _target("io_sleep: auto >= 5x faster than ThreadPoolExecutor() defaults",
                      divide(get("io_sleep", "tpe"), get("io_sleep", "parallax-auto")),
                      at_least=5.0)
    if "io_async" in results:
        for case_id, label in (("parallax-auto", "auto"), ("parallax-asyncio", "asyncio mode")):
            yield _target(f"io_async: {label} within 1.2x of asyncio.gather + "
                          f"Semaphore({IO_CONCURRENCY}) (parallax time / its time)",
                          divide(get("io_async", case_id), get("io_async", "gather-sem")),
                          at_most=1.2)
    if "startup" in results:
        for case_id in ("parallax-auto", "parallax-thread", "parallax-process"):
            yield _target(f"startup: warm map <= 2 ms ({case_id.replace('-', ' ')})",
                          get("startup", case_id, "warm"), at_most=0.002,
                          shown=lambda value: f"{millis(value)} ms")
        yield _target("startup: cold process pool <= 150 ms (parallax process, first call)",
                      get("startup", "parallax-process"), at_most=0.150,
                      shown=lambda value: f"{millis(value)} ms")
    stream = results.get("stream_memory")
    if stream is not None:
        for case_id in ("parallax-auto", "parallax-process"):
            case = stream.case(case_id)
            growth = case.values("rss_growth") if case else []
            yield _target(f"stream_memory: peak RSS growth <= 20 MB ({case_id.replace('-', ' ')},"
                          " parent + children)", max(growth) if growth else None,
                          at_most=20 * 2**20, shown=lambda value: f"{megabytes(value)} MB")
            # Issue #17's measure: shared pages (the fork template's, a
            # library's) counted once, split between the processes sharing them
            children = case.values("children_pss") if case else []
            yield _target(f"stream_memory: peak PSS of the workers (and template) <= 20 MB "
                          f"({case_id.replace('-', ' ')})", max(children) if children else None,
                          at_most=20 * 2**20, shown=lambda value: f"{megabytes(value)} MB")
            yield _target(f"stream_memory: time within 1.5x of Pool.imap(chunksize={STREAM_CHUNK})"
                          f" ({case_id.replace('-', ' ')} time / Pool.imap time)",
                          divide(get("stream_memory", case_id), get("stream_memory",
                                                                    "pool-imap-tuned")),
                          at_most=1.5)


def targets_table(results: dict[str, WorkloadResult]) -> tuple[list[str], list[Target]]:
    targets = list(_iter_targets(results))
    if not targets:
        return [], []
    rows = [[target.what, target.measured,
             "n/a" if target.met is None else ("met" if target.met else "**MISSED**")]
            for target in targets]
    loads = ", ".join(f"{name} {shares[0]:.0%}" for name, result in results.items()
                      if (shares := result.others_cpu) is not None)
    intro = "On cold calls (medians) unless the cell says warm."
    if loads:
        intro += (" Share of the machine's CPU that other processes used while each workload "
                  f"ran: {loads}. Where that share is large, parallel speed-ups on CPU-bound "
                  "work are understated (the cores were not free).")
    return ["## Targets", "", intro, "",
            *_table(["target", "measured", "verdict"], rows), ""], targets


# -- the report ------------------------------------------------------------------------


def _version(name: str) -> str:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def _cpu_model() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown"


@dataclass
class RunInfo:
    """How and when the measurements were taken (kept with the raw results)."""

    command: str
    date: str
    quick: bool
    repeats: int
    elapsed: float = 0.0
    load_start: float = 0.0
    load_end: float = 0.0
    quiet_per_case: float = 0.0
    quiet_budget: float = 0.0
    quiet_waited: float = 0.0
    parallax_source: str = "unknown"


def _git(*args: str) -> str:
    """Output of a read-only git command in the repository ('' if git is not there)."""
    try:
        done = subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True,
                              timeout=10, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return ""
    return done.stdout.strip() if done.returncode == 0 else ""


def parallax_source() -> str:
    """Which parallax was measured: the commit, and whether src/ had uncommitted changes."""
    commit = _git("rev-parse", "--short", "HEAD")
    if not commit:
        return "unknown (not a git checkout)"
    dirty = _git("status", "--porcelain", "--", "src")
    return commit + (" + uncommitted changes in src/" if dirty else "")


def machine_section(info: RunInfo) -> list[str]:
    versions = ", ".join(f"{name} {_version(name)}" for name in LIBRARIES)
    return [
        "# parallax benchmarks",
        "",
        f"- date: {info.date}; command: `{info.command}`; {info.repeats} repeat(s) per case, "
        f"{'quick' if info.quick else 'full'} sizes; whole run {info.elapsed / 60:.1f} min",
        f"- machine: {os.cpu_count()} CPUs ({_cpu_model()}), {platform.platform()}",
        f"- Python {platform.python_version()} ({platform.python_implementation()}), "
        f"start method of multiprocessing: fork (Linux default)",
        f"- libraries: {versions}; parallax source: {info.parallax_source}",
        f"- 1-minute load average: {info.load_start:.2f} at the start, {info.load_end:.2f} at "
        "the end (above 0 means other work shared the cores with the benchmark); before each "
        f"case the run waited up to {info.quiet_per_case:.0f} s for the cores to be quiet "
        f"({info.quiet_waited:.0f} s waited in all, budget {info.quiet_budget:.0f} s)",
        "",
        f"**This machine has {os.cpu_count()} cores, so the parallel speed-up on CPU-bound work "
        f"is at most {os.cpu_count()}x.** Timings of a shared virtual machine vary by 10-20% "
        "from one minute to the next; repeats of different cases are interleaved so that a slow "
        "spell does not land on one case only.",
        "",
        "How it measures: every case runs in a fresh interpreter, once per repeat. *cold* is "
        "pool creation plus the first call, until the results are in hand (the `import` "
        "statement is timed apart, in the startup table; a library that loads its modules "
        "lazily, as parallax does, pays that in *cold* instead); *warm* is a second call "
        "in the same process on the same pool. Pool shutdown is never timed (parallax keeps "
        "its pool until exit). Tables show medians; *range* is the fastest and slowest cold "
        "repeat; *vs serial* is serial time / case time (above 1.00x: faster than the serial "
        "loop). Every result is checked against the expected list (the stream workload: "
        "against the expected sum); a wrong result fails the run. io_sleep and io_async serial "
        "times are computed (tasks x 20 ms), not run. Process pools have "
        f"{CPUS} workers; multiprocessing, concurrent.futures, mpire and pebble fork them, "
        "joblib's loky starts fresh interpreters, parallax forks them from its fork template "
        "(itself a fresh interpreter, started with the first pool). The cases' interpreters "
        "cache bytecode in `benchmarks/.results/pycache` (PYTHONPYCACHEPREFIX), so the "
        "editable parallax loads compiled modules like the installed peers do.",
        "",
    ]


def render(info: RunInfo, results: dict[str, WorkloadResult]) -> tuple[str, list[Target]]:
    target_lines, targets = targets_table(results)
    lines = machine_section(info)
    lines += target_lines
    lines += core_table(results)
    lines += auto_table(results)
    lines += ["## Workloads", ""]
    for result in results.values():
        lines += workload_table(result)
    return "\n".join(lines).rstrip() + "\n", targets


def raw_path(output: Path) -> Path:
    """Where the raw measurements behind the report ``output`` are kept."""
    return RAW_DIRECTORY / f"{output.stem}.json"


def _raw(info: RunInfo, results: dict[str, WorkloadResult]) -> dict[str, Any]:
    return {
        "info": asdict(info),
        "workloads": {
            name: {
                "size": result.size,
                "cases": {case.id: {"label": case.label, "status": case.status,
                                    "skip": case.planned.skip, "computed": case.computed,
                                    "runs": case.runs} for case in result.cases},
            }
            for name, result in results.items()
        },
    }


def _from_raw(raw: dict[str, Any]) -> tuple[RunInfo, dict[str, WorkloadResult]]:
    """The results of an earlier run, from its raw JSON (``--render-only``)."""
    info = RunInfo(**raw["info"])
    results = {}
    for name, stored in raw["workloads"].items():
        workload = WORKLOADS[name]
        size = stored["size"]
        cases = []
        for planned in plan_cases(workload, size):
            saved = stored["cases"].get(planned.case.id)
            if saved is not None:
                cases.append(CaseResult(planned, saved["runs"], saved["computed"]))
        results[name] = WorkloadResult(workload, size, cases)
    return info, results


def _report(info: RunInfo, results: dict[str, WorkloadResult], output: Path) -> int:
    """Print and write the report; the exit status (1: a case failed)."""
    report, targets = render(info, results)
    print(report)
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(report)
    failed = [f"{name}: {case.label} ({case.status}: {case.note})"
              for name, result in results.items() for case in result.cases
              if case.status in ("wrong", "error")]
    missed = sum(1 for target in targets if target.met is False)
    _progress(f"wrote {output}; {info.elapsed / 60:.1f} min; {missed} target(s) missed")
    if failed:
        _progress("FAILED cases:\n  " + "\n  ".join(failed))
        return 1
    return 0


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--quick", action="store_true",
                        help="fewer repeats and smaller inputs (about 3 minutes)")
    parser.add_argument("--only", default="",
                        help="comma-separated workloads: " + ", ".join(WORKLOADS))
    parser.add_argument("--cases", default="",
                        help="comma-separated case ids to run (e.g. serial,parallax-auto)")
    parser.add_argument("--repeats", type=int, default=None,
                        help=f"repeats per case (default {FULL_REPEATS}, {QUICK_REPEATS} quick)")
    parser.add_argument("--quiet-wait", type=float, default=10.0, metavar="SECONDS",
                        help="before each case, wait up to this long for other processes to "
                             "leave the CPUs idle (0: do not wait; default 10)")
    parser.add_argument("--render-only", action="store_true",
                        help="measure nothing: rewrite the report --output from the raw "
                             "measurements its last run kept in benchmarks/.results/")
    parser.add_argument("--output", type=Path, default=ROOT / "benchmarks" / "RESULTS.md",
                        help="where to write the markdown report")
    args = parser.parse_args(argv)
    unknown = [name for name in args.only.split(",") if name and name not in WORKLOADS]
    if unknown:
        parser.error(f"unknown workload(s) {', '.join(unknown)}; valid: {', '.join(WORKLOADS)}")
    if args.repeats is not None and args.repeats < 1:
        parser.error("--repeats must be at least 1")
    if args.quiet_wait < 0:
        parser.error("--quiet-wait must be 0 or more seconds")
    return args


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    if args.render_only:
        info, results = _from_raw(json.loads(raw_path(args.output).read_text()))
        return _report(info, results, args.output)
    names = [name for name in args.only.split(",") if name] or list(WORKLOADS)
    repeats = args.repeats or (QUICK_REPEATS if args.quick else FULL_REPEATS)
    cases = {case for case in args.cases.split(",") if case} or None
    info = RunInfo(
        command=("python benchmarks/run.py " + " ".join(argv)).strip(),
        date=datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        quick=args.quick, repeats=repeats, load_start=os.getloadavg()[0],
        parallax_source=parallax_source(),
    )
    started = time.perf_counter()
    warm_up()
    quiet = Quiet(per_case=args.quiet_wait, budget=20.0 if args.quick else 300.0)
    results = {name: run_workload(WORKLOADS[name], quick=args.quick, repeats=repeats,
                                  cases=cases, quiet=quiet) for name in names}
    info.elapsed = time.perf_counter() - started
    info.load_end = os.getloadavg()[0]
    info.quiet_per_case, info.quiet_budget, info.quiet_waited = (
        quiet.per_case, quiet.budget, quiet.waited)
    raw = raw_path(args.output)
    raw.parent.mkdir(parents=True, exist_ok=True)
    raw.write_text(json.dumps(_raw(info, results), indent=1))
    return _report(info, results, args.output)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
