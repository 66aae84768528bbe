"""The one path from a checked call to started work.

Every call of the function API and every :class:`~parallax.Executor` gets its
backend here, and every run is built here::

    map / imap / starmap / amap / @parallel         Executor(mode, ...)
      │ CallOptions.checked: each keyword, once       │ its own checks, once
      ▼                                               ▼
    launch()                                        resolve_without_probe()
      │ resolve the mode (_config.resolve)            │ "auto": by machine
      │ "auto": probe the first items -> decide       │ (decide_unmeasured)
      ▼                                               ▼
    open_engine(): a backend of its own (initializer, max_tasks_per_worker,
      │ an event loop; an executor always) or a lease on a shared pool
      ▼
    new_run(): the Run and its stats recorder (a call adds retries, progress)
      ▼
    hand_over(): the probed items become the run's first, finished chunk
      ▼
    Launched: collect() or iterate() the run, then give the backend back

One call (``@parallel``'s ``.submit``, ``Executor.submit``) takes the short
way: ``submit_call`` -> ``resolve_without_probe`` -> ``open_engine`` ->
``start_future``, which runs it once and settles a ``Future``.
"""

from __future__ import annotations

import builtins
import itertools
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import TYPE_CHECKING, Any, Final

from . import _host, _pools
from ._auto import (
    Facts,
    Plan,
    Probe,
    decide,
    decide_early,
    noted_reason,
    probe,
    probe_more,
)
from ._calls import AsyncCheckedCall, AsyncStarCall, BoundCall, CheckedCall, RunCoroutine, StarCall
from ._chunking import ChunkSizer
from ._config import (
    COMMON_CHECKS,
    check_callable,
    check_iterable,
    check_mode,
    check_options,
    check_worker_bound,
    check_workers,
    forced_common,
    is_coroutine_function,
    merge_options,
    pickle_checks,
    resolve,
)
from ._errors import SerializationError, describe_item
from ._recorder import StatsRecorder
from ._records import FrozenRecord
from ._run import ErrorPolicy, RetryPolicy, Run
from ._serialize import dumps, loads
from ._timeouts import flag_overruns
from ._units import PROBE_WORKER, Chunk, ChunkResult, Failure, Job
from .backends import Backend, WorkerSetup
from .backends._registry import chunk_overhead

if TYPE_CHECKING:
    import asyncio
    from concurrent.futures import Future

    from ._progress import Reporter

__all__ = [
    "CallOptions",
    "Engine",
    "Launched",
    "callable_name",
    "collect",
    "decide_unmeasured",
    "launch",
    "length_of",
    "new_run",
    "open_engine",
    "pickle_checked",
    "plan_call",
    "resolve_without_probe",
    "start_future",
    "submit_call",
]

#: inputs whose length is known for free, and which the run can slice from
#: any index (so the auto probe's items need not be copied out of them)
_SEQUENCES: Final = (list, tuple, range)


# -- the checked call ---------------------------------------------------------------------


class CallOptions(FrozenRecord):
    """The keywords shared by ``map``, ``imap``, ``starmap``, ``amap`` and ``@parallel``,
    checked. ``backend`` holds the rest: options for the backend that runs."""

    __match_args__ = ("mode", "workers", "chunksize", "ordered", "timeout", "errors", "progress",
                      "initializer", "initargs", "finalizer", "finalargs", "retries", "retry_on",
                      "backoff", "max_tasks_per_worker", "record_tasks", "backend")
    __slots__ = __match_args__
    mode: str | None
    workers: int | None
    chunksize: int | str
    ordered: bool
    timeout: float | None
    errors: ErrorPolicy
    progress: Any
    initializer: Callable[..., object] | None
    initargs: tuple[Any, ...]
    finalizer: Callable[..., object] | None
    finalargs: tuple[Any, ...]
    retries: int
    retry_on: tuple[type[BaseException], ...]
    backoff: float
    max_tasks_per_worker: int | None
    record_tasks: bool
    backend: Mapping[str, Any]

    def __init__(
        self,
        mode: str | None = None,
        workers: int | None = None,
        chunksize: int | str = "auto",
        ordered: bool = True,
        timeout: float | None = None,
        errors: ErrorPolicy = "raise",
        progress: Any = False,
        initializer: Callable[..., object] | None = None,
        initargs: tuple[Any, ...] = (),
        finalizer: Callable[..., object] | None = None,
        finalargs: tuple[Any, ...] = (),
        retries: int = 0,
        retry_on: tuple[type[BaseException], ...] = (Exception,),
        backoff: float = 0.0,
        max_tasks_per_worker: int | None = None,
        record_tasks: bool = True,
        backend: Mapping[str, Any] | None = None,
    ) -> None:
        _set = object.__setattr__
        _set(self, "mode", mode)
        _set(self, "workers", workers)
        _set(self, "chunksize", chunksize)
        _set(self, "ordered", ordered)
        _set(self, "timeout", timeout)
        _set(self, "errors", errors)
        _set(self, "progress", progress)
        _set(self, "initializer", initializer)
        _set(self, "initargs", initargs)
        _set(self, "finalizer", finalizer)
        _set(self, "finalargs", finalargs)
        _set(self, "retries", retries)
        _set(self, "retry_on", retry_on)
        _set(self, "backoff", backoff)
        _set(self, "max_tasks_per_worker", max_tasks_per_worker)
        _set(self, "record_tasks", record_tasks)
        _set(self, "backend", {} if backend is None else backend)

    @classmethod
    def from_call(cls, arguments: dict[str, Any]) -> CallOptions:
        """The checked options of a ``map``-like call, from its ``locals()``."""
        if not arguments["options"] and _untouched(arguments):
            # Every keyword as the signature left it: the checks would
            # change nothing (a tiny call's whole budget is tens of µs).
            return _SIGNATURE_DEFAULTS
        given = {name: value for name, value in arguments.items()
                 if name not in ("fn", "iterable", "options")}
        return cls.checked(**given, **arguments["options"])

    @classmethod
    def checked(cls, base: CallOptions | None = None, /, **given: Any) -> CallOptions:
        """``base`` (already checked; default: the defaults) with ``given`` applied.

        Checks each given keyword, and only those; raises before any work starts.

        Raises:
            ValueError, TypeError: naming the bad keyword and what is valid.
        """
        fields = {name: given.pop(name) for name in list(given) if name in _KEYWORDS}
        backend = check_options(given)  # what is left: backend options
        for name, check in _CHECKS:
            if name in fields:
                fields[name] = check(fields[name])
        base = base or _DEFAULTS
        return base.replace(**fields, backend={**base.backend, **backend})

    def forced(self) -> CallOptions:
        """These options with what an active ``using()`` block forces on top."""
        forced = forced_common()
        return self.replace(**forced) if forced else self

    @property
    def setup(self) -> WorkerSetup | None:
        """How this call's workers start, when they need a pool of their own."""
        if (self.initializer is None and self.finalizer is None
                and self.max_tasks_per_worker is None):
            return None
        return WorkerSetup(self.initializer, self.initargs, self.max_tasks_per_worker,
                           self.finalizer, self.finalargs)

    @property
    def retry(self) -> RetryPolicy | None:
        return RetryPolicy(self.retries, self.retry_on, self.backoff) if self.retries else None


_KEYWORDS: Final = frozenset(CallOptions.__slots__) - {"backend"}
_DEFAULTS: Final = CallOptions()
#: each keyword's check, in the order they are reported
_CHECKS: Final[tuple[tuple[str, Callable[[Any], Any]], ...]] = (("mode", check_mode),
                                                                *COMMON_CHECKS)
#: the keywords of ``map``, ``imap``, ``starmap`` and ``amap`` as their
#: signatures default them (``_api.py``); a call that leaves them all so gets
#: :data:`_SIGNATURE_DEFAULTS` without running the checks again
_SIGNATURE: Final[dict[str, Any]] = {
    "mode": "auto", "workers": None, "chunksize": "auto", "ordered": True, "timeout": None,
    "errors": "raise", "progress": False, "initializer": None, "initargs": (),
    "finalizer": None, "finalargs": (), "retries": 0, "retry_on": (Exception,),
    "backoff": 0.0, "max_tasks_per_worker": None, "record_tasks": True,
}
_SIGNATURE_DEFAULTS: Final = CallOptions.checked(**_SIGNATURE)
#: values compared by equality (and exact type) rather than identity: a
#: caller's ``backoff=0.0`` or ``mode="auto"`` is another object of equal value
_PLAIN_VALUES: Final = (str, int, float, bool, type(None))


def _untouched(arguments: dict[str, Any]) -> bool:
    """Whether a ``map``-like call's ``locals()`` hold each keyword as its
    signature defaults it (``fn``, ``iterable`` and ``options`` aside)."""
    if len(arguments) != len(_SIGNATURE) + 3:
        return False
    for name, default in _SIGNATURE.items():
        value = arguments.get(name, _SIGNATURE)  # _SIGNATURE: no such keyword
        if value is default:
            continue
        kind = type(value)
        if kind is not type(default):
            return False
        if kind is tuple:
            # (Exception,) and () by their elements' identity: a tuple's ==
            # would call the elements' own __eq__
            if len(value) != len(default) or any(
                    item is not expected for item, expected in zip(value, default, strict=True)):
                return False
        elif kind not in _PLAIN_VALUES or value != default:
            return False
    return True


def length_of(iterable: Iterable[Any]) -> int | None:
    """The input's length if it has one (progress totals, the auto probe's facts)."""
    if isinstance(iterable, _SEQUENCES):
        return len(iterable)
    try:
        return builtins.len(iterable)  # type: ignore[arg-type]
    except TypeError:
        return None


def callable_name(fn: object) -> str:
    return str(getattr(fn, "__qualname__", None) or type(fn).__name__)


# -- choosing and opening a backend ------------------------------------------------------


def decide_unmeasured(workers: int | None, why: str | None = None) -> tuple[str, str, int]:
    """``"auto"`` without a probe: the mode, reason and worker count by machine alone.

    ``why`` replaces "nothing measured yet" in the reason.
    """
    chosen = decide(Facts(gil_enabled=_host.gil_enabled(), cpus=_host.usable_cpus()), workers)
    reason = chosen.reason if why is None else chosen.reason.replace("nothing measured yet", why)
    return chosen.mode, reason, workers or chosen.workers


def resolve_without_probe(requested: str | None, default_mode: str | None,
                          workers: int | None) -> tuple[str, str, int | None]:
    """The mode, reason and worker count of work nothing can be measured for
    in advance (an executor's pool, one submitted call): ``"auto"`` by machine."""
    mode, reason = resolve(requested, default_mode)
    if mode == "auto":
        return decide_unmeasured(workers)
    return mode, reason, workers


class Engine:
    """The backend a call or an executor runs on, and how to give it back.

    Owned (a private backend: shut down on close) or leased (a shared pool:
    the lease is returned on close, once, and the pool stays warm).
    """

    __slots__ = ("_leased", "backend", "owned", "reason")

    def __init__(self, backend: Backend, reason: str, *, owned: bool) -> None:
        self.backend = backend
        self.reason = reason
        self.owned = owned
        self._leased = not owned

    def close(self, *, wait: bool = True, cancel_pending: bool = False) -> None:
        if self.owned:
            self.backend.shutdown(wait=wait, cancel_pending=cancel_pending)
        elif self._leased:
            self._leased = False
            _pools.release(self.backend)


def open_engine(mode: str, reason: str, *, workers: int | None, options: dict[str, Any],
                setup: WorkerSetup | None = None, shared: bool = False) -> Engine:
    """A private backend when ``setup`` is given (its workers are set up for
    this caller alone), else a lease on the shared pool for these settings.
    ``shared``: a lease on a shared pool whose workers are set up by ``setup``.

    Raises:
        ValueError: more ``workers`` than ``mode`` may start.
    """
    check_worker_bound(mode, workers)
    try:
        if setup is not None and not shared:
            backend = _pools.new_backend(mode, workers=workers, setup=setup, options=options)
            return Engine(backend, reason, owned=True)
        return Engine(_pools.acquire(mode, workers, options, setup), reason, owned=False)
    except ImportError as exc:
        if not _pools.exiting():
            raise
        # A backend not loaded before the interpreter began to shut down can
        # no longer be: say so plainly rather than with importlib's words.
        raise RuntimeError(
            f"parallax cannot start a {mode} backend while the interpreter shuts down "
            "(its modules can no longer be imported)"
        ) from exc


# -- runs ------------------------------------------------------------------------------------


def new_run(
    engine: Engine,
    call: Callable[[Any], Any],
    iterable: Iterable[Any],
    *,
    chunksize: int | str,
    ordered: bool = True,
    errors: ErrorPolicy | str = "raise",
    timeout: float | None = None,
    deadline: float | None = None,
    retry: RetryPolicy | None = None,
    total: int | None = None,
    on_progress: Callable[[int], None] | None = None,
    record_tasks: bool = True,
    on_finish: Callable[[Run], None] | None = None,
    reason: Callable[[], str] | None = None,
) -> Run:
    """A run of ``call`` over ``iterable`` on the engine's backend, recording its stats.

    Takes checked arguments: it checks nothing itself. ``reason``: the
    stats' reason, made when read (default: the engine's).
    """
    backend = engine.backend
    if pickle_checks():
        call = pickle_checked(call, awaits=backend.name == "asyncio")
    recorder = StatsRecorder(backend.name, reason or engine.reason, backend.workers, chunksize,
                             tasks=record_tasks)
    return Run(
        backend,
        call,
        iterable,
        chunksize=chunksize,
        ordered=ordered,
        errors=errors,  # type: ignore[arg-type]  # checked by the caller
        timeout=timeout,
        deadline=deadline,
        retry=retry,
        total=total,
        recorder=recorder,
        on_progress=on_progress,
        on_finish=on_finish,
    )


def collect(run: Run) -> list[Any]:
    """All results of a run as one list.

    The largest batch becomes the result list and the others are spliced in
    around it, so a run delivered as one big chunk (serial ``map``) hands
    over its values without copying them. The batches are the run's own
    lists, no longer used once delivered.
    """
    at_once = run.all_at_once()
    if at_once is not None:
        return at_once
    batches = [batch for batch in run.batches(all_at_once=True) if batch]
    if not batches:
        return []
    largest = max(range(len(batches)), key=lambda position: len(batches[position]))
    results = batches[largest]
    if largest:
        before: list[Any] = []
        for batch in batches[:largest]:
            before.extend(batch)  # list.extend(list) copies at C speed; a chain would not
        results[:0] = before
    for batch in batches[largest + 1 :]:
        results.extend(batch)
    return results


class Launched:
    """A started call: its run, and what to give back once it is consumed."""

    __slots__ = ("engine", "reporter", "run")

    def __init__(self, run: Run, engine: Engine, reporter: Reporter | None) -> None:
        self.run = run
        self.engine = engine
        self.reporter = reporter

    def finish(self) -> None:
        if self.reporter is not None:
            self.reporter.close()
        self.engine.close(wait=True)

    def collect(self) -> list[Any]:
        try:
            return collect(self.run)
        finally:
            self.finish()

    def iterate(self) -> Iterator[Any]:
        try:
            yield from self.run
        finally:
            self.finish()


def launch(
    fn: Callable[..., Any],
    iterable: Iterable[Any],
    options: CallOptions,
    *,
    star: bool = False,
    default_mode: str | None = None,
    loop: asyncio.AbstractEventLoop | None = None,
) -> Launched:
    """Resolve the mode, plan, open a backend and build the run of one call.

    No item runs before this returns but the auto probe's. If anything fails,
    the backend is given back before the exception propagates.

    Raises:
        TypeError: ``fn`` is not callable, ``iterable`` is not iterable, or a
            plain function was asked to run in asyncio mode.
    """
    check_callable(fn)
    check_iterable(iterable)
    options = options.forced()
    mode, reason = resolve(options.mode, default_mode)
    backend_options = merge_options(options.backend)
    coroutine = is_coroutine_function(fn)
    call: Callable[[Any], Any] = fn
    if star:
        call = AsyncStarCall(fn) if coroutine else StarCall(fn)
    if not coroutine and pickle_checks():
        # Before the probe, whose items are results too; a coroutine function
        # is wrapped by new_run, once the mode says how it is called.
        call = pickle_checked(call)
    total = length_of(iterable)
    workers = options.workers
    measured: Probe | None = None
    noted: Callable[[], str] | None = None
    source: Iterator[Any] = iter(())
    if mode == "auto" and (options.initializer is not None or options.finalizer is not None):
        # The probe runs items in the caller, which is no worker and has not
        # run the initializer: decide without measuring instead.
        mode, reason, workers = decide_unmeasured(workers, "initializer given, no probe")
    if mode == "auto":
        # Refused before the probe runs anything, by the costliest kind of
        # worker auto may pick for this function.
        if workers is not None:
            kind = ("asyncio" if coroutine else "process" if _host.gil_enabled()
                    else "free-threaded")
            check_worker_bound(kind, workers, asked="auto")
        # The probe takes the first items; the run goes on from there (a
        # sequence from the index after them, anything else from the iterator).
        source = iter(iterable)
        if not isinstance(iterable, _SEQUENCES):
            iterable = source
        early = _EarlyStart(call, iterable, options, backend_options, total, workers)
        try:
            measured = probe(call, source, total=total, coroutine=coroutine, note_later=True,
                             start_early=None if coroutine else early)
        except BaseException:
            early.abandon()
            raise
        if early.launched is not None:
            early.launched.run.finish_first(
                probed_chunk(measured, options.timeout, early.launched.run.first_chunk))
            return early.launched
        chosen = (measured.plan if workers is None and measured.plan is not None
                  else decide(measured.facts, workers))
        mode, reason = chosen.mode, chosen.reason
        if measured.unchecked is not None:
            # The run's reason, with its pickling note, made when it is read (Stats).
            noted = measured.noted(workers)
        workers = workers or chosen.workers
    if mode == "asyncio" and not coroutine:
        raise TypeError(
            f"mode='asyncio' runs coroutine functions, but {callable_name(fn)} is a plain "
            "function; define it with 'async def', or use mode='thread' for blocking I/O"
        )
    if coroutine and mode != "asyncio":
        call = RunCoroutine(call)
    if loop is not None and mode == "asyncio":
        backend_options["loop"] = loop
    launched = _open(mode, reason, workers, call, iterable, options, backend_options, total,
                     noted)
    if measured is not None and measured.items:
        try:
            hand_over(launched.run, measured, call, source, options.timeout)
        except BaseException:
            launched.run.close()
            launched.engine.close(wait=False)
            raise
    return launched


def _open(mode: str, reason: str, workers: int | None, call: Callable[[Any], Any],
          iterable: Iterable[Any], options: CallOptions, backend_options: dict[str, Any],
          total: int | None, noted: Callable[[], str] | None) -> Launched:
    """The engine, progress reporter and run of a call whose mode is decided."""
    setup = options.setup
    if setup is None and "loop" in backend_options:
        setup = WorkerSetup()  # a pool bound to one event loop is no pool to share
    engine = open_engine(mode, reason, workers=workers, options=backend_options, setup=setup)
    try:
        reporter = _reporter(options.progress, total)
        run = new_run(
            engine,
            call,
            iterable,
            chunksize=options.chunksize,
            ordered=options.ordered,
            errors=options.errors,
            timeout=options.timeout,
            retry=options.retry,
            total=total,
            on_progress=reporter.advance if reporter else None,
            record_tasks=options.record_tasks,
            reason=noted,
        )
    except BaseException:
        engine.close(wait=False)
        raise
    return Launched(run, engine, reporter)


class _EarlyStart:
    """Starts the rest of an auto call's input while the probe's first item
    still runs in the caller and waits (called by the probe's watch, from
    another thread; the caller is inside that item meanwhile, so nothing
    else reads the input). Only for a thread plan: waiting work; anything
    else waits for the probe, as before.
    """

    __slots__ = ("_backend_options", "_call", "_iterable", "_options", "_total", "_workers",
                 "launched")

    def __init__(self, call: Callable[[Any], Any], iterable: Iterable[Any],
                 options: CallOptions, backend_options: dict[str, Any], total: int | None,
                 workers: int | None) -> None:
        self._call = call
        self._iterable = iterable
        self._options = options
        self._backend_options = backend_options
        self._total = total
        self._workers = workers
        self.launched: Launched | None = None

    def __call__(self, facts: Facts, item: Any, started: float) -> bool:
        workers = self._workers
        chosen = decide_early(facts, workers)
        if chosen.mode != "thread" or self._options.setup is not None:
            return False
        noted = noted_reason(facts, workers, (self._call, item), early=True)
        try:
            launched = _open("thread", chosen.reason, workers or chosen.workers, self._call,
                             self._iterable, self._options, dict(self._backend_options),
                             self._total, noted)
        except Exception:
            return False  # the caller, once its item is done, starts as usual (and says why not)
        try:
            launched.run.reserve_first(Chunk.fresh(0, 0, [item]), started)
            launched.run.start()
        except BaseException:
            launched.run.close()
            launched.engine.close(wait=False)
            raise
        self.launched = launched
        return True

    def abandon(self) -> None:
        """The probe failed (Ctrl-C in the first item): stop what was started."""
        if self.launched is not None:
            self.launched.run.close()
            self.launched.finish()


def _reporter(progress: Any, total: int | None) -> Reporter | None:
    """The call's progress reporter, if it asked for one (its module loads then)."""
    if progress is False or progress is None:
        return None
    from ._progress import make_reporter

    return make_reporter(progress, total)


def hand_over(run: Run, measured: Probe, call: Callable[[Any], Any],
              source: Iterator[Any], timeout: float | None) -> None:
    """Make the probed items the run's first results, once the pool can take over."""
    backend = run.backend
    if (backend.starting and backend.workers < measured.facts.cpus
            and not isinstance(measured.outcomes[-1], Failure)):
        # Fresh worker interpreters take tens of milliseconds (more if they
        # import heavy modules) to boot: they load the function meanwhile, and
        # the caller, which ran the probe, goes on with the next items until
        # one of them is ready. Only with a core to spare: booting is CPU work
        # too, and a caller competing with it for the cores gains nothing.
        backend.preload(run.job)
        probe_more(call, source, measured, while_=lambda: backend.starting)
    run.preload(probed_chunk(measured, timeout))


def probed_chunk(measured: Probe, timeout: float | None,
                 chunk: Chunk | None = None) -> ChunkResult:
    """The auto-selector's probed items as the run's first, already finished
    chunk (``chunk``: the one the run reserved for them)."""
    outcomes = measured.outcomes
    failures: dict[int, Failure] = {}
    values = list(outcomes)
    # Looked for at C speed first: most probes end without a failure.
    if any(map(isinstance, outcomes, itertools.repeat(Failure))):
        failures = {position: outcome for position, outcome in enumerate(outcomes)
                    if isinstance(outcome, Failure)}
        for position in failures:
            values[position] = None
    chunk = chunk or Chunk.fresh(0, 0, measured.items)
    chunk.submitted = measured.started
    result = ChunkResult(
        chunk,
        values,
        failures or None,
        worker=PROBE_WORKER,
        started=measured.started,
        finished=measured.ends[-1],
        cpu=measured.cpu,
        item_ends=measured.ends,
    )
    if timeout is not None:
        # Probed in the caller's thread, which nothing can interrupt: an
        # overrun is reported once the item returns, as in serial mode.
        flag_overruns(result, timeout, "it ran in the caller as the auto probe")
    return result


def plan_call(fn: Callable[..., Any], sample: Iterable[Any], workers: int | None) -> Plan:
    """What ``launch`` would choose in ``"auto"`` mode, from the sample's first items."""
    check_callable(fn)
    check_iterable(sample)
    check_workers(workers)
    workers = forced_common().get("workers", workers)
    measured = probe(fn, iter(sample), total=length_of(sample),
                     coroutine=is_coroutine_function(fn))
    chosen = decide(measured.facts, workers)
    return chosen.replace(chunksize=planned_chunksize(chosen, measured.facts))


def planned_chunksize(chosen: Plan, facts: Facts) -> int:
    """The size of the chunks a run of ``chosen`` starts with after the probed
    items, as its :class:`~parallax._chunking.ChunkSizer` would pick it.

    Serial ``map`` takes the rest of a sized input at once (``Run.batches``).
    """
    if isinstance(chosen.chunksize, int):
        return chosen.chunksize
    if chosen.mode == "asyncio":
        from .backends._asyncio import AsyncioBackend

        # Its chunks are sized by the concurrency limit, not by time; building
        # the backend starts nothing (its loop starts with the first chunk).
        return AsyncioBackend(workers=chosen.workers).auto_chunksize() or 1
    if chosen.mode == "serial" and facts.total is not None:
        return max(1, facts.total - facts.probed)
    overhead = chunk_overhead(chosen.mode)
    sizer = ChunkSizer("auto", workers=chosen.workers, total=facts.total,
                       chunk_overhead=overhead, item_seconds=facts.item_wall)
    return sizer.next_size(facts.probed)


# -- one call ------------------------------------------------------------------------------


class FutureJob(Job):
    """A one-item job whose outcome settles a ``concurrent.futures.Future``.

    Once settled it lets go of the call (its function and arguments): the
    backend or a worker may hold the job a while longer (bpo-16284).
    """

    __slots__ = ("call", "future")

    def __init__(
        self, call: BoundCall, future: Future[Any], timeout: float | None
    ) -> None:
        super().__init__(call, self._settle, timeout=timeout)
        self.future = future
        self.call: BoundCall | None = call

    def claim(self, chunk: Chunk) -> bool:
        if not self.wants(chunk):
            return False
        future = self.future
        if future.running():
            # Claimed before and handed out again: the worker it went to
            # retired (max_tasks_per_worker) before it ran anything.
            return True
        if future.done():
            return False
        try:
            return future.set_running_or_notify_cancel()
        except RuntimeError:  # settled meanwhile: its executor's workers were terminated
            return False

    def _settle(self, result: ChunkResult) -> None:
        from concurrent.futures import InvalidStateError  # loaded by the Future already

        future = self.future
        try:
            if result.failures:
                failure = result.failures[0]
                future.set_exception(failure.to_exception(None, None, result.worker))
            elif result.interruption is not None:
                future.set_exception(result.interruption)
            else:
                future.set_result(result.values[0])
        except InvalidStateError:
            pass  # cancelled meanwhile: nobody waits for the outcome
        finally:
            call, self.call = self.call, None
            if call is not None:
                call.release()


def start_future(backend: Backend, call: BoundCall, timeout: float | None,
                 future: Future[Any]) -> None:
    """Run ``call`` once on ``backend``; its outcome settles ``future``.

    If the backend refuses the call, ``future`` is cancelled and the error raised.
    """
    job = FutureJob(call, future, timeout)
    try:
        if pickle_checks():
            problem = unpicklable_part(call)
            if problem is not None:
                raise problem
            job.fn = CheckedCall(loads(dumps(call)))
        try:
            backend.prepare(job)
        except SerializationError as exc:
            # The backend pickles the call as a whole, so it can only name
            # the BoundCall: say which part of it does not pickle.
            raise unpicklable_part(call) or exc from exc
        backend.submit(job, Chunk.fresh(0, 0, [None]))
    except BaseException:
        future.cancel()
        raise


def pickle_checked(call: Callable[[Any], Any], *, awaits: bool = False) -> Callable[[Any], Any]:
    """``call`` as process mode would run it, in any mode: a copy that went
    through pickling, which round-trips each argument and each result too
    (``pickle_checks()``, the pytest plugin's ``--parallax-check-pickle``).
    ``awaits``: ``call`` returns coroutines, which the backend awaits (asyncio).

    Raises:
        SerializationError: the function cannot be pickled, naming it.
    """
    if isinstance(call, CheckedCall):
        return call
    try:
        shipped = loads(dumps(call))
    except Exception as exc:
        inner = call
        while isinstance(inner, StarCall | AsyncStarCall | RunCoroutine):
            inner = inner.fn
        raise SerializationError(
            f"the function {callable_name(inner)} cannot be pickled for another process "
            f"(pickle checks are on): {type(exc).__name__}: {exc}"
        ) from exc
    return AsyncCheckedCall(shipped) if awaits else CheckedCall(shipped)


def unpicklable_part(call: BoundCall) -> SerializationError | None:
    """The error naming the function or the argument of ``call`` that does
    not pickle (the first one), or None if each pickles alone."""
    name = callable_name(call.fn)
    parts: list[tuple[str, Any]] = [(f"the function {name}", call.fn)]
    parts += [(f"argument {position} ({describe_item(value)}) of the call to {name}", value)
              for position, value in enumerate(call.args)]
    parts += [(f"keyword argument {key!r} ({describe_item(value)}) of the call to {name}", value)
              for key, value in call.kwargs.items()]
    for what, value in parts:
        try:
            dumps(value)
        except Exception as exc:
            error = SerializationError(
                f"{what} cannot be pickled for another process: {type(exc).__name__}: {exc}"
            )
            error.__cause__ = exc
            return error
    return None


def submit_call(fn: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any],
                options: CallOptions, default_mode: str | None) -> Future[Any]:
    """``fn(*args, **kwargs)`` on the shared pool ``options`` select (``@parallel``'s
    ``.submit``). The lease is given back at once: the pool stays up while it runs.

    A pool for one call each would start its workers (and run the initializer)
    per call; so ``initializer`` and ``max_tasks_per_worker`` select a shared
    pool of their own, kept warm like the others.
    """
    options = options.forced()
    mode, reason, workers = resolve_without_probe(options.mode, default_mode, options.workers)
    engine = open_engine(mode, reason, workers=workers, options=merge_options(options.backend),
                         setup=options.setup, shared=True)
    from concurrent.futures import Future

    future: Future[Any] = Future()
    try:
        start_future(engine.backend, BoundCall(fn, args, kwargs), options.timeout, future)
    finally:
        engine.close(wait=False)
    return future

