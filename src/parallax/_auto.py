"""The auto-selector: measure the first items, then pick the engine.

:func:`probe` runs the first item(s) of the input in the caller and measures
wall time against CPU time (``time.thread_time``) and the time spent waiting
for a CPU; :func:`decide` is a pure function of those :class:`Facts` (plus
the GIL state, the CPU count, the input size, whether things pickle and how
two threads overlap on the function) that returns a :class:`Plan` with a
one-line reason. The probed items' outcomes are kept and become the first
results of the run: nothing is computed twice.
"""

from __future__ import annotations

import contextlib
import math
import os
import pickle
import threading
import time
import weakref
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from time import perf_counter, thread_time
from types import FunctionType
from typing import TYPE_CHECKING, Any, Final

if TYPE_CHECKING:
    from collections.abc import Generator

from . import _host
from ._calls import CheckedCall, StarCall
from ._chunking import ChunkSizer
from ._errors import describe_item
from ._records import FrozenRecord, Record
from ._serialize import PROTOCOL, dumps
from ._units import Failure
from ._worker import set_inside_worker, use_worker_state
from .backends._registry import chunk_overhead

__all__ = ["Facts", "Plan", "Probe", "StartEarly", "decide", "decide_early", "noted_reason",
           "probe", "probe_more"]

#: below this much total work, starting or even feeding a pool costs more
SERIAL_BUDGET: Final = 0.005
#: per-item cost of shipping a small item to a process and back
PROCESS_ITEM_COST: Final = 3e-6
#: bytes per second a pipe to a worker moves, both ways counted once each
PIPE_BANDWIDTH: Final = 1.0e9
#: bytes per second process mode copies into shared memory (``_shm``: large
#: out-of-band buffers; the receiver maps them, no copy there). Measured on the
#: 2-core reference machine: ~2.5 GB/s into a fresh segment (a result, a bound
#: object), 8 GB/s into a recycled one (a chunk's arguments once the pool runs)
SHARED_BANDWIDTH: Final = 2.5e9
#: CPU share of wall time above which work counts as CPU-bound
CPU_BOUND_SHARE: Final = 0.5
#: most threads auto mode starts for waiting work
MAX_IO_WORKERS: Final = 256
#: coroutines awaited at once, as asyncio mode's own default (they are cheap)
ASYNCIO_CONCURRENCY: Final = 1000
#: probe until this much time was spent (waiting for a CPU not counted) or
#: this many items ran
PROBE_SECONDS: Final = 0.002
PROBE_ITEMS: Final = 64
#: ...but on a busy machine, never longer than this (wall time)
PROBE_MAX_SECONDS: Final = 0.05
#: an item faster than this is not timed alone: the next ones run with one
#: CPU clock reading around them (a thread CPU clock read is a system call,
#: slower than such an item), as the worker loop runs them
FAST_ITEM_SECONDS: Final = 20e-6
#: pickled items bigger than this make auto check how threads overlap
LARGE_ITEM_BYTES: Final = 256 * 1024
#: a first probed item still running this long is looked at from another
#: thread: if it waits, the rest of the input starts meanwhile
WATCH_AFTER: Final = PROBE_SECONDS
#: the thread-overlap test runs at least this long and this many items...
OVERLAP_SECONDS: Final = 0.03
OVERLAP_MIN_ITEMS: Final = 4
#: ...and at most this many
OVERLAP_MAX_ITEMS: Final = 64
#: two threads must run items at least this much faster than one for threads
#: to count as running in parallel (2.0 is perfect overlap)
OVERLAP_SPEEDUP: Final = 1.3
#: without the GIL, free threads win over processes only from this overlap on:
#: processes reach ~1.9x on 2 cores, while threads contending on shared
#: objects measured 1.3-1.4x in the probe and ran 1.25x over a whole run
#: (benchmarks/bench_freethreaded.py, "shared"); work that overlaps well measures 1.8x
FREE_THREADED_SPEEDUP: Final = 1.6
#: longest the caller keeps working while a process pool boots (its workers
#: import the caller's modules, which can take seconds)
WARMUP_BUDGET: Final = 5.0

_END: Final = object()


class Plan(FrozenRecord):
    """The auto-selector's decision: mode, workers, chunk size, and why."""

    __match_args__ = ("mode", "workers", "chunksize", "reason")  # the fields, in order
    __slots__ = __match_args__
    mode: str
    workers: int
    chunksize: int | str
    reason: str

    def __init__(self, mode: str, workers: int, chunksize: int | str, reason: str) -> None:
        _set = object.__setattr__
        _set(self, "mode", mode)
        _set(self, "workers", workers)
        _set(self, "chunksize", chunksize)
        _set(self, "reason", reason)


class Facts(FrozenRecord):
    """What was measured or known about a job, the input of :func:`decide`.

    - ``item_wall``, ``item_cpu``: mean seconds (wall, CPU) per probed item
    - ``item_runqueue``: mean seconds per item spent ready to run but waiting
      for a CPU (other processes were busy); not waiting for I/O, so not
      counted as such
    - ``total``: items in the whole input, if known
    - ``unpicklable``: what did not pickle; ``unpicklable_why``: the pickling
      error, when known
    - ``item_bytes``: pickled size of an item, what goes through the socket
    - ``shared_bytes``: what an item and its result send through shared
      memory (process mode's large out-of-band buffers)
    - ``payload_bytes``: what the function sends through shared memory (a
      large object bound into it), once per run
    - ``thread_speedup``: items on two threads at once vs one after another
      (2.0: perfect overlap); measured for large items (the payload rule)
      and, without the GIL, for CPU-bound work before free-threaded mode is
      picked
    """

    __match_args__ = ("coroutine", "probed", "item_wall", "item_cpu", "item_runqueue", "total",
                      "gil_enabled", "cpus", "picklable", "unpicklable", "unpicklable_why",
                      "item_bytes", "thread_speedup", "shared_bytes",
                      "payload_bytes")  # the fields, in order
    __slots__ = __match_args__
    coroutine: bool
    probed: int
    item_wall: float | None
    item_cpu: float | None
    item_runqueue: float
    total: int | None
    gil_enabled: bool
    cpus: int
    picklable: bool
    unpicklable: str
    unpicklable_why: str
    item_bytes: int | None
    thread_speedup: float | None
    shared_bytes: int
    payload_bytes: int

    def __init__(
        self,
        coroutine: bool = False,
        probed: int = 0,
        item_wall: float | None = None,
        item_cpu: float | None = None,
        item_runqueue: float = 0.0,
        total: int | None = None,
        gil_enabled: bool = True,
        cpus: int = 1,
        picklable: bool = True,
        unpicklable: str = "",
        unpicklable_why: str = "",
        item_bytes: int | None = None,
        thread_speedup: float | None = None,
        shared_bytes: int = 0,
        payload_bytes: int = 0,
    ) -> None:
        _set = object.__setattr__
        _set(self, "coroutine", coroutine)
        _set(self, "probed", probed)
        _set(self, "item_wall", item_wall)
        _set(self, "item_cpu", item_cpu)
        _set(self, "item_runqueue", item_runqueue)
        _set(self, "total", total)
        _set(self, "gil_enabled", gil_enabled)
        _set(self, "cpus", cpus)
        _set(self, "picklable", picklable)
        _set(self, "unpicklable", unpicklable)
        _set(self, "unpicklable_why", unpicklable_why)
        _set(self, "item_bytes", item_bytes)
        _set(self, "thread_speedup", thread_speedup)
        _set(self, "shared_bytes", shared_bytes)
        _set(self, "payload_bytes", payload_bytes)

    def shipping_seconds(self, items: int) -> float:
        """What shipping one item to a process and its result back costs, of
        ``items`` in all: the socket both ways, the shared memory written,
        and the function's shared payload, written once, spread over them."""
        through_socket = 2 * (self.item_bytes or 0) / PIPE_BANDWIDTH
        shared = (self.shared_bytes + self.payload_bytes / max(items, 1)) / SHARED_BANDWIDTH
        return through_socket + shared


def _duration(seconds: float) -> str:
    if seconds >= 1:
        return f"{seconds:.2g} s"
    if seconds >= 1e-3:
        return f"{seconds * 1e3:.3g} ms"
    return f"{seconds * 1e6:.3g} µs"


def _io_threads(cpus: int, wall: float, cpu: float) -> int:
    """Threads to overlap waiting: enough for the measured wait/CPU ratio.

    Rounded up to a power of four, so that calls with similar work share one
    warm pool (pools are keyed by size) instead of each starting its own: the
    CPU time of a mostly waiting item is tiny and noisy (20-200 µs for a 10 ms
    sleep), and powers of two split such calls between 128 and 256 threads.
    Thread pools start their threads only as work arrives.
    """
    fit = max(cpus, math.ceil(cpus * wall / max(cpu, wall / MAX_IO_WORKERS)))
    count = 1
    while count < fit:  # integers: a float log would misround exact powers
        count *= 4
    return min(MAX_IO_WORKERS, count)


def decide(facts: Facts, workers: int | None = None) -> Plan:
    """Pick a mode from measured facts. Pure: no pool is started, nothing runs.

    Work that does not pickle but runs serially or on threads works today
    and fails once auto picks process mode for more of it: the reason says so.
    """
    chosen = _choose(facts, workers)
    if facts.picklable or chosen.mode not in ("serial", "thread") or "pickle" in chosen.reason:
        return chosen
    return Plan(
        chosen.mode, chosen.workers, chosen.chunksize,
        f"{chosen.reason}; note: {facts.unpicklable} cannot be pickled{facts.unpicklable_why}, "
        "so this work would fail in process mode, which auto picks for larger CPU-bound "
        "work (check_pickle=True in serial mode, or pytest --parallax-check-pickle, "
        "finds such problems early)",
    )


def _choose(facts: Facts, workers: int | None) -> Plan:
    cpus = max(1, facts.cpus)
    if facts.coroutine:
        count = workers or ASYNCIO_CONCURRENCY
        return Plan("asyncio", count, "auto", f"coroutine function -> asyncio, {count} at a time")
    if facts.item_wall is None or facts.item_cpu is None:
        mode = "process" if facts.gil_enabled else "free-threaded"
        gil = "GIL enabled" if facts.gil_enabled else "GIL disabled"
        return Plan(
            mode, workers or cpus, "auto",
            f"nothing measured yet: assumed CPU-bound, {gil}, {cpus} cores -> {mode}",
        )
    # What an item costs when it has a CPU: on a busy machine it also waits
    # for one, and that time is neither work nor I/O. A busy machine must
    # not make tiny work look worth a pool.
    cpu = min(max(facts.item_cpu, 0.0), max(facts.item_wall, 1e-9))
    wall = max(facts.item_wall - facts.item_runqueue, cpu, 1e-9)
    share = cpu / wall
    per_item = _duration(wall)
    remaining = None if facts.total is None else max(0, facts.total - facts.probed)
    if remaining is not None and remaining * wall < SERIAL_BUDGET:
        count = facts.total if facts.total is not None else remaining
        return Plan(
            "serial", 1, "auto",
            f"tiny input: {count} items x {per_item} is under "
            f"{_duration(SERIAL_BUDGET)} of work in all -> serial",
        )
    if share < CPU_BOUND_SHARE:
        waiting = wall - cpu
        count = workers or _io_threads(cpus, wall, cpu)
        return Plan(
            "thread", count, "auto",
            f"I/O-bound: {1 - share:.0%} of {per_item} per item is waiting "
            f"({_duration(waiting)}) -> thread, {count} workers",
        )
    if wall < 2 * PROCESS_ITEM_COST:
        return Plan(
            "serial", 1, "auto",
            f"tiny tasks: {per_item} per item costs less than shipping it to a worker -> serial",
        )
    if cpus < 2:
        return Plan("serial", 1, "auto", f"CPU-bound ({share:.0%} CPU) but only 1 core -> serial")
    cpu_bound = f"CPU-bound: {share:.0%} of {per_item} per item is CPU"
    speedup = facts.thread_speedup
    overlap = "" if speedup is None else f", 2 threads: {speedup:.2g}x"
    # Without the GIL threads may still not overlap on this function (shared
    # reference counts, locks, an extension that takes a lock): the probe
    # measured two threads on it when it could; if they did not overlap
    # nearly as well as processes would, process.
    if not facts.gil_enabled and (speedup is None or speedup >= FREE_THREADED_SPEEDUP):
        count = workers or cpus
        return Plan(
            "free-threaded", count, "auto",
            f"{cpu_bound}, GIL disabled, {cpus} cores{overlap} -> free-threaded, "
            f"{count} threads",
        )
    if facts.item_bytes is not None and speedup is not None:
        shipping = facts.shipping_seconds(facts.total or facts.probed)
        if shipping >= wall / 2:
            size = (facts.item_bytes + facts.shared_bytes) / 1e6
            heavy = (
                f"CPU-bound but payload-heavy: shipping {size:.2g} MB per item "
                f"costs ~{_duration(shipping)} vs {per_item} of work"
            )
            if speedup >= OVERLAP_SPEEDUP:
                count = workers or cpus
                # (with the GIL, the work releases it: hashing, compression, numpy)
                threads, why = (("thread", "the work releases the GIL") if facts.gil_enabled
                                else ("free-threaded", "GIL disabled"))
                return Plan(
                    threads, count, "auto",
                    f"{heavy}, and 2 threads ran {speedup:.2g}x faster than 1 "
                    f"({why}) -> {threads}",
                )
            return Plan(
                "serial", 1, "auto",
                f"{heavy}, and 2 threads ran only {speedup:.2g}x faster than 1 "
                "-> serial",
            )
    if not facts.picklable:
        if not facts.gil_enabled and speedup is not None and speedup >= OVERLAP_SPEEDUP:
            count = workers or cpus
            return Plan(
                "free-threaded", count, "auto",
                f"{cpu_bound}, GIL disabled, {cpus} cores{overlap}, and "
                f"{facts.unpicklable} cannot be pickled for a process -> free-threaded, "
                f"{count} threads",
            )
        return Plan(
            "serial", 1, "auto",
            f"CPU-bound but {facts.unpicklable} cannot be pickled for a process -> serial",
        )
    count = workers or cpus
    # Read where it is set, the process backend's class (its module is
    # imported here, when the plan is a process pool, and not before).
    overhead = chunk_overhead("process")
    sizer = ChunkSizer(
        "auto", workers=count, total=facts.total, chunk_overhead=overhead, item_seconds=wall
    )
    chunk = sizer.next_size(facts.probed)
    # Without the GIL this is the fallback: two threads did not overlap.
    gil = "GIL enabled" if facts.gil_enabled else "GIL disabled"
    threads = overlap if not facts.gil_enabled else ""
    return Plan(
        "process", count, "auto",
        f"{cpu_bound}, {gil}, {cpus} cores{threads} -> process, chunks of {chunk}",
    )


class Probe(Record):
    """The measured facts and the outcomes of the items run to measure them."""

    __match_args__ = ("facts", "items", "outcomes", "ends", "started", "cpu", "unchecked",
                      "early", "plan")
    __slots__ = __match_args__

    def __init__(self, facts: Facts, items: list[Any] | None = None,
                 outcomes: list[Any] | None = None, ends: list[float] | None = None,
                 started: float = 0.0, cpu: float = 0.0,
                 unchecked: tuple[Callable[[Any], Any], Any] | None = None,
                 early: bool = False, plan: Plan | None = None) -> None:
        self.facts = facts
        self.items: list[Any] = [] if items is None else items
        self.outcomes: list[Any] = [] if outcomes is None else outcomes  # values, or Failure
        self.ends: list[float] = [] if ends is None else ends
        self.started = started
        self.cpu = cpu
        #: (function, first item) not yet checked for pickling (``probe(note_later=True)``)
        self.unchecked = unchecked
        #: the rest of the input started while the first item ran (``start_early``)
        self.early = early
        #: ``decide(facts)``, when the probe made it of these very facts
        self.plan = plan

    def noted(self, workers: int | None = None) -> Callable[[], str]:
        """The reason of the plan for these facts, checked for pickling when
        called (once): for a reason read later, if ever."""
        return noted_reason(self.facts, workers, self.unchecked)


    def run_one(self, fn: Callable[[Any], Any], item: Any) -> tuple[Any, float]:
        """Run ``fn(item)`` in this thread and keep its outcome; its (outcome, wall time)."""
        outcome, wall, cpu = _timed_call(fn, item)
        self.items.append(item)
        self.outcomes.append(outcome)
        self.ends.append(perf_counter())
        self.cpu += cpu
        return outcome, wall

    def run_fast(self, fn: Callable[[Any], Any], source: Iterator[Any], limit: int,
                 budget: float) -> tuple[float, bool]:
        """Run up to ``limit`` next items of ``source`` (tiny ones), for at
        most about ``budget`` seconds, reading the CPU clock once around them
        all; each item's end time is still kept. Their (wall time, whether
        ``source`` ran out)."""
        # Bound methods and a countdown: per item this loop costs several
        # times a tiny item, so each lookup saved shows
        add_item, add_outcome, add_end = self.items.append, self.outcomes.append, self.ends.append
        clock = perf_counter
        left = limit
        cpu_started = thread_time()
        started = now = clock()
        stop = started + budget
        for item in source:
            try:
                outcome = fn(item)
            except KeyboardInterrupt:
                raise
            except BaseException as exc:
                outcome = Failure.capture(exc)
            now = clock()
            add_item(item)
            add_outcome(outcome)
            add_end(now)
            left -= 1
            if left <= 0 or now >= stop:
                exhausted = False
                break
        else:
            exhausted = True
        self.cpu += thread_time() - cpu_started
        return now - started, exhausted


def noted_reason(facts: Facts, workers: int | None,
                 unchecked: tuple[Callable[[Any], Any], Any] | None,
                 *, early: bool = False) -> Callable[[], str]:
    """The reason of :func:`decide` (``early``: of :func:`decide_early`) for
    ``facts``, with the pickling note of ``unchecked`` (function, first item),
    checked when the reason is first read."""
    memo: list[str] = []

    def reason() -> str:
        if not memo:
            checked = facts if unchecked is None else _check_pickles(*unchecked, facts)
            memo.append((decide_early if early else decide)(checked, workers).reason)
        return memo[0]

    return reason


def decide_early(facts: Facts, workers: int | None = None) -> Plan:
    """:func:`decide` on what the first item showed while it still runs:
    ``facts.item_wall`` is how long it has run so far (a lower bound). The
    reason says so."""
    chosen = decide(facts, workers)
    return chosen.replace(reason=f"{chosen.reason} (decided {_duration(facts.item_wall or 0.0)} "
                                 "into the first item, which was waiting)")


#: called from another thread while the first probed item still runs and
#: waits: (the facts so far, that item, when it started) -> whether the rest
#: of the input was started
StartEarly = Callable[[Facts, Any, float], bool]


class _FirstItemSeconds:
    """How long the first probed item of each function took last time: a
    function whose first item was tiny is not watched again (the watching
    thread would cost more than its items)."""

    def __init__(self) -> None:
        self._seconds: weakref.WeakKeyDictionary[Any, float] = weakref.WeakKeyDictionary()

    @staticmethod
    def _key(fn: Callable[[Any], Any]) -> Any:
        while isinstance(fn, StarCall | CheckedCall):
            fn = fn.fn
        return fn

    def worth_watching(self, fn: Callable[[Any], Any]) -> bool:
        try:
            seconds = self._seconds.get(self._key(fn))
        except TypeError:  # not weakly referable (a builtin): no history
            return True
        return seconds is None or seconds >= WATCH_AFTER / 4

    def note(self, fn: Callable[[Any], Any], seconds: float) -> None:
        with contextlib.suppress(TypeError):
            self._seconds[self._key(fn)] = seconds


_first_item_seconds = _FirstItemSeconds()


class _FirstItemWatch:
    """Another thread's look at the first probed item while the caller runs it.

    After :data:`WATCH_AFTER`, if the item still runs and its thread spent
    less than :data:`CPU_BOUND_SHARE` of that time on a CPU (time waiting
    for a CPU, on a busy machine, is not counted either way), the item waits:
    ``start_early`` starts the rest of the input there and then. The caller
    keeps its item: probed items run in the caller's thread.
    """

    __slots__ = ("_cpu_clock", "_cpu_started", "_ended", "_facts", "_item", "_lock",
                 "_native_id", "_runqueue_started", "_start_early", "_started", "_wall_started",
                 "started_rest")

    @classmethod
    def arm(cls, fn: Callable[[Any], Any], item: Any, facts: Facts,
            start_early: StartEarly) -> _FirstItemWatch | None:
        """A watch of the caller's thread running ``item`` now, or None
        where it cannot be watched (no per-thread CPU clock), or need not
        be (this function's first item was tiny last time)."""
        getclock = getattr(time, "pthread_getcpuclockid", None)
        if getclock is None or not _first_item_seconds.worth_watching(fn):
            return None
        watch = cls(getclock(threading.get_ident()), facts, item, start_early)
        threading.Thread(target=watch._watch, name="parallax-probe-watch", daemon=True).start()
        watch._begin()  # after the thread started: that CPU time is not the item's
        return watch

    def __init__(self, cpu_clock: int, facts: Facts, item: Any,
                 start_early: StartEarly) -> None:
        self._cpu_clock = cpu_clock
        self._native_id = threading.get_native_id()
        self._facts = facts
        self._item = item
        self._start_early = start_early
        self._lock = threading.Lock()
        self._ended = threading.Event()
        self.started_rest = False
        self._runqueue_started = self._cpu_started = self._wall_started = 0.0
        self._started = perf_counter()

    def _begin(self) -> None:
        """The item starts now (the watching thread reads these only later)."""
        self._runqueue_started = _runqueue_seconds()
        self._cpu_started = thread_time()
        self._wall_started = self._started = perf_counter()

    def _watch(self) -> None:
        if self._ended.wait(WATCH_AFTER):
            return
        with self._lock:
            if self._ended.is_set():
                return
            wall = perf_counter() - self._wall_started
            cpu = time.clock_gettime(self._cpu_clock) - self._cpu_started
            runqueue = max(0.0, _runqueue_seconds(self._native_id) - self._runqueue_started)
            if cpu >= CPU_BOUND_SHARE * max(wall - runqueue, 1e-9):
                return  # it computes: the probe goes on as usual
            facts = self._facts.replace(probed=1, item_wall=wall, item_cpu=cpu,
                                        item_runqueue=min(runqueue, wall))
            self.started_rest = self._start_early(facts, self._item, self._started)

    def end(self) -> bool:
        """The item returned (or raised): whether the rest was started meanwhile."""
        self._ended.set()
        with self._lock:  # a start under way finishes first
            return self.started_rest


@contextmanager
def _as_worker() -> Generator[None, None, None]:
    """This thread counts as a parallax worker meanwhile: the probed items are
    the run's first items, so a parallax call they make is a nested call and
    runs serially, as it would in the pool's workers (never starting a pool
    of its own from the caller), and ``worker_state()`` is a dict of its own.
    Restored on the way out, on exceptions too."""
    previous = set_inside_worker(True)
    previous_state = use_worker_state({})
    try:
        yield
    finally:
        use_worker_state(previous_state)
        set_inside_worker(previous)


def _timed_call(fn: Callable[[Any], Any], item: Any) -> tuple[Any, float, float]:
    wall_started = perf_counter()
    cpu_started = thread_time()
    try:
        outcome = fn(item)
    except KeyboardInterrupt:
        raise
    except BaseException as exc:
        outcome = Failure.capture(exc)
    return outcome, perf_counter() - wall_started, thread_time() - cpu_started


def probe(
    fn: Callable[[Any], Any],
    source: Iterator[Any],
    *,
    total: int | None,
    coroutine: bool = False,
    check_threads: bool = True,
    note_later: bool = False,
    start_early: StartEarly | None = None,
) -> Probe:
    """Run the first item(s) of ``source`` in the caller and measure them.

    ``note_later``: work bound for the caller or threads is not checked for
    pickling now (only the plan's note depends on it, and a check can cost
    an import of cloudpickle, more than a small job): :meth:`Probe.noted`
    does it, when the reason is read.

    ``start_early``: while the first item runs, another thread looks at it
    once :data:`WATCH_AFTER` has passed; if it is still running and mostly
    waiting, ``start_early(facts so far, item, started)`` is called there to
    start the rest of the input meanwhile, and returns whether it did. If it
    did, the probe ends with that item (``Probe.early``): the rest of the
    input is no longer the probe's to read.
    """
    cpus = _host.usable_cpus()
    gil = _host.gil_enabled()
    if coroutine:
        return Probe(Facts(coroutine=True, total=total, gil_enabled=gil, cpus=cpus))
    result = Probe(Facts(total=total, gil_enabled=gil, cpus=cpus), started=perf_counter())
    wall_total = 0.0
    runqueue_before = _runqueue_seconds()
    runqueue = 0.0
    # As _as_worker(), written out: a generator-based context manager costs
    # more than a tiny call's probe
    previous = set_inside_worker(True)
    previous_state = use_worker_state({})
    try:
        for item in source:
            watch = None
            if start_early is not None and not result.items:
                watch = _FirstItemWatch.arm(fn, item, result.facts, start_early)
            if watch is None:
                wall_total += result.run_one(fn, item)[1]
            else:
                try:
                    wall_total += result.run_one(fn, item)[1]
                finally:
                    result.early = watch.end()
                _first_item_seconds.note(fn, wall_total)
                if result.early:
                    break
            if len(result.items) >= PROBE_ITEMS:
                break
            if wall_total < FAST_ITEM_SECONDS * len(result.items):
                more, exhausted = result.run_fast(fn, source, PROBE_ITEMS - len(result.items),
                                                  PROBE_SECONDS - wall_total)
                wall_total += more
                if exhausted or len(result.items) >= PROBE_ITEMS:
                    break
            if wall_total >= PROBE_SECONDS:
                # Time spent waiting for a CPU (a busy machine) is not the
                # work's: probe on until the work itself took PROBE_SECONDS,
                # so one preempted item does not stand for them all.
                runqueue = max(0.0, _runqueue_seconds() - runqueue_before)
                if wall_total - runqueue >= PROBE_SECONDS or wall_total >= PROBE_MAX_SECONDS:
                    break
    finally:
        use_worker_state(previous_state)
        set_inside_worker(previous)
    count = len(result.items)
    if count == 0:
        return result
    runqueue = max(0.0, _runqueue_seconds() - runqueue_before)
    facts = Facts(
        probed=count,
        item_wall=wall_total / count,
        item_cpu=result.cpu / count,
        item_runqueue=min(runqueue, wall_total) / count,
        total=total,
        gil_enabled=gil,
        cpus=cpus,
    )
    if result.early:
        result.facts = facts
        return result  # the rest runs already: nothing more to check
    if (check_threads and facts.cpus >= 2 and not facts.gil_enabled
            and decide(facts).mode == "free-threaded"):
        # No GIL, CPU-bound: do two threads really run this function in
        # parallel? If not, the rules fall back to process mode.
        facts = _thread_overlap(fn, result, facts, source)
    plan = decide(facts)
    mode = plan.mode
    if mode == "process":
        # Only work bound for a process is pickled whole to see if it can go
        # (tiny work must not pay for a full check, or an import of cloudpickle).
        facts = _check_shipping(fn, result, facts, source, check_threads=check_threads)
    elif mode in ("serial", "thread"):
        # Would it pickle, should it grow into process work? Cheap: the
        # standard pickler first, cloudpickle only for what must go by value.
        if note_later:
            result.unchecked = (fn, result.items[0])
            result.plan = plan  # the facts it was made of stay as they are
        else:
            facts = _check_pickles(fn, result.items[0], facts)
    result.facts = facts
    return result


def probe_more(
    fn: Callable[[Any], Any],
    source: Iterator[Any],
    result: Probe,
    *,
    while_: Callable[[], bool],
    budget: float = WARMUP_BUDGET,
) -> None:
    """Keep running items in the caller while ``while_()`` holds (a pool boots).

    The outcomes join the probed ones (they become the run's first results).
    Stops at the first failure, at the end of the input, or after ``budget``
    seconds, whichever comes first.
    """
    deadline = perf_counter() + budget
    with _as_worker():
        while while_() and perf_counter() < deadline:
            item = next(source, _END)
            if item is _END or isinstance(result.run_one(fn, item)[0], Failure):
                return


def _check_shipping(
    fn: Callable[[Any], Any],
    result: Probe,
    facts: Facts,
    source: Iterator[Any],
    *,
    check_threads: bool,
) -> Facts:
    """Can the work go to a process, what would shipping cost, and would
    threads do as well?

    Sizes are counted as process mode ships: large out-of-band buffers
    (numpy arrays...) go through shared memory and are counted, not copied.
    """
    from ._shm import measure

    try:
        payload_bytes = measure(fn)[1]
    except Exception:
        return _replace(facts, picklable=False, unpicklable=f"the function {_name(fn)}")
    try:
        item_bytes, shared_bytes = measure(result.items[0], by_value=False)
    except Exception:
        return _replace(facts, picklable=False, unpicklable="the input items")
    outcome = result.outcomes[0]
    if not isinstance(outcome, Failure):
        with contextlib.suppress(Exception):  # (a result that cannot go home fails later)
            shared_bytes += measure(outcome, by_value=False)[1]
    facts = _replace(facts, item_bytes=item_bytes, shared_bytes=shared_bytes,
                     payload_bytes=payload_bytes)
    if (not check_threads or item_bytes + shared_bytes < LARGE_ITEM_BYTES or facts.cpus < 2
            or facts.thread_speedup is not None):
        return facts
    # If the work releases the GIL (hashing, compression, numpy), threads
    # run it in parallel without shipping a byte.
    return _thread_overlap(fn, result, facts, source)


def _thread_overlap(
    fn: Callable[[Any], Any], result: Probe, facts: Facts, source: Iterator[Any]
) -> Facts:
    """Run the next items on two threads at once: ``facts`` with their
    ``thread_speedup`` over one thread (None: too few items left to tell).

    Both threads are started before the clock runs and share the next items
    until OVERLAP_SECONDS have passed: on a virtual machine a woken thread
    can wait milliseconds for the idle core, so a few items alone would
    measure the scheduler, not the work. Their outcomes are kept like the
    other probed items.

    As in the probe, time a thread spent waiting for a CPU (other processes
    held them) is not the work's: it is taken out of the elapsed time. Two
    threads sharing the one core a busy machine leaves them would otherwise
    read as threads that do not overlap, while threads waiting for the GIL
    (asleep, not runnable) still read as such.
    """
    batch: list[Any] = []
    outcomes: dict[int, Any] = {}
    ends: dict[int, float] = {}
    waits: list[float] = []
    taking = threading.Lock()
    start_line = threading.Barrier(3)
    deadline = perf_counter() + OVERLAP_SECONDS

    def take() -> int | None:
        with taking:
            enough = len(batch) >= OVERLAP_MIN_ITEMS and perf_counter() >= deadline
            if enough or len(batch) >= OVERLAP_MAX_ITEMS:
                return None
            item = next(source, _END)
            if item is _END:
                return None
            batch.append(item)
            return len(batch) - 1

    def run() -> None:
        set_inside_worker(True)  # a thread of its own: it ends with the test
        use_worker_state({})
        start_line.wait()
        runqueue_before = _runqueue_seconds()
        while (index := take()) is not None:
            try:
                outcomes[index] = _timed_call(fn, batch[index])[0]
            except BaseException as exc:  # KeyboardInterrupt raised by fn itself
                outcomes[index] = Failure.capture(exc)
            ends[index] = perf_counter()
        waits.append(max(0.0, _runqueue_seconds() - runqueue_before))

    threads = [threading.Thread(target=run, name=f"parallax-probe-{slot}") for slot in range(2)]
    for thread in threads:
        thread.start()
    start_line.wait()
    started = perf_counter()
    for thread in threads:
        thread.join()
    together = perf_counter() - started
    previous = result.ends[-1] if result.ends else started
    for index, item in enumerate(batch):
        # Input order is kept (they are results); the records are sequential,
        # so an end time never goes back before the previous one.
        previous = max(previous, ends[index])
        result.items.append(item)
        result.outcomes.append(outcomes[index])
        result.ends.append(previous)
    facts = _replace(facts, probed=facts.probed + len(batch))
    if len(batch) < OVERLAP_MIN_ITEMS:
        return facts  # too few items left to tell
    alone = max((facts.item_wall or 0.0) - facts.item_runqueue, facts.item_cpu or 0.0)
    return _replace(facts, thread_speedup=_overlap_speedup(len(batch), alone, together, waits))


def _overlap_speedup(items: int, alone: float, together: float, waits: list[float]) -> float:
    """How much faster two threads ran ``items`` than one would: ``alone`` is
    one item's time on one thread, ``together`` the two threads' elapsed time,
    ``waits`` each thread's time on the run queue meanwhile (taken out, as the
    probe takes it out of ``alone``)."""
    working = together - sum(waits) / max(len(waits), 1)
    return items * alone / max(working, 1e-9)


#: functions found to pickle ("") or not (the error): pickling one by value
#: (a lambda, a closure, one of ``__main__``) takes tens of microseconds
_function_verdicts: weakref.WeakKeyDictionary[Any, str] = weakref.WeakKeyDictionary()


def _check_pickles(fn: Callable[[Any], Any], item: Any, facts: Facts) -> Facts:
    """``facts`` saying whether ``fn`` and its first item would pickle for a process."""
    while isinstance(fn, StarCall | CheckedCall):
        fn = fn.fn
    cached = isinstance(fn, FunctionType)
    error = _function_verdicts.get(fn) if cached else None
    if error is None:
        error = _pickling_error(fn)
        if cached:
            _function_verdicts[fn] = error
    if error:
        what = f"the function {_name(fn)}"
    else:
        error, what = _pickling_error(item), f"the first item, {describe_item(item)},"
    if not error:
        return facts
    return _replace(facts, picklable=False, unpicklable=what, unpicklable_why=f" ({error})")


def _pickling_error(obj: Any) -> str:
    """Why ``obj`` would not pickle as process mode pickles it (``""``: it would)."""
    try:
        pickle.dumps(obj, protocol=PROTOCOL)
    except Exception:
        pass  # maybe by value: cloudpickle decides
    else:
        # By reference: a worker finds it by name, unless it lives in __main__,
        # which cloudpickle sends by value, with what it refers to.
        if getattr(obj, "__module__", None) != "__main__":
            return ""
    try:
        dumps(obj)
    except Exception as exc:
        return f"{type(exc).__name__}: {exc}"
    return ""


def _runqueue_seconds(native_id: int | None = None) -> float:
    """Seconds this thread (or the thread ``native_id`` of this process) has
    spent runnable but not running (Linux schedstat).

    On a busy machine a CPU-bound probe also waits for a CPU; counting that as
    "waiting" would make it look I/O-bound. Elsewhere this reads 0. The file
    is opened for each read (about 6 µs): a descriptor kept per thread would
    outlive the call in the user's process.
    """
    path = ("/proc/thread-self/schedstat" if native_id is None
            else f"/proc/self/task/{native_id}/schedstat")
    try:
        # os.read, not open(): a buffered file object costs more than the read
        descriptor = os.open(path, os.O_RDONLY)
        try:
            return int(os.read(descriptor, 128).split()[1]) / 1e9
        finally:
            os.close(descriptor)
    except (OSError, ValueError, IndexError):
        return 0.0


def _replace(facts: Facts, **changes: Any) -> Facts:
    return facts.replace(**changes)


def _name(fn: Any) -> str:
    return str(getattr(fn, "__qualname__", None) or type(fn).__name__)
