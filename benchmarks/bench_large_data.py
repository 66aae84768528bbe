"""Large numpy data through parallax and its peers: inputs, a bound array, results (issue #15).

Run from the repository root (numpy and joblib installed)::

    python -m benchmarks.bench_large_data            # full sizes, 3 repeats (about 10 minutes)
    python -m benchmarks.bench_large_data --quick    # fewer items, 1 repeat (about 3 minutes)
    python -m benchmarks.bench_large_data --case fft_inputs --peer parallax-process --peer serial

Three cases, numpy float64, 2 workers everywhere, warm pools (see
``benchmarks/standalone.py`` for how one measurement is taken):

* ``fft_inputs``: 120 arrays of 4 MB, the real FFT of each (about 6 ms);
* ``bound_array``: one 256 MB array bound into the function with
  ``functools.partial``; 200 items, each the sum of its slice plus about
  2 ms of pure Python (the loop's count calibrated on this machine at the
  start, the same for every measurement of the run);
* ``bound_array_again``: the same, timed on a second call over the same
  array (the first, untimed, warms the pool): what a pool keeps between
  calls shows here; the issue's targets are on the first call;
* ``fresh_results``: 24 items, each returning a fresh 32 MB array; the table
  also gives the rate at which results come home (MB/s).

Peers: the serial loop, parallax process and auto, joblib's loky backend
(with its default auto-memmapping of arrays over 1 MB) and
``concurrent.futures.ProcessPoolExecutor``. It prints a markdown section for
``benchmarks/RESULTS.md`` and writes it to ``benchmarks/.results/large_data.md``
(``--output`` to change), the raw runs to ``benchmarks/.results/<output name>.json``.
Exit status 1 if a peer returned a wrong result or failed.
"""

from __future__ import annotations

import argparse
import functools
import os
import sys
import time

from . import arrays
from .peers import (
    JoblibRunner,
    ParallaxRunner,
    ProcessPoolExecutorRunner,
    SerialRunner,
    tuned_chunk,
)
from .standalone import (
    Case,
    Peer,
    Task,
    case_table,
    child_main,
    common_arguments,
    header_lines,
    make_quiet,
    run_all,
    write_report,
)

WORKERS = 2
FULL_REPEATS = 3
MODULE = "benchmarks.bench_large_data"


def _fft_task(count: int) -> Task:
    inputs = arrays.fft_arrays(count)
    return Task(arrays.fft_task, inputs, arrays.fft_check(inputs))


def _fft_warm() -> Task:
    inputs = arrays.fft_arrays(4, values=1024)
    return Task(arrays.fft_task, inputs, arrays.fft_check(inputs))


def _bound_task(count: int) -> Task:
    return Task(arrays.bound_fn(count), list(range(count)), arrays.slice_check(count))


def _bound_warm() -> Task:
    values = 4096  # small: joblib does not memmap it, nobody ships much
    return Task(arrays.bound_fn(4, values), list(range(4)), arrays.slice_check(4, values))


def _bound_again_task(count: int) -> Task:
    fn = arrays.bound_fn(count, array=arrays.kept_bound_values())
    return Task(fn, list(range(count)), arrays.slice_check(count))


def _bound_again_warm() -> Task:
    # The first call over the array, untimed (a new partial over the same array each call).
    count = 20
    fn = arrays.bound_fn(count, array=arrays.kept_bound_values())
    return Task(fn, list(range(count)), arrays.slice_check(count))


def _fresh_task(count: int) -> Task:
    return Task(arrays.fresh_task, list(range(count)), arrays.fresh_check(count))


def _fresh_warm() -> Task:
    values = 1024
    return Task(functools.partial(arrays.fresh_task, values=values), list(range(4)),
                arrays.fresh_check(4, values))


CASES = (
    Case("fft_inputs", "a 4 MB float64 array in, its rfft's largest magnitude out (~6 ms per item)",
         120, 60, (180, 90), _fft_task, _fft_warm),
    Case("bound_array", "one 256 MB float64 array bound with functools.partial; an int in, "
                        "its slice's sum + ~2 ms of pure Python out",
         200, 100, (180, 90), _bound_task, _bound_warm),
    Case("bound_array_again", "bound_array timed on a second call over the same array "
                              "(the first call untimed)",
         200, 100, (180, 90), _bound_again_task, _bound_again_warm),
    Case("fresh_results", "an int in, a fresh 32 MB float64 array out", 24, 12, (180, 90),
         _fresh_task, _fresh_warm,
         result_bytes=lambda count: count * arrays.RESULT_VALUES * arrays.FLOAT),
)

PEERS = (
    Peer("serial", "serial loop", lambda size: SerialRunner()),
    Peer("parallax-process", "parallax process",
         lambda size: ParallaxRunner("process", workers=WORKERS)),
    Peer("parallax-auto", "parallax auto", lambda size: ParallaxRunner("auto", workers=WORKERS)),
    Peer("joblib-loky", "joblib loky (auto-memmapping, batch_size='auto')",
         lambda size: JoblibRunner("loky", n_jobs=WORKERS)),
    Peer("ppe", f"ProcessPoolExecutor.map (chunksize = items / {4 * WORKERS})",
         lambda size: ProcessPoolExecutorRunner(tuned_chunk(size, WORKERS), workers=WORKERS)),
)


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    common_arguments(parser, repeats=FULL_REPEATS)
    parser.add_argument("--case", action="append", choices=[case.id for case in CASES],
                        help="run only this case (repeatable; default: all)")
    parser.add_argument("--peer", action="append", choices=[peer.id for peer in PEERS],
                        help="run only this peer (repeatable; default: all)")
    args = parser.parse_args(argv)
    if args.child:
        return child_main(args.child, CASES, PEERS)
    repeats = args.repeats or (1 if args.quick else FULL_REPEATS)
    cases = [case for case in CASES if not args.case or case.id in args.case]
    peers = [peer for peer in PEERS if not args.peer or peer.id in args.peer]
    reference = arrays.spin_seconds(arrays.BOUND_SPIN)
    iterations = arrays.calibrate_bound_spin()
    os.environ[arrays.BOUND_SPIN_VARIABLE] = str(iterations)  # every measurement's
    started = time.perf_counter()
    tables = run_all(MODULE, cases, peers, quick=args.quick, repeats=repeats,
                     quiet=make_quiet(args))
    elapsed = time.perf_counter() - started
    lines = header_lines(
        "Large data (numpy float64, 2 workers, warm pools)",
        ("python -m benchmarks.bench_large_data " + " ".join(argv)).strip(),
        quick=args.quick, repeats=repeats, elapsed=elapsed,
        libraries=("parallax", "numpy", "joblib", "cloudpickle"),
        extra=["- ProcessPoolExecutor forks its workers (Linux default); joblib's loky "
               "starts fresh interpreters; parallax forks them from its fork template "
               "(default start method on Linux). joblib memmaps every array over 1 MB it "
               "sends (arguments, and the array bound in the function); results come back "
               "pickled through its pipes. parallax sends every buffer of 64 KiB or more "
               "through shared memory (memfd), both ways, and the array bound in the function "
               "once per run, kept for a next run over the same unchanged array "
               "(docs/large-data.md).",
               f"- bound_array's pure Python: {iterations:,} loop iterations per item, "
               f"calibrated to {arrays.BOUND_SPIN_SECONDS * 1e3:g} ms on this machine at the "
               f"start (the reference machine's {arrays.BOUND_SPIN:,} take "
               f"{reference * 1e3:.2f} ms here)."],
    )
    for table in tables:
        lines += case_table(table)
    lines += ["*results home MB/s*: the bytes of all result arrays / the median time "
              "(computing them included, so the serial loop's figure is the rate at which "
              "one core makes them).", ""]
    return write_report("large_data", lines, tables, args.output)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
