"""What happens when items fail, hang or crash their worker.

Shows, on a small batch of "jobs" where a few misbehave:

* ``errors="raise"`` (the default): the first failure stops the run and
  reaches you as its own type, with a note naming the failing item and the
  worker-side traceback chained as ``__cause__``;
* ``errors="return"``: every item runs; a failed item's exception sits in
  its place in the results;
* ``errors="skip"``: failed items are left out;
* ``timeout=``: an item running too long becomes ``TaskTimeoutError`` (in
  process mode its worker is killed and replaced);
* a worker process that dies (here ``os._exit``; in real life a segfault in
  an extension or the OOM killer) fails only the item it was running, with
  ``WorkerCrashedError`` naming the exit code; the other items carry on.

Run it: ``python examples/errors_and_timeouts.py`` (a few seconds on 2 cores).
"""

from __future__ import annotations

import os
import time

import parallax


def parse_record(line: str) -> int:
    """Parse ``"key=value"`` into the value; malformed lines raise ``ValueError``."""
    _, equals, value = line.partition("=")
    if not equals:
        raise ValueError(f"no '=' in {line!r}")
    return int(value)


def risky(job: int) -> int:
    """Most jobs are quick; job 3 hangs, job 5 kills its worker process."""
    if job == 3:
        time.sleep(60)  # far past the timeout below
    if job == 5:
        os._exit(7)  # the whole worker process dies, as on a segfault
    return job * 10


def main() -> None:
    lines = ["a=1", "b=2", "oops", "d=4", "e=", "f=6"]

    # errors="raise": the first failure stops the run, as its own type.
    try:
        parallax.map(parse_record, ["a=1", "b=2", "oops", "d=4"], mode="thread", workers=2)
    except ValueError as error:
        notes = getattr(error, "__notes__", [])
        print(f"raise:  ValueError({error}) -- {notes[0] if notes else ''}")
        print(f"        cause: {type(error.__cause__).__name__} (the worker's traceback)")
    else:
        raise AssertionError("a malformed line should have raised")

    # errors="return": the exception in the item's place.
    returned = parallax.map(parse_record, lines, mode="thread", workers=2, errors="return")
    shown = [type(value).__name__ if isinstance(value, Exception) else value for value in returned]
    print(f"return: {shown}")
    assert shown == [1, 2, "ValueError", 4, "ValueError", 6]

    # errors="skip": failed items left out.
    skipped = parallax.map(parse_record, lines, mode="thread", workers=2, errors="skip")
    print(f"skip:   {skipped}")
    assert skipped == [1, 2, 4, 6]

    # A hung item and a crashing worker, in process mode: each fails alone.
    # using() outranks a PARALLAX_MODE=serial in the environment: os._exit must
    # run in a worker process, never in this one.
    started = time.perf_counter()
    with parallax.using("process"), parallax.monitor() as mon:
        outcomes = parallax.map(risky, range(8), workers=2, chunksize=1, timeout=1.0,
                                errors="return")
    elapsed = time.perf_counter() - started
    for job, outcome in enumerate(outcomes):
        if isinstance(outcome, Exception):
            print(f"job {job}: {type(outcome).__name__}: {outcome}")
    assert isinstance(outcomes[3], parallax.TaskTimeoutError)
    assert isinstance(outcomes[3], TimeoutError)  # existing except clauses keep working
    assert isinstance(outcomes[5], parallax.WorkerCrashedError)
    assert outcomes[5].exitcode == 7
    good = [job * 10 for job in range(8) if job not in (3, 5)]
    assert [value for value in outcomes if not isinstance(value, Exception)] == good
    print(f"the other {len(good)} jobs succeeded: {good}")
    print(f"whole run: {elapsed:.1f} s, not 60: the hung worker was killed at the timeout; "
          f"{mon.runs[0].failed} items failed")


if __name__ == "__main__":
    main()
