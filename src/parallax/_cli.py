"""The ``parallax`` command line: ``info``, ``demo`` and ``bench``.

``parallax info`` says what this machine and interpreter offer, mode by mode;
``parallax demo`` shows the auto-selector at work on two workloads;
``parallax bench MODULE:FUNC`` times a function of yours under each mode.

Exit codes: 0 success, 1 the benchmarked function failed under some mode,
2 a usage error (bad arguments, a module or file that cannot be found), 130
interrupted. Usage errors print one line, never a traceback.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import json
import os
import platform
import statistics
import sys
import sysconfig
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from time import perf_counter
from typing import Any, Final

from . import __version__
from ._api import map as parallel_map
from ._api import plan
from ._config import BUILTIN_MODES, ENVIRONMENT_VARIABLE, using
from ._host import gil_enabled, usable_cpus
from ._recorder import monitor
from ._stats import Stats
from .backends import available_modes

__all__ = ["main"]

PROG: Final = "parallax"
DEFAULT_BENCH_MODES: Final = ("serial", "thread", "process", "auto")
DEFAULT_RANGE: Final = 100
EXIT_OK: Final = 0
EXIT_FAILED: Final = 1
EXIT_USAGE: Final = 2
EXIT_INTERRUPTED: Final = 130


class UsageError(Exception):
    """A problem with what the user asked for: reported in one line, exit code 2."""


# -- info -----------------------------------------------------------------------------

_DASK_HINT: Final = "needs pip install 'parallax[dask]' (the 'distributed' package)"


@dataclass(frozen=True, slots=True)
class ModeStatus:
    """Whether a mode can run here, in one word, and why in a few."""

    mode: str
    status: str  # "yes", "limited" or "no"
    note: str


def _loads(mode: str) -> str | None:
    """Why the registered backend of ``mode`` cannot be loaded, or None if it can."""
    # The registry is private, so look it up defensively: if its shape
    # changes, info still lists the mode (as registered) instead of failing.
    from . import backends

    registry: Any = getattr(backends._registry, "_entries", None)
    entry = registry.get(mode) if isinstance(registry, dict) else None
    load = getattr(entry, "load", None)
    if load is None:
        return None
    try:
        load()
    except Exception as exc:
        return f"registered, but fails to load: {type(exc).__name__}: {exc}"
    return None


def mode_statuses() -> list[ModeStatus]:
    """The status of every known or registered mode on this interpreter and machine."""
    registered = available_modes()
    cpus = usable_cpus()
    gil = gil_enabled()
    statuses: list[ModeStatus] = []
    for mode in dict.fromkeys((*BUILTIN_MODES, *registered)):
        if mode == "dask" and importlib.util.find_spec("distributed") is None:
            statuses.append(ModeStatus(mode, "no", _DASK_HINT))
            continue
        if mode not in registered:
            statuses.append(ModeStatus(mode, "no", "not available in this version of parallax"))
            continue
        broken = None if mode == "auto" else _loads(mode)
        if broken is not None:
            statuses.append(ModeStatus(mode, "no", broken))
            continue
        statuses.append(_registered_status(mode, cpus=cpus, gil=gil))
    return statuses


def _registered_status(mode: str, *, cpus: int, gil: bool) -> ModeStatus:
    if mode == "auto":
        return ModeStatus(mode, "yes", "measures the first items, then picks a mode below")
    if mode == "serial":
        return ModeStatus(mode, "yes", "one item after another in the caller (tests, debugging)")
    if mode == "thread":
        return ModeStatus(mode, "yes", "threads: for I/O-bound work (network, disk, sleeping)")
    if mode == "process":
        note = f"worker processes, {cpus} by default: for CPU-bound work"
        if cpus < 2:
            return ModeStatus(mode, "limited", note + "; only 1 usable CPU, so no speed-up")
        return ModeStatus(mode, "yes", note)
    if mode == "free-threaded":
        if gil:
            return ModeStatus(
                mode, "limited", "works, as plain threads: no CPU parallelism on this build"
            )
        return ModeStatus(mode, "yes", f"threads running Python on {cpus} CPUs at once")
    if mode == "asyncio":
        return ModeStatus(mode, "yes", "an event loop: for 'async def' functions")
    if mode == "dask":
        return ModeStatus(mode, "yes", "a Dask cluster (the 'distributed' package is installed)")
    return ModeStatus(mode, "yes", "registered with parallax.register_backend()")


def _python_build() -> str:
    free_threaded_build = bool(sysconfig.get_config_var("Py_GIL_DISABLED"))
    if not free_threaded_build:
        return "GIL enabled (standard build): threads do not run Python code in parallel"
    if gil_enabled():
        return ("free-threaded build, but the GIL was re-enabled at run time (PYTHON_GIL=1 or "
                "an extension that needs it)")
    return "free-threaded build, GIL disabled: threads run Python code in parallel"


def command_info(args: argparse.Namespace) -> int:
    """Print what this interpreter and machine offer, mode by mode."""
    forced_mode = os.environ.get(ENVIRONMENT_VARIABLE, "").strip()
    if not forced_mode:
        forced = "not set"
    elif forced_mode in available_modes():
        forced = f"{forced_mode!r}: every call runs in this mode"
    else:
        forced = f"{forced_mode!r} is not a mode: every parallax call will raise ValueError"
    rows = [
        ("parallax", __version__),
        ("python", f"{platform.python_version()} ({platform.python_implementation()}), "
                   f"{sys.executable}"),
        ("build", _python_build()),
        ("CPUs", f"{usable_cpus()} usable by this process (os.cpu_count() = {os.cpu_count()})"),
        ("processes", "workers are fresh interpreters started with subprocess "
                      "(spawn-like, never fork)"),
        (ENVIRONMENT_VARIABLE, forced),
    ]
    width = max(len(label) for label, _ in rows)
    for label, value in rows:
        print(f"{label:<{width}}  {value}")
    print()
    print("modes")
    statuses = mode_statuses()
    mode_width = max(len(status.mode) for status in statuses)
    for status in statuses:
        print(f"  {status.mode:<{mode_width}}  {status.status:<7}  {status.note}")
    return EXIT_OK


# -- demo -----------------------------------------------------------------------------


def command_demo(args: argparse.Namespace) -> int:
    """Run the README demo: ``mode="auto"`` on a CPU-bound and an I/O-bound job."""
    from ._demo import run_demo

    run_demo(sys.stdout)
    return EXIT_OK


# -- bench ----------------------------------------------------------------------------


def load_function(spec: str) -> Callable[..., Any]:
    """The callable named by ``MODULE:FUNC`` (or ``path/to/file.py:FUNC``).

    The current directory is searched first, as ``python -m`` would. ``FUNC``
    may be dotted (``module:Class.method``).

    Raises:
        UsageError: the spec is malformed, the module cannot be imported, or
            the name is missing or not callable.
    """
    module_name, _, attribute = spec.rpartition(":")
    if not module_name or not attribute:
        raise UsageError(f"expected MODULE:FUNC (for example mypackage.work:score), not {spec!r}")
    if module_name.endswith(".py"):
        path = Path(module_name)
        if not path.is_file():
            raise UsageError(f"no such file: {module_name}")
        # Imported by name from its directory, so process workers, which get
        # this sys.path, can import it the same way.
        _prepend_path(str(path.resolve().parent))
        module_name = path.stem
    else:
        _prepend_path(os.getcwd())
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name is not None and (module_name + ".").startswith(exc.name + "."):
            raise UsageError(
                f"no module named {module_name!r} (searched the current directory and sys.path)"
            ) from None
        raise UsageError(f"importing {module_name!r} failed: {type(exc).__name__}: {exc}") from None
    except Exception as exc:
        raise UsageError(f"importing {module_name!r} failed: {type(exc).__name__}: {exc}") from None
    target: Any = module
    for part in attribute.split("."):
        try:
            target = getattr(target, part)
        except AttributeError:
            raise UsageError(f"module {module_name!r} has no attribute {attribute!r}") from None
    if not callable(target):
        raise UsageError(f"{spec} is not callable (its type is {type(target).__name__})")
    function: Callable[..., Any] = target
    return function


def _prepend_path(directory: str) -> None:
    if directory not in sys.path:
        sys.path.insert(0, directory)


def read_inputs(input_file: str | None, count: int | None) -> tuple[list[Any], str]:
    """The benchmark's inputs and a short description of where they came from.

    ``--input FILE`` gives one ``str`` per line (line endings removed), or one
    JSON value per non-blank line when the file name ends in ``.jsonl``;
    ``--range N`` gives ``range(N)``.

    Raises:
        UsageError: the file is missing, unreadable, empty or not valid JSON lines.
    """
    if input_file is None:
        size = DEFAULT_RANGE if count is None else count
        return list(range(size)), f"range({size})"
    path = Path(input_file)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise UsageError(f"input file not found: {input_file}") from None
    except IsADirectoryError:
        raise UsageError(f"input file is a directory: {input_file}") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise UsageError(f"cannot read {input_file}: {exc}") from None
    lines = text.splitlines()
    if path.suffix == ".jsonl":
        inputs: list[Any] = []
        for number, line in enumerate(lines, start=1):
            if not line.strip():
                continue
            try:
                inputs.append(json.loads(line))
            except json.JSONDecodeError as exc:
                raise UsageError(f"{input_file}, line {number}: not JSON: {exc.msg}") from None
        kind = "JSON values"
    else:
        inputs = list(lines)
        kind = "lines"
    if not inputs:
        raise UsageError(f"{input_file} holds no inputs")
    return inputs, f"{len(inputs)} {kind} of {input_file}"


def parse_modes(text: str) -> list[str]:
    """The comma-separated mode list of ``--modes``, checked and de-duplicated.

    Raises:
        UsageError: a mode that is unknown or not available in this version.
    """
    requested = [name.strip() for name in text.split(",") if name.strip()]
    if not requested:
        raise UsageError("--modes needs at least one mode, for example --modes serial,process")
    registered = available_modes()
    for name in requested:
        if name in registered:
            continue
        if name in BUILTIN_MODES:
            hint = f": {_DASK_HINT}" if name == "dask" else ""
            raise UsageError(f"mode {name!r} is not available in this version of parallax{hint}")
        raise UsageError(f"unknown mode {name!r}; valid modes are: {', '.join(registered)}")
    return list(dict.fromkeys(requested))


@dataclass(slots=True)
class BenchRow:
    """One mode's outcome: its median time and the Stats of that run, or an error."""

    mode: str
    time: float | None = None
    stats: Stats | None = None
    error: str = ""
    differs: bool = False
    warnings: list[str] = field(default_factory=list)


def _describe_error(exc: BaseException) -> str:
    """One line: the exception, and the note parallax adds naming the failing item."""
    text = f"{type(exc).__name__}: {exc}".splitlines()[0]
    notes = [note for note in getattr(exc, "__notes__", ()) if isinstance(note, str)]
    return f"{text} ({notes[0]})" if notes else text


def _same(results: list[Any], baseline: list[Any] | None) -> bool:
    if baseline is None:
        return True
    try:
        return bool(results == baseline)
    except Exception:  # e.g. numpy arrays: == is elementwise, bool() is ambiguous
        return True


def bench_mode(
    fn: Callable[..., Any], inputs: list[Any], mode: str, repeat: int,
    baseline: list[Any] | None,
) -> tuple[BenchRow, list[Any] | None]:
    """Run ``fn`` over ``inputs`` ``repeat`` times in ``mode``; keep the median run."""
    runs: list[tuple[float, Stats | None]] = []
    results: list[Any] | None = None
    row = BenchRow(mode)
    # Warnings (free-threaded on a GIL build says it runs as plain threads)
    # become notes under the table rather than stderr lines mid-output.
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            for _ in range(repeat):
                # using() outranks PARALLAX_MODE, so each row really runs its mode.
                with using(mode), monitor() as mon:
                    started = perf_counter()
                    results = parallel_map(fn, inputs)
                    elapsed = perf_counter() - started
                runs.append((elapsed, mon.runs[-1] if mon.runs else None))
        except Exception as exc:
            row.error = _describe_error(exc)
    row.warnings = list(dict.fromkeys(str(warning.message) for warning in caught))
    if row.error:
        return row, None
    median = statistics.median_low(elapsed for elapsed, _ in runs)
    row.time, row.stats = next(run for run in runs if run[0] == median)
    row.differs = results is not None and not _same(results, baseline)
    return row, results


def _duration(seconds: float) -> str:
    if seconds >= 10:
        return f"{seconds:.1f} s"
    if seconds >= 1:
        return f"{seconds:.2f} s"
    if seconds >= 1e-3:
        return f"{seconds * 1e3:.1f} ms"
    return f"{seconds * 1e6:.0f} µs"


def _table(rows: Sequence[BenchRow]) -> list[str]:
    serial = next((row for row in rows if row.mode == "serial" and row.time is not None), None)
    header = ("mode", "ran as", "workers", "time", "speed-up", "efficiency")
    lines: list[tuple[str, ...]] = [header]
    notes: list[str] = []
    for row in rows:
        if row.error or row.time is None:
            lines.append((row.mode, "failed", "", "", "", ""))
            notes.append(f"{row.mode}: {row.error}")
            notes.extend(f"{row.mode}: {warning}" for warning in row.warnings)
            continue
        stats = row.stats
        speedup = "n/a"
        if serial is not None and serial.time is not None and row.time > 0:
            speedup = f"{serial.time / row.time:.2f}x"
        lines.append((
            row.mode,
            stats.mode if stats else "?",
            str(stats.workers) if stats else "?",
            _duration(row.time),
            speedup,
            f"{stats.efficiency:.0%}" if stats else "?",
        ))
        if row.differs:
            notes.append(f"{row.mode}: results differ from serial mode's")
        notes.extend(f"{row.mode}: {warning}" for warning in row.warnings)
    widths = [max(len(line[column]) for line in lines) for column in range(len(header))]
    text = []
    for line in lines:
        cells = [
            cell.ljust(width) if column < 2 else cell.rjust(width)
            for column, (cell, width) in enumerate(zip(line, widths, strict=True))
        ]
        text.append("  ".join(cells).rstrip())
    if not any(row.mode == "serial" for row in rows):
        notes.append("speed-up: n/a, as it is measured against serial; add serial to --modes")
    return text + (["", *notes] if notes else [])


def command_bench(args: argparse.Namespace) -> int:
    """Time ``MODULE:FUNC`` over the inputs in each requested mode; print a table."""
    modes = parse_modes(args.modes)
    fn = load_function(args.target)
    inputs, source = read_inputs(args.input, args.range)
    build = "GIL enabled" if gil_enabled() else "GIL disabled"
    print(f"parallax bench {args.target}: {len(inputs)} inputs ({source})")
    if args.repeat == 1:
        timing = ("time of 1 run per mode, which may include starting the mode's workers "
                  "(--repeat 3 leaves that out)")
    else:
        # median_low: every figure in a row then comes from one real run
        middle = "median" if args.repeat % 2 else "lower median"
        timing = f"time is the {middle} of {args.repeat} runs per mode"
    print(f"Python {platform.python_version()}, {build}, {usable_cpus()} usable CPUs; {timing}")
    print(flush=True)

    # serial first, whatever the order asked for: it is the baseline of the
    # speed-up and the reference the other modes' results are checked against
    order = sorted(modes, key=lambda mode: mode != "serial")
    by_mode: dict[str, BenchRow] = {}
    baseline: list[Any] | None = None
    for mode in order:
        row, results = bench_mode(fn, inputs, mode, args.repeat, baseline)
        by_mode[mode] = row
        if mode == "serial" and results is not None:
            baseline = results
    rows = [by_mode[mode] for mode in modes]
    for line in _table(rows):
        print(line)
    print()
    try:
        chosen = plan(fn, inputs)
    except Exception as exc:
        print(f"auto-selector: could not plan: {type(exc).__name__}: {exc}")
    else:
        workers = f"{chosen.workers} worker{'s' if chosen.workers != 1 else ''}"
        print(f"auto-selector (parallax.plan on these inputs): {chosen.mode}, {workers}")
        print(f"  reason: {chosen.reason}")
    return EXIT_FAILED if any(row.error for row in rows) else EXIT_OK


# -- argument parsing -----------------------------------------------------------------


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, not {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, not {text!r}")
    return value


def build_parser() -> argparse.ArgumentParser:
    """The ``parallax`` argument parser, one sub-command per action."""
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Run a function over many inputs in parallel, on the engine that suits "
                    "the work.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")

    info = commands.add_parser(
        "info", help="the interpreter, CPUs and every mode: usable here or not, and why"
    )
    info.set_defaults(handler=command_info)

    demo = commands.add_parser(
        "demo", help="mode='auto' on a CPU-bound and an I/O-bound workload (a few seconds)"
    )
    demo.set_defaults(handler=command_demo)

    bench = commands.add_parser(
        "bench", help="time MODULE:FUNC under each mode",
        description="Time a function of yours over some inputs under each mode, and show "
                    "what mode='auto' would pick.",
    )
    bench.add_argument("target", metavar="MODULE:FUNC",
                       help="the function, e.g. mypackage.work:score or work.py:score")
    source = bench.add_mutually_exclusive_group()
    source.add_argument("--input", metavar="FILE",
                        help="one input per line, as str; JSON values if FILE ends in .jsonl")
    source.add_argument("--range", metavar="N", type=_positive_int,
                        help=f"inputs 0..N-1 (default: --range {DEFAULT_RANGE})")
    bench.add_argument("--modes", default=",".join(DEFAULT_BENCH_MODES),
                       help="comma-separated modes (default: %(default)s)")
    bench.add_argument("--repeat", metavar="K", type=_positive_int, default=3,
                       help="runs per mode; the median is shown (default: %(default)s)")
    bench.set_defaults(handler=command_bench)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run the ``parallax`` command line.

    Args:
        argv: the arguments after the program name (default: ``sys.argv[1:]``).

    Returns:
        The exit code: 0 success, 1 the benchmarked function failed, 2 a
        usage error, 130 interrupted.
    """
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # argparse exits for --help, --version and usage errors
        return exc.code if isinstance(exc.code, int) else EXIT_USAGE
    if args.command is None:
        parser.print_help(sys.stderr)
        return EXIT_USAGE
    handler: Callable[[argparse.Namespace], int] = args.handler
    try:
        return handler(args)
    except UsageError as exc:
        print(f"{PROG} {args.command}: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print(f"{PROG} {args.command}: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except BrokenPipeError:
        # The reader went away (parallax info | head): not an error. Point
        # stdout at devnull so the interpreter's final flush stays quiet.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return EXIT_OK
