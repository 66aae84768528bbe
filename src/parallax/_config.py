"""Which mode and options a call runs with, and checking what the user passed.

Precedence of the mode, highest first:

1. a ``using(mode)`` block around the call (thread- and task-local);
2. the ``PARALLAX_MODE`` environment variable;
3. ``mode=`` given to the call;
4. the ``@parallel(mode=...)`` decorator's default;
5. ``"auto"``.

A call made inside a parallax worker runs serially in that worker, whatever
mode it names: a pool per call would oversubscribe the CPUs, and sharing the
outer pool could deadlock (every worker waiting for chunks queued behind it).
So does a call made while the interpreter shuts down (from an ``atexit``
handler that runs after parallax's, or a ``__del__`` at exit): no new thread
can start then, and nothing would stop new workers.
"""

from __future__ import annotations

import contextvars
import math
import os
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from types import BuiltinFunctionType, FunctionType, MethodWrapperType, WrapperDescriptorType
from typing import Any, Final, Literal, get_args

from . import _host, _pools
from ._records import FrozenRecord
from ._worker import inside_worker
from .backends import available_modes, backend_options

__all__ = [
    "BUILTIN_MODES",
    "CALL_KEYWORDS",
    "COMMON_CHECKS",
    "COMMON_KEYWORDS",
    "Mode",
    "Settings",
    "check_backoff",
    "check_callable",
    "check_chunksize",
    "check_common",
    "check_errors",
    "check_finalizer",
    "check_flag",
    "check_initargs",
    "check_initializer",
    "check_iterable",
    "check_max_tasks",
    "check_mode",
    "check_options",
    "check_progress",
    "check_retries",
    "check_retry_on",
    "check_timeout",
    "check_wait",
    "check_worker_bound",
    "check_workers",
    "closest",
    "forced_common",
    "is_coroutine_function",
    "merge_options",
    "pickle_checks",
    "resolve",
    "set_pickle_checks",
    "using",
    "worker_limit",
]

Mode = Literal["auto", "serial", "thread", "process", "free-threaded", "asyncio", "dask"]
#: every mode parallax itself defines, in the order it lists them (the CLI,
#: the pytest plugin and the tests read this; registered backends add to it)
BUILTIN_MODES: Final[tuple[str, ...]] = get_args(Mode)

ENVIRONMENT_VARIABLE: Final = "PARALLAX_MODE"
ERROR_POLICIES: Final = ("raise", "return", "skip")


class Settings(FrozenRecord):
    """What a ``using()`` block forces: the mode, the common keywords of a
    call (``common``, checked) and backend options (``options``)."""

    __match_args__ = ("mode", "options", "common")  # the fields, in order
    __slots__ = __match_args__
    mode: str
    options: Mapping[str, Any]
    common: Mapping[str, Any]

    def __init__(self, mode: str, options: Mapping[str, Any] | None = None,
                 common: Mapping[str, Any] | None = None) -> None:
        _set = object.__setattr__
        _set(self, "mode", mode)
        _set(self, "options", {} if options is None else options)
        _set(self, "common", {} if common is None else common)


_forced: contextvars.ContextVar[Settings | None] = contextvars.ContextVar(
    "parallax_forced", default=None
)

# -- checks ---------------------------------------------------------------------------


def check_mode(mode: object, *, where: str = "mode") -> str:
    """Return ``mode`` if it names a registered mode.

    Raises:
        ValueError: listing the valid modes.
    """
    modes = available_modes()
    if not isinstance(mode, str) or mode not in modes:
        guess = closest(mode, modes)
        raise ValueError(f"unknown {where} {mode!r}{guess}; valid modes are: {', '.join(modes)}")
    return mode


def closest(name: object, choices: Iterable[str]) -> str:
    """`` (did you mean 'x'?)`` naming the one or two choices most like
    ``name`` (case aside), or ``""`` if none is close."""
    import difflib  # only when a name is wrong: not on every call

    if not isinstance(name, str):
        return ""
    lowered = {choice.lower(): choice for choice in choices}
    exact = lowered.get(name.lower())
    found = [name.lower()] if exact else difflib.get_close_matches(name.lower(), list(lowered), n=2)
    if not found:
        return ""
    return f" (did you mean {' or '.join(repr(lowered[match]) for match in found)}?)"


def check_workers(workers: object) -> int | None:
    if workers is None:
        return None
    if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
        raise ValueError(f"workers must be a positive integer or None (automatic), not {workers!r}")
    return workers


#: most worker processes per usable CPU: each is a whole interpreter (tens
#: of MB), and past a few per core they only queue for the CPUs
PROCESS_WORKERS_PER_CPU: Final = 32
#: most threads in a pool: each holds a stack, and I/O concurrency beyond a
#: few thousand is asyncio's job
THREAD_WORKERS_CEILING: Final = 4096
#: most coroutines awaited at once in asyncio mode (the input is read ahead
#: about twice that far)
ASYNCIO_WORKERS_CEILING: Final = 100_000


def worker_limit(mode: str) -> tuple[int, str] | None:
    """The most workers ``mode`` may start, and why; None: no bound (serial runs
    in the caller; a registered backend knows its own limits)."""
    if mode in ("process", "dask"):
        cpus = _host.usable_cpus()
        return (PROCESS_WORKERS_PER_CPU * cpus,
                f"{PROCESS_WORKERS_PER_CPU} worker processes per usable CPU, {cpus} here")
    if mode in ("thread", "free-threaded"):
        return THREAD_WORKERS_CEILING, "threads in one pool; for more waits at once use asyncio"
    if mode == "asyncio":
        return ASYNCIO_WORKERS_CEILING, "coroutines awaited at once"
    return None


def check_worker_bound(mode: str, workers: int | None, *, asked: str | None = None) -> None:
    """Refuse a worker count ``mode`` cannot sensibly start, before any work.

    ``asked``: the mode the user named, when ``mode`` is only what it may become
    (``"auto"``).

    Raises:
        ValueError: ``workers`` is above the mode's bound, naming the bound and why.
    """
    limit = worker_limit(mode)
    if workers is None or limit is None or workers <= limit[0]:
        return
    bound, why = limit
    if asked is not None:
        raise ValueError(
            f"workers={workers} is more than mode={asked!r} may start: it can pick "
            f"{mode} mode, which allows at most {bound} ({why}); name the mode "
            "(e.g. mode='thread') to use more workers"
        )
    raise ValueError(f"workers={workers} is more than {mode} mode allows: at most {bound} ({why})")


def check_chunksize(chunksize: object) -> int | str:
    if chunksize == "auto" and isinstance(chunksize, str):
        return "auto"
    if isinstance(chunksize, bool) or not isinstance(chunksize, int) or chunksize < 1:
        raise ValueError(f'chunksize must be a positive integer or "auto", not {chunksize!r}')
    return chunksize


def check_timeout(timeout: object, *, name: str = "timeout") -> float | None:
    if timeout is None:
        return None
    if (
        isinstance(timeout, bool)
        or not isinstance(timeout, int | float)
        or not math.isfinite(timeout)
        or timeout <= 0
    ):
        raise ValueError(f"{name} must be a positive number of seconds or None, not {timeout!r}")
    return float(timeout)


def check_wait(timeout: object) -> float | None:
    """``Executor.map``'s ``timeout``: seconds for the whole iteration, as in the
    standard library (zero or less: only results already there), or None."""
    if timeout is None:
        return None
    if isinstance(timeout, bool) or not isinstance(timeout, int | float) or math.isnan(timeout):
        raise ValueError(f"timeout must be a number of seconds or None, not {timeout!r}")
    return float(timeout)


def check_errors(errors: object) -> Literal["raise", "return", "skip"]:
    if errors not in ERROR_POLICIES:
        raise ValueError(
            f"errors must be one of {', '.join(repr(p) for p in ERROR_POLICIES)}, not {errors!r}"
        )
    return errors


def check_callable(fn: object, *, name: str = "fn") -> Callable[..., Any]:
    if not callable(fn):
        raise TypeError(f"{name} must be callable, not {type(fn).__name__}")
    return fn


def check_iterable(iterable: object) -> None:
    try:
        iter(iterable)  # type: ignore[call-overload]
    except TypeError:
        raise TypeError(
            f"the input must be an iterable (list, range, generator, ...), "
            f"not {type(iterable).__name__}"
        ) from None


def check_initializer(initializer: object, initargs: object) -> None:
    if initializer is not None:
        check_callable(initializer, name="initializer")
    check_initargs(initargs)


def check_initargs(initargs: object, *, name: str = "initargs") -> tuple[Any, ...]:
    if not isinstance(initargs, tuple):
        raise TypeError(f"{name} must be a tuple, not {type(initargs).__name__}")
    return initargs


def check_finalizer(finalizer: object, finalargs: object) -> None:
    if finalizer is not None:
        check_callable(finalizer, name="finalizer")
    check_initargs(finalargs, name="finalargs")


def check_max_tasks(value: object) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"max_tasks_per_worker must be a positive integer or None, not {value!r}")
    return value


def check_flag(value: object, *, name: str) -> bool:
    if not isinstance(value, bool):
        raise TypeError(f"{name} must be True or False, not {value!r}")
    return value


def check_progress(progress: object) -> object:
    flag = progress is True or progress is False or progress is None
    # ``1 in (True, False)`` is true, but 1 is no progress setting: a value
    # equal to a flag must be that flag.
    if (progress in (True, False, None) and not flag) or not (flag or callable(progress)):
        raise TypeError(f"progress must be True, False or a callable, not {progress!r}")
    return progress


def check_retries(retries: object) -> int:
    if isinstance(retries, bool) or not isinstance(retries, int) or retries < 0:
        raise ValueError(f"retries must be a non-negative integer, not {retries!r}")
    return retries


def check_retry_on(retry_on: object) -> tuple[type[BaseException], ...]:
    """The exception types to retry on, as a tuple (a single type is allowed)."""
    if isinstance(retry_on, type):
        retry_on = (retry_on,)
    if not (
        isinstance(retry_on, tuple)
        and retry_on
        and all(isinstance(kind, type) and issubclass(kind, BaseException) for kind in retry_on)
    ):
        raise TypeError(f"retry_on must be an exception type or a tuple of them, not {retry_on!r}")
    return retry_on


def check_backoff(backoff: object) -> float:
    # nan slips through "< 0" and then makes every retry wait the longest backoff
    if (
        isinstance(backoff, bool)
        or not isinstance(backoff, int | float)
        or not math.isfinite(backoff)
        or backoff < 0
    ):
        raise ValueError(
            f"backoff must be a finite, non-negative number of seconds, not {backoff!r}"
        )
    return float(backoff)


#: the keywords every ``map``-like call shares besides ``mode``, each with its
#: check, in the order they are reported; each check returns the value to
#: keep (retry_on: always a tuple)
COMMON_CHECKS: Final[tuple[tuple[str, Callable[[Any], Any]], ...]] = (
    ("workers", check_workers),
    ("chunksize", check_chunksize),
    ("timeout", check_timeout),
    ("errors", check_errors),
    ("initializer", lambda fn: None if fn is None else check_callable(fn, name="initializer")),
    ("initargs", check_initargs),
    ("finalizer", lambda fn: None if fn is None else check_callable(fn, name="finalizer")),
    ("finalargs", lambda args: check_initargs(args, name="finalargs")),
    ("ordered", lambda flag: check_flag(flag, name="ordered")),
    ("record_tasks", lambda flag: check_flag(flag, name="record_tasks")),
    ("progress", check_progress),
    ("retries", check_retries),
    ("retry_on", check_retry_on),
    ("backoff", check_backoff),
    ("max_tasks_per_worker", check_max_tasks),
)
COMMON_KEYWORDS: Final = frozenset(name for name, _ in COMMON_CHECKS)
#: the keywords of ``map``-like calls and ``@parallel(...)``, in the order they are listed
CALL_KEYWORDS: Final = ("mode", *(name for name, _ in COMMON_CHECKS))


def check_common(given: Mapping[str, Any]) -> dict[str, Any]:
    """The common keywords among ``given``, each checked (the rest are left out).

    Raises:
        ValueError, TypeError: naming the bad keyword and what is valid.
    """
    return {name: check(given[name]) for name, check in COMMON_CHECKS if name in given}


def check_options(options: Mapping[str, Any], *,
                  keywords: Iterable[str] = CALL_KEYWORDS) -> dict[str, Any]:
    """Reject options that no backend knows; keep the rest for the one that runs.

    ``keywords``: the caller's own keywords, listed (and suggested) in the
    error next to the backend options.

    Raises:
        TypeError: naming the unknown option, the closest valid keyword, the
            caller's keywords and the options each mode accepts.
    """
    known = backend_options()
    if any(accepted is None for accepted in known.values()):
        return dict(options)
    everything = set().union(*(accepted or () for accepted in known.values()))
    unknown = sorted(set(options) - everything)
    if unknown:
        listing = "; ".join(
            f"{mode}: {', '.join(sorted(accepted))}" for mode, accepted in known.items() if accepted
        )
        valid = [*keywords, *sorted(everything)]
        named = ", ".join(f"{name!r}{closest(name, valid)}" for name in unknown)
        raise TypeError(
            f"unexpected keyword argument{'s' if len(unknown) > 1 else ''} {named}; "
            f"the keywords are: {', '.join(keywords)}; backend options are ({listing})"
        )
    return dict(options)


# -- checking that everything pickles, in every mode -----------------------------------

#: set by the pytest plugin's ``--parallax-check-pickle``: every call round-trips
#: its function, each argument and each result through pickling, whatever its
#: mode (a plain global: reading it is all an unchecked call pays)
_pickle_checks = False


def set_pickle_checks(on: bool) -> bool:
    """Turn the pickle round trip of every call on or off; returns the previous setting."""
    global _pickle_checks
    previous, _pickle_checks = _pickle_checks, check_flag(on, name="pickle checks")
    return previous


def pickle_checks() -> bool:
    """Must every call check that what it runs would pickle for a process?"""
    return _pickle_checks


# -- using() and resolution --------------------------------------------------------------


@contextmanager
def using(mode: Mode | str, **options: Any) -> Iterator[None]:
    """Force ``mode`` (and options) for every parallax call in the block.

    ``options`` are the common keywords of :func:`parallax.map` (``workers``,
    ``chunksize``, ``timeout``, ``errors``, ``ordered``, ``progress``,
    ``retries``, ...) and backend options. Each overrides what the call (or
    the decorator) says, as the mode overrides explicit ``mode=`` arguments,
    decorator defaults and the ``PARALLAX_MODE`` environment variable; an
    ``Executor`` made in the block takes the ones it has. Local to the current
    thread and asyncio task (a ``contextvars`` variable); blocks nest, the
    innermost wins, keyword by keyword.

    Raises:
        ValueError: ``mode`` is not a known mode, or a keyword's value is bad.
        TypeError: an option that is neither a common keyword nor one a
            backend accepts, or a value of the wrong type.
    """
    check_mode(mode)
    common = check_common(options)
    backend = check_options({name: value for name, value in options.items()
                             if name not in COMMON_KEYWORDS}, keywords=CALL_KEYWORDS[1:])
    outer = _forced.get()
    token = _forced.set(Settings(
        mode,
        {**(outer.options if outer else {}), **backend},
        {**(outer.common if outer else {}), **common},
    ))
    try:
        yield
    finally:
        _forced.reset(token)


def forced_common() -> Mapping[str, Any]:
    """The common keywords an active ``using()`` block forces (checked), if any."""
    settings = _forced.get()
    return settings.common if settings is not None else {}


def resolve(explicit: str | None, default: str | None = None) -> tuple[str, str]:
    """The mode a call runs in and, in words, why (for ``Stats.reason``)."""
    settings = _forced.get()
    if settings is not None:
        mode, why = settings.mode, "forced by parallax.using()"
    elif os.environ.get(ENVIRONMENT_VARIABLE):
        mode = check_mode(os.environ[ENVIRONMENT_VARIABLE].strip(), where=ENVIRONMENT_VARIABLE)
        why = f"set by {ENVIRONMENT_VARIABLE}"
    elif explicit is not None:
        mode, why = explicit, "requested"
    elif default is not None:
        mode, why = default, "the decorator's default"
    else:
        mode, why = "auto", "the default"
    if mode != "serial" and inside_worker():
        return "serial", f"mode={mode!r} asked from inside a parallax worker -> serial"
    if mode != "serial" and _pools.exiting():
        return "serial", f"mode={mode!r} asked while the interpreter shuts down -> serial"
    return mode, f"mode={mode!r} {why}"


def merge_options(call_options: Mapping[str, Any]) -> dict[str, Any]:
    """Backend options of a call, overridden by those of an active ``using()``."""
    settings = _forced.get()
    if settings is None or not settings.options:
        return dict(call_options)
    return {**call_options, **settings.options}


def is_coroutine_function(fn: object) -> bool:
    """True for ``async def`` functions, also behind partials and decorators."""
    target = fn
    for _ in range(8):
        if _iscoroutinefunction(target):
            return True
        inner = getattr(target, "func", None) or getattr(target, "__wrapped__", None)
        if inner is None:  # a callable object: look at its __call__ method
            method = vars(type(target)).get("__call__")
            return method is not None and _iscoroutinefunction(method)
        target = inner
    return False


#: ``inspect.CO_COROUTINE``, the code flag of an ``async def`` function
_CO_COROUTINE: Final = 0x80
#: C functions and slot wrappers (the ``__call__`` of a function's type): no
#: coroutine functions, nor marked as such
_NEVER_COROUTINES: Final = frozenset({BuiltinFunctionType, MethodWrapperType,
                                      WrapperDescriptorType})


def _iscoroutinefunction(obj: object) -> bool:
    """``inspect.iscoroutinefunction``, without importing ``inspect`` (with
    ``ast``, ``dis``, ``tokenize``: milliseconds) for the common callables:
    plain functions and builtins."""
    if type(obj) in _NEVER_COROUTINES:
        return False
    if type(obj) is FunctionType and not hasattr(obj, "_is_coroutine_marker"):
        return bool(obj.__code__.co_flags & _CO_COROUTINE)
    import inspect  # methods, partials, functions marked by markcoroutinefunction (3.12)

    return inspect.iscoroutinefunction(obj)
