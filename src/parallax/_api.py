"""The function API: ``map``, ``imap``, ``starmap``, ``amap``, ``plan``, ``@parallel``.

The public doors only: each checks its keywords (:class:`CallOptions`) and
hands the call to :func:`parallax._launch.launch`, which resolves the mode
(``using()`` > ``PARALLAX_MODE`` > ``mode=`` > decorator default > ``"auto"``),
lets the auto-selector measure the first items if the mode is ``"auto"``,
and starts the run on a shared pool, kept warm between calls (or on a
backend of the call's own when its workers need an initializer).
"""

from __future__ import annotations

import enum
import functools
import sys
from collections.abc import Awaitable, Callable, Iterable, Iterator
from typing import TYPE_CHECKING, Any, Generic, ParamSpec, Protocol, TypeVar, cast, overload

from ._auto import Plan
from ._config import check_callable
from ._launch import CallOptions, Launched, callable_name, launch, plan_call, submit_call
from ._run import ErrorPolicy

if TYPE_CHECKING:
    from concurrent.futures import Future

__all__ = ["ParallelFunction", "amap", "imap", "map", "parallel", "plan", "starmap"]

P = ParamSpec("P")
R = TypeVar("R")
T = TypeVar("T")


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
    finalizer: Callable[..., object] | None = None,
    finalargs: tuple[Any, ...] = (),
    retries: int = 0,
    retry_on: type[BaseException] | tuple[type[BaseException], ...] = (Exception,),
    backoff: float = 0.0,
    max_tasks_per_worker: int | None = None,
    record_tasks: bool = True,
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
        finalizer, finalargs: run in each worker as it stops (shutdown,
            recycling); an error is logged on the "parallax" logger.
        retries: run a failing item again up to this many times.
        retry_on: the exception type(s) worth a retry (default: any ``Exception``).
        backoff: seconds before the first retry, doubled for each further one
            (with jitter, at most 30 s).
        max_tasks_per_worker: replace a worker after this many items (leaky
            libraries); such a call gets a pool of its own.
        record_tasks: ``False`` keeps only counts and totals in the stats
            (no per-item records), for very long runs.
        **options: backend options, e.g. ``check_pickle=True`` (serial),
            ``max_worker_memory=`` (process), ``address=`` (dask). A
            misspelled keyword is a ``TypeError`` naming the closest valid one.

    Raises:
        ValueError, TypeError: bad arguments, before any work starts.
        Exception: what ``fn`` raised, same type, worker traceback as cause.
        TaskTimeoutError, WorkerCrashedError, SerializationError.
    """
    return launch(fn, iterable, CallOptions.from_call(locals())).collect()


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
    finalizer: Callable[..., object] | None = None,
    finalargs: tuple[Any, ...] = (),
    retries: int = 0,
    retry_on: type[BaseException] | tuple[type[BaseException], ...] = (Exception,),
    backoff: float = 0.0,
    max_tasks_per_worker: int | None = None,
    record_tasks: bool = True,
    **options: Any,
) -> Iterator[R]:
    """Like :func:`map`, lazily: reads the input as results are consumed.

    A bounded number of chunks is in flight at any time, so an endless
    generator runs in bounded memory. Closing the iterator early (``break``)
    cancels what has not started.
    """
    return launch(fn, iterable, CallOptions.from_call(locals())).iterate()


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
    finalizer: Callable[..., object] | None = None,
    finalargs: tuple[Any, ...] = (),
    retries: int = 0,
    retry_on: type[BaseException] | tuple[type[BaseException], ...] = (Exception,),
    backoff: float = 0.0,
    max_tasks_per_worker: int | None = None,
    record_tasks: bool = True,
    **options: Any,
) -> list[R]:
    """``[fn(*args) for args in iterable]``, computed in parallel (see :func:`map`)."""
    return launch(fn, iterable, CallOptions.from_call(locals()), star=True).collect()


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
    finalizer: Callable[..., object] | None = None,
    finalargs: tuple[Any, ...] = (),
    retries: int = 0,
    retry_on: type[BaseException] | tuple[type[BaseException], ...] = (Exception,),
    backoff: float = 0.0,
    max_tasks_per_worker: int | None = None,
    record_tasks: bool = True,
    **options: Any,
) -> list[R]:
    """:func:`map` for async code: ``results = await parallax.amap(fn, data)``.

    Coroutine functions run concurrently on the caller's own event loop (in
    asyncio mode); plain functions run on their pool while the loop stays free.
    """
    checked = CallOptions.from_call(locals())
    import asyncio

    launched = launch(fn, iterable, checked, loop=asyncio.get_running_loop())
    return await asyncio.to_thread(launched.collect)


def plan(fn: Callable[..., Any], sample: Iterable[Any], *, workers: int | None = None) -> Plan:
    """What ``mode="auto"`` would choose for ``fn`` over ``sample``, and why.

    Runs the first item(s) of ``sample`` in the caller to measure them (that
    is the whole cost); starts no pool.
    """
    return plan_call(fn, sample, workers)


# -- @parallel ------------------------------------------------------------------------------

Method = TypeVar("Method", bound=Callable[..., Any])


def _with_defaults(method: Method) -> Method:
    """A ``ParallelFunction`` method whose keywords the call leaves out take
    the decorator's defaults.

    The method's own signature is :func:`map`'s, typed, so mypy, IDEs and
    ``help()`` show every keyword (``help()`` finds it through ``__wrapped__``);
    only its defaults give way to the decorator's, which the call fills in
    here before the signature's apply.
    """

    @functools.wraps(method)
    def with_defaults(self: ParallelFunction[Any, Any], /, *args: Any, **given: Any) -> Any:
        return method(self, *args, **{**self._defaults, **given})

    return cast(Method, with_defaults)


class ParallelFunction(Generic[P, R]):
    """A function decorated with :func:`parallel`: callable as before, plus
    ``.map``, ``.imap``, ``.starmap`` and ``.submit`` with its defaults."""

    def __init__(self, fn: Callable[P, R], defaults: dict[str, Any]) -> None:
        functools.update_wrapper(self, fn)
        self.__wrapped__ = fn
        self._defaults = defaults
        #: the defaults, checked: by parallel(), or at first use (unpickled)
        self._checked_defaults: CallOptions | None = None

    def __call__(self, *args: P.args, **kwargs: P.kwargs) -> R:
        return self.__wrapped__(*args, **kwargs)

    def _options(self, overrides: dict[str, Any]) -> tuple[CallOptions, str | None]:
        """The call's options (only ``overrides`` are checked) and the decorator's mode."""
        defaults = self._checked_defaults
        if defaults is None:
            defaults = self._checked_defaults = CallOptions.checked(**self._defaults)
        # The decorator's mode is a default of its own (the call's reason says so).
        base = defaults.replace(mode=None)
        return CallOptions.checked(base, **overrides), defaults.mode

    def _launch(self, iterable: Iterable[Any], arguments: dict[str, Any], *,
                star: bool = False) -> Launched:
        """Start the run of a ``.map``-like call from its ``locals()``.

        Every keyword is there: the call's, the decorator's defaults that
        :func:`_with_defaults` filled in (the very objects given to the
        decorator: checked then, not again) and the signature's defaults.
        """
        keywords = {**arguments, **arguments["options"]}
        for name in ("self", "iterable", "options"):
            del keywords[name]
        decorator = self._defaults
        overrides = {name: value for name, value in keywords.items()
                     if name not in decorator or value is not decorator[name]}
        if overrides.get("mode") == (decorator.get("mode") or "auto"):
            # Not given (or given as it would be): "auto" ranks as the default.
            del overrides["mode"]
        options, default_mode = self._options(overrides)
        return launch(self.__wrapped__, iterable, options, star=star, default_mode=default_mode)

    @_with_defaults
    def map(
        self,
        iterable: Iterable[Any],
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
        finalizer: Callable[..., object] | None = None,
        finalargs: tuple[Any, ...] = (),
        retries: int = 0,
        retry_on: type[BaseException] | tuple[type[BaseException], ...] = (Exception,),
        backoff: float = 0.0,
        max_tasks_per_worker: int | None = None,
        record_tasks: bool = True,
        **options: Any,
    ) -> list[R]:
        """:func:`parallax.map` of this function: the same keywords; each one not
        given takes the decorator's default, if it set one."""
        return self._launch(iterable, locals()).collect()

    @_with_defaults
    def imap(
        self,
        iterable: Iterable[Any],
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
        finalizer: Callable[..., object] | None = None,
        finalargs: tuple[Any, ...] = (),
        retries: int = 0,
        retry_on: type[BaseException] | tuple[type[BaseException], ...] = (Exception,),
        backoff: float = 0.0,
        max_tasks_per_worker: int | None = None,
        record_tasks: bool = True,
        **options: Any,
    ) -> Iterator[R]:
        """:func:`parallax.imap` of this function: the same keywords; each one not
        given takes the decorator's default, if it set one."""
        return self._launch(iterable, locals()).iterate()

    @_with_defaults
    def starmap(
        self,
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
        finalizer: Callable[..., object] | None = None,
        finalargs: tuple[Any, ...] = (),
        retries: int = 0,
        retry_on: type[BaseException] | tuple[type[BaseException], ...] = (Exception,),
        backoff: float = 0.0,
        max_tasks_per_worker: int | None = None,
        record_tasks: bool = True,
        **options: Any,
    ) -> list[R]:
        """:func:`parallax.starmap` of this function: the same keywords; each one not
        given takes the decorator's default, if it set one."""
        return self._launch(iterable, locals(), star=True).collect()

    def submit(self, *args: P.args, **kwargs: P.kwargs) -> Future[R]:
        """Run one call on the decorator's pool; returns a ``concurrent.futures.Future``."""
        checked, default_mode = self._options({})
        return submit_call(self.__wrapped__, args, kwargs, checked, default_mode)

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
        return f"<parallax.parallel {callable_name(self.__wrapped__)} {self._defaults or ''}>"


class ParallelDecorator(Protocol):
    """What ``parallel(...)`` with keywords returns: a generic decorator."""

    def __call__(self, fn: Callable[P, R], /) -> ParallelFunction[P, R]: ...


class _Unset(enum.Enum):
    """No function given: ``parallel(...)`` with keywords returns a decorator."""

    UNSET = enum.auto()


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
    finalizer: Callable[..., object] | None = ...,
    finalargs: tuple[Any, ...] = ...,
    retries: int = ...,
    retry_on: type[BaseException] | tuple[type[BaseException], ...] = ...,
    backoff: float = ...,
    max_tasks_per_worker: int | None = ...,
    record_tasks: bool = ...,
    **options: Any,
) -> ParallelDecorator: ...


def parallel(
    fn: Callable[P, R] | _Unset = _Unset.UNSET, /, **defaults: Any
) -> ParallelFunction[P, R] | ParallelDecorator:
    """Decorate a function so it gains ``.map``, ``.imap``, ``.starmap``, ``.submit``.

    Bare (``@parallel``) or with the keywords of :func:`map`
    (``@parallel(mode="process", workers=4)``), which become the defaults of
    those methods. The function stays callable as before and keeps its name,
    docstring, signature and type hints.

    Raises:
        ValueError, TypeError: bad defaults or a non-callable ``fn`` (``None``
            included), at decoration time.
    """
    if fn is not _Unset.UNSET and not callable(fn):
        # parallel(None) would otherwise return a decorator, and the mistake
        # would surface far from here.
        raise TypeError(
            "parallel takes the function to decorate (@parallel) or keywords only "
            f"(@parallel(mode='thread')), not {type(fn).__name__}"
        )
    checked = CallOptions.checked(**defaults)

    def decorate(function: Callable[P, R]) -> ParallelFunction[P, R]:
        check_callable(function)
        decorated = ParallelFunction(function, defaults)
        decorated._checked_defaults = checked
        return decorated

    if fn is not _Unset.UNSET:
        return decorate(fn)
    return cast(ParallelDecorator, decorate)

