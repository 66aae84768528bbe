"""The function API: ``map``, ``imap``, ``starmap``, ``amap``, ``plan``, ``@parallel``.

Each call checks its arguments, resolves the mode (``using()`` >
``PARALLAX_MODE`` > ``mode=`` > decorator default > ``"auto"``), lets the
auto-selector measure the first items if the mode is ``"auto"``, and then
runs as an :class:`~parallax.Executor` over a pooled backend would: pools are
kept warm between calls.
"""

from __future__ import annotations

import builtins
import functools
import sys
import threading
from collections.abc import Awaitable, Callable, Coroutine, Iterable, Iterator
from concurrent.futures import Future
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Generic, Protocol, TypeVar, cast, overload

if TYPE_CHECKING:
    import asyncio

from typing_extensions import ParamSpec

from . import _pools
from ._auto import Plan, Probe, decide, probe, probe_more
from ._config import (
    check_callable,
    check_chunksize,
    check_errors,
    check_initializer,
    check_iterable,
    check_mode,
    check_options,
    check_timeout,
    check_workers,
    is_coroutine_function,
    merge_options,
    resolve,
    resolve_mode,
)
from ._executor import Executor, collect
from ._progress import make_reporter
from ._run import ErrorPolicy, RetryPolicy, Run
from ._units import Chunk, ChunkResult, Failure
from ._worker import StarCall, flag_overruns
from .backends import WorkerSetup

__all__ = ["ParallelFunction", "amap", "imap", "map", "parallel", "plan", "starmap"]

P = ParamSpec("P")
R = TypeVar("R")
T = TypeVar("T")

_SEQUENCES = (list, tuple, range)


@dataclass(frozen=True, slots=True)
class CallOptions:
    """The keywords shared by ``map``, ``imap``, ``starmap``, ``amap`` and ``@parallel``."""

    mode: str | None = None
    workers: int | None = None
    chunksize: int | str = "auto"
    ordered: bool = True
    timeout: float | None = None
    errors: ErrorPolicy = "raise"
    progress: Any = False
    initializer: Callable[..., object] | None = None
    initargs: tuple[Any, ...] = ()
    retries: int = 0
    retry_on: tuple[type[BaseException], ...] = (Exception,)
    backoff: float = 0.0
    max_tasks_per_worker: int | None = None
    record_tasks: bool = True
    backend: dict[str, Any] | None = None

    @classmethod
    def from_call(cls, arguments: dict[str, Any]) -> CallOptions:
        """The checked options of a ``map``-like call, from its ``locals()``."""
        given = {name: value for name, value in arguments.items()
                 if name not in ("fn", "iterable", "options")}
        return cls.checked(**given, **arguments["options"])

    @classmethod
    def checked(cls, **given: Any) -> CallOptions:
        """Check every keyword; raise before any work starts."""
        backend_options = {name: given.pop(name) for name in list(given)
                           if name not in cls.__dataclass_fields__}
        options = cls(**given, backend=check_options(backend_options))
        if options.mode is not None:
            check_mode(options.mode)
        check_workers(options.workers)
        check_chunksize(options.chunksize)
        check_timeout(options.timeout)
        check_errors(options.errors)
        check_initializer(options.initializer, options.initargs)
        for flag in ("ordered", "record_tasks"):
            if not isinstance(getattr(options, flag), bool):
                raise TypeError(f"{flag} must be True or False, not {getattr(options, flag)!r}")
        if not (options.progress in (True, False, None) or callable(options.progress)):
            raise TypeError(f"progress must be True, False or a callable, not {options.progress!r}")
        _check_retry(options)
        if options.max_tasks_per_worker is not None:
            from ._config import check_max_tasks

            check_max_tasks(options.max_tasks_per_worker)
        return options


def _check_retry(options: CallOptions) -> None:
    retries = options.retries
    if isinstance(retries, bool) or not isinstance(retries, int) or retries < 0:
        raise ValueError(f"retries must be a non-negative integer, not {retries!r}")
    retry_on = options.retry_on
    if isinstance(retry_on, type):
        retry_on = (retry_on,)
    if not (
        isinstance(retry_on, tuple)
        and retry_on
        and all(isinstance(kind, type) and issubclass(kind, BaseException) for kind in retry_on)
    ):
        raise TypeError(f"retry_on must be an exception type or a tuple of them, not {retry_on!r}")
    backoff = options.backoff
    if isinstance(backoff, bool) or not isinstance(backoff, int | float) or backoff < 0:
        raise ValueError(f"backoff must be a non-negative number of seconds, not {backoff!r}")


class RunCoroutine:
    """A coroutine function as a plain one: each call runs it to completion.

    Lets ``async def`` functions run in serial, thread and process mode (tests
    swapping modes keep working); each item gets a fresh event loop.
    """

    __slots__ = ("fn",)

    def __init__(self, fn: Callable[[Any], Coroutine[Any, Any, Any]]) -> None:
        self.fn = fn

    def __call__(self, item: Any) -> Any:
        import asyncio  # only coroutine functions need it; keeps the first call light

        try:
            asyncio.get_running_loop()
        except RuntimeError:
            return asyncio.run(self.fn(item))
        # Called from inside a running loop (serial mode in async code): the
        # loop's thread cannot block on itself, so a helper thread runs it.
        outcome: list[Any] = []

        def run() -> None:
            try:
                outcome.append((True, asyncio.run(self.fn(item))))
            except BaseException as exc:
                outcome.append((False, exc))

        helper = threading.Thread(target=run, name="parallax-coroutine")
        helper.start()
        helper.join()
        ok, value = outcome[0]
        if ok:
            return value
        raise value

    def __reduce__(self) -> tuple[Any, ...]:
        return (RunCoroutine, (self.fn,))


class _AsyncStarCall:
    __slots__ = ("fn",)

    def __init__(self, fn: Callable[..., Coroutine[Any, Any, Any]]) -> None:
        self.fn = fn

    def __call__(self, args: Any) -> Coroutine[Any, Any, Any]:
        return self.fn(*args)

    def __reduce__(self) -> tuple[Any, ...]:
        return (_AsyncStarCall, (self.fn,))


def _length(iterable: Iterable[Any]) -> int | None:
    if isinstance(iterable, _SEQUENCES):
        return len(iterable)
    try:
        return builtins.len(iterable)  # type: ignore[arg-type]
    except TypeError:
        return None


@dataclass(slots=True)
class _Launch:
    executor: Executor
    run: Run
    finish: Callable[[], None]


def _launch(
    fn: Callable[..., Any],
    iterable: Iterable[Any],
    options: CallOptions,
    *,
    star: bool,
    default_mode: str | None = None,
    loop: asyncio.AbstractEventLoop | None = None,
) -> _Launch:
    """Resolve, plan and start a run (no item runs before this returns, but probes)."""
    check_callable(fn)
    check_iterable(iterable)
    mode, reason = resolve(options.mode, default_mode)
    backend_options = merge_options(options.backend or {})
    coroutine = is_coroutine_function(fn)
    call: Callable[[Any], Any] = fn
    if star:
        call = _AsyncStarCall(fn) if coroutine else StarCall(fn)
    total = _length(iterable)
    workers = options.workers
    chunksize = options.chunksize
    measured: Probe | None = None
    source: Iterator[Any] = iter(())
    if mode == "auto" and options.initializer is not None:
        # The probe runs items in the caller, which is no worker and has not
        # run the initializer: decide without measuring instead.
        chosen = decide(_no_facts(), workers)
        mode = chosen.mode
        reason = chosen.reason.replace("nothing measured yet", "initializer given, no probe")
        workers = workers or chosen.workers
    if mode == "auto":
        # The probe takes the first items; the run goes on from there (a
        # sequence from the index after them, anything else from the iterator).
        source = iter(iterable)
        if not isinstance(iterable, _SEQUENCES):
            iterable = source
        measured = probe(call, source, total=total, coroutine=coroutine)
        chosen = decide(measured.facts, workers)
        mode, reason = chosen.mode, chosen.reason
        workers = workers or chosen.workers
    if mode == "asyncio" and not coroutine:
        raise TypeError(
            f"mode='asyncio' runs coroutine functions, but {_name(fn)} is a plain function; "
            "define it with 'async def', or use mode='thread' for blocking I/O"
        )
    if coroutine and mode != "asyncio":
        call = RunCoroutine(call)
    if loop is not None and mode == "asyncio":
        backend_options = {**backend_options, "loop": loop}
    private = (
        options.initializer is not None
        or options.max_tasks_per_worker is not None
        or "loop" in backend_options
    )
    if private:
        setup = WorkerSetup(options.initializer, options.initargs, options.max_tasks_per_worker)
        backend = _pools.new_backend(mode, workers=workers, setup=setup, options=backend_options)
    else:
        backend = _pools.acquire(mode, workers, backend_options)
    executor = Executor._over(backend, reason, chunksize=chunksize, timeout=options.timeout,
                              owned=private)
    reporter = make_reporter(options.progress, total)
    retry = None
    if options.retries:
        retry_on = options.retry_on if isinstance(options.retry_on, tuple) else (options.retry_on,)
        retry = RetryPolicy(options.retries, retry_on, options.backoff)
    try:
        run = executor._start_run(
            call,
            iterable,
            ordered=options.ordered,
            errors=options.errors,
            retry=retry,
            total=total,
            reason=reason,
            on_progress=reporter.advance if reporter else None,
            record_tasks=options.record_tasks,
        )
        if measured is not None and measured.items:
            try:
                _hand_over_probe(run, measured, call, source, options.timeout)
            except BaseException:
                run.close()
                raise
    except BaseException:
        executor.shutdown(wait=False)
        raise

    def finish() -> None:
        if reporter is not None:
            reporter.close()
        executor.shutdown(wait=True)

    return _Launch(executor, run, finish)


def _hand_over_probe(run: Run, measured: Probe, call: Callable[[Any], Any],
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
    run.preload(_probed_chunk(measured, timeout))


def _probed_chunk(measured: Probe, timeout: float | None) -> ChunkResult:
    """The auto-selector's probed items as the run's first, already finished chunk."""
    outcomes = measured.outcomes
    failures = {position: outcome for position, outcome in enumerate(outcomes)
                if isinstance(outcome, Failure)}
    values = [None if position in failures else value for position, value in enumerate(outcomes)]
    chunk = Chunk.fresh(0, 0, measured.items)
    chunk.submitted = measured.started
    result = ChunkResult(
        chunk,
        values,
        failures or None,
        worker="caller (auto-selector probe)",
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


def _name(fn: object) -> str:
    return str(getattr(fn, "__qualname__", None) or type(fn).__name__)


def _collect(launch: _Launch) -> list[Any]:
    try:
        return collect(launch.run)
    finally:
        launch.finish()


def _iterate(launch: _Launch) -> Iterator[Any]:
    try:
        yield from launch.run
    finally:
        launch.finish()


# -- the public functions ---------------------------------------------------------------


def map(
    fn: Callable[[T], R],
    iterable: Iterable[T],
    *,
    mode: str = "auto",
    workers: int | None = None,
    chunksize: int | str = "auto",
    ordered: bool = True,
    timeout: float | None = None,
    errors: ErrorPolicy = "raise",
    progress: bool | Callable[..., Any] = False,
    initializer: Callable[..., object] | None = None,
    initargs: tuple[Any, ...] = (),
    **options: Any,
) -> list[R]:
    """``[fn(x) for x in iterable]``, computed in parallel.

    Args:
        fn: the function; lambdas and closures work in every mode.
        iterable: the inputs; any iterable, read lazily.
        mode: ``"auto"`` (measure, then pick), ``"serial"``, ``"thread"``,
            ``"process"``, ``"free-threaded"``, ``"asyncio"``, ``"dask"``.
        workers: how many workers (default: per mode).
        chunksize: items sent to a worker at once, or ``"auto"`` (adapts).
        ordered: results in input order (default) or as they finish.
        timeout: seconds each item may run; past it ``TaskTimeoutError``.
        errors: ``"raise"`` (stop at the first failure), ``"return"`` (the
            exception in the item's place) or ``"skip"`` (leave it out).
        progress: ``True`` for a progress bar, or a callable receiving
            :class:`~parallax.ProgressUpdate`.
        initializer, initargs: run in each worker as it starts.
        **options: ``retries``, ``retry_on``, ``backoff``,
            ``max_tasks_per_worker``, ``record_tasks`` (False keeps only
            counts and totals in the stats) and backend options (e.g.
            ``address=`` for dask).

    Raises:
        ValueError, TypeError: bad arguments, before any work starts.
        Exception: what ``fn`` raised, same type, worker traceback as cause.
        TaskTimeoutError, WorkerCrashedError, SerializationError.
    """
    checked = CallOptions.from_call(locals())
    return _collect(_launch(fn, iterable, checked, star=False))


def imap(
    fn: Callable[[T], R],
    iterable: Iterable[T],
    *,
    mode: str = "auto",
    workers: int | None = None,
    chunksize: int | str = "auto",
    ordered: bool = True,
    timeout: float | None = None,
    errors: ErrorPolicy = "raise",
    progress: bool | Callable[..., Any] = False,
    initializer: Callable[..., object] | None = None,
    initargs: tuple[Any, ...] = (),
    **options: Any,
) -> Iterator[R]:
    """Like :func:`map`, lazily: reads the input as results are consumed.

    A bounded number of chunks is in flight at any time, so an endless
    generator runs in bounded memory. Closing the iterator early (``break``)
    cancels what has not started.
    """
    checked = CallOptions.from_call(locals())
    return _iterate(_launch(fn, iterable, checked, star=False))


def starmap(
    fn: Callable[..., R],
    iterable: Iterable[Iterable[Any]],
    *,
    mode: str = "auto",
    workers: int | None = None,
    chunksize: int | str = "auto",
    ordered: bool = True,
    timeout: float | None = None,
    errors: ErrorPolicy = "raise",
    progress: bool | Callable[..., Any] = False,
    initializer: Callable[..., object] | None = None,
    initargs: tuple[Any, ...] = (),
    **options: Any,
) -> list[R]:
    """``[fn(*args) for args in iterable]``, computed in parallel (see :func:`map`)."""
    checked = CallOptions.from_call(locals())
    return _collect(_launch(fn, iterable, checked, star=True))


async def amap(
    fn: Callable[[T], Awaitable[R]] | Callable[[T], R],
    iterable: Iterable[T],
    *,
    mode: str = "auto",
    workers: int | None = None,
    chunksize: int | str = "auto",
    ordered: bool = True,
    timeout: float | None = None,
    errors: ErrorPolicy = "raise",
    progress: bool | Callable[..., Any] = False,
    initializer: Callable[..., object] | None = None,
    initargs: tuple[Any, ...] = (),
    **options: Any,
) -> list[R]:
    """:func:`map` for async code: ``results = await parallax.amap(fn, data)``.

    Coroutine functions run concurrently on the caller's own event loop (in
    asyncio mode); plain functions run on their pool while the loop stays free.
    """
    checked = CallOptions.from_call(locals())
    import asyncio

    loop = asyncio.get_running_loop()
    launch = _launch(fn, iterable, checked, star=False, loop=loop)
    return await asyncio.to_thread(_collect, launch)


def plan(fn: Callable[..., Any], sample: Iterable[Any], *, workers: int | None = None) -> Plan:
    """What ``mode="auto"`` would choose for ``fn`` over ``sample``, and why.

    Runs the first item(s) of ``sample`` in the caller to measure them (that
    is the whole cost); starts no pool.
    """
    check_callable(fn)
    check_iterable(sample)
    check_workers(workers)
    measured = probe(fn, iter(sample), total=_length(sample), coroutine=is_coroutine_function(fn))
    return decide(measured.facts, workers)


# -- @parallel ------------------------------------------------------------------------------


class ParallelFunction(Generic[P, R]):
    """A function decorated with :func:`parallel`: callable as before, plus
    ``.map``, ``.imap``, ``.starmap`` and ``.submit`` with its defaults."""

    def __init__(self, fn: Callable[P, R], defaults: dict[str, Any]) -> None:
        functools.update_wrapper(self, fn)
        self.__wrapped__ = fn
        self._defaults = defaults

    def __call__(self, *args: P.args, **kwargs: P.kwargs) -> R:
        return self.__wrapped__(*args, **kwargs)

    def _options(self, overrides: dict[str, Any]) -> tuple[CallOptions, str | None]:
        merged = {**self._defaults, **overrides}
        default_mode = self._defaults.get("mode")
        if "mode" not in overrides:
            merged.pop("mode", None)
        return CallOptions.checked(**merged), default_mode

    def map(self, iterable: Iterable[Any], **options: Any) -> list[R]:
        """:func:`parallax.map` of this function, with the decorator's defaults."""
        checked, default_mode = self._options(options)
        return _collect(_launch(self.__wrapped__, iterable, checked, star=False,
                                default_mode=default_mode))

    def imap(self, iterable: Iterable[Any], **options: Any) -> Iterator[R]:
        """:func:`parallax.imap` of this function, with the decorator's defaults."""
        checked, default_mode = self._options(options)
        return _iterate(_launch(self.__wrapped__, iterable, checked, star=False,
                                default_mode=default_mode))

    def starmap(self, iterable: Iterable[Iterable[Any]], **options: Any) -> list[R]:
        """:func:`parallax.starmap` of this function, with the decorator's defaults."""
        checked, default_mode = self._options(options)
        return _collect(_launch(self.__wrapped__, iterable, checked, star=True,
                                default_mode=default_mode))

    def submit(self, *args: P.args, **kwargs: P.kwargs) -> Future[R]:
        """Run one call on the decorator's pool; returns a ``concurrent.futures.Future``."""
        checked, default_mode = self._options({})
        mode = resolve_mode(checked.mode, default_mode)
        if mode == "auto":
            mode = decide(_no_facts(), checked.workers).mode
        backend_options = merge_options(checked.backend or {})
        backend = _pools.acquire(mode, checked.workers, backend_options)
        executor = Executor._over(backend, f"mode={mode!r}", chunksize="auto",
                                  timeout=checked.timeout, owned=False)
        try:
            future = executor.submit(self.__wrapped__, *args, **kwargs)
        finally:
            executor.shutdown(wait=False)
        return future

    def __reduce__(self) -> str | tuple[Any, ...]:
        # By reference where the module can find it again (a worker imports
        # the module); by value for functions defined in __main__ or nested.
        module = getattr(self.__wrapped__, "__module__", None)
        qualname = getattr(self, "__qualname__", "")
        if module and module != "__main__" and "<locals>" not in qualname:
            target = sys.modules.get(module)
            found: Any = target
            for part in qualname.split("."):
                found = getattr(found, part, None)
            if found is self:
                return qualname
        return (ParallelFunction, (self.__wrapped__, self._defaults))

    def __repr__(self) -> str:
        return f"<parallax.parallel {_name(self.__wrapped__)} {self._defaults or ''}>"


def _no_facts() -> Any:
    from . import _host
    from ._auto import Facts

    return Facts(gil_enabled=_host.gil_enabled(), cpus=_host.usable_cpus())


class ParallelDecorator(Protocol):
    """What ``parallel(...)`` with keywords returns: a generic decorator."""

    def __call__(self, fn: Callable[P, R], /) -> ParallelFunction[P, R]: ...


@overload
def parallel(fn: Callable[P, R], /) -> ParallelFunction[P, R]: ...


@overload
def parallel(
    *,
    mode: str = ...,
    workers: int | None = ...,
    chunksize: int | str = ...,
    ordered: bool = ...,
    timeout: float | None = ...,
    errors: ErrorPolicy = ...,
    progress: bool | Callable[..., Any] = ...,
    initializer: Callable[..., object] | None = ...,
    initargs: tuple[Any, ...] = ...,
    **options: Any,
) -> ParallelDecorator: ...


def parallel(
    fn: Callable[P, R] | None = None, /, **defaults: Any
) -> ParallelFunction[P, R] | ParallelDecorator:
    """Decorate a function so it gains ``.map``, ``.imap``, ``.starmap``, ``.submit``.

    Bare (``@parallel``) or with the keywords of :func:`map`
    (``@parallel(mode="process", workers=4)``), which become the defaults of
    those methods. The function stays callable as before and keeps its name,
    docstring, signature and type hints.

    Raises:
        ValueError, TypeError: bad defaults, at decoration time.
    """
    CallOptions.checked(**defaults)

    def decorate(function: Callable[P, R]) -> ParallelFunction[P, R]:
        check_callable(function)
        return ParallelFunction(function, defaults)

    if fn is not None:
        return decorate(fn)
    return cast(ParallelDecorator, decorate)

