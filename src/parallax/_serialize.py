"""Pickling for everything that crosses a process boundary.

cloudpickle (protocol 5) so lambdas, closures and functions defined in
``__main__`` travel by value. What comes back from a worker (results,
exceptions) is pickled with the standard library's pickler first, which is
faster and lets a worker start without importing cloudpickle at all; only
what it refuses goes through cloudpickle. Failures become :class:`SerializationError`
saying *what* could not be pickled (a :class:`CannotPickleError` or
:class:`CannotUnpickleError`, also the standard library's ``PicklingError`` /
``UnpicklingError``); this module is also what serial mode's
``check_pickle=True`` round-trips through, so fast unit tests catch the same
problems process mode would.
"""

from __future__ import annotations

import pickle
from collections.abc import Sequence

from ._errors import CannotPickleError, CannotUnpickleError, describe_item

TYPE_CHECKING = False  # not typing's: workers do not import typing
if TYPE_CHECKING:
    from types import ModuleType
    from typing import Any

PROTOCOL = 5

__all__ = ["PROTOCOL", "dumps", "dumps_plain", "find_unpicklable", "loads", "round_trip"]

_cloudpickle: ModuleType | None = None


def dumps(obj: Any) -> bytes:
    """Pickle ``obj`` for another process, by value where it must be (cloudpickle)."""
    global _cloudpickle
    if _cloudpickle is None:
        # Imported on first use: a worker that only returns plain values never
        # pays for it (it also pulls in ``typing`` and more).
        import cloudpickle

        _cloudpickle = cloudpickle
    data: bytes = _cloudpickle.dumps(obj, protocol=PROTOCOL)
    return data


def dumps_plain(obj: Any) -> bytes:
    """Pickle with the standard pickler, or cloudpickle if it refuses.

    For what a worker sends home (results, exceptions) and for plain data.
    A worker's results may be instances of classes the caller sent by value
    (from its ``__main__``); the standard pickler refuses those, as it
    refuses lambdas, so nothing is pickled by a reference the caller cannot
    resolve. (The other way round cloudpickle is a must: the caller's
    ``__main__`` classes resolve in the caller, not in a worker.)
    """
    try:
        return pickle.dumps(obj, protocol=PROTOCOL)
    except Exception:
        return dumps(obj)


def loads(data: bytes | bytearray) -> Any:
    return pickle.loads(data)


def _describe_function(fn: Any) -> str:
    name = getattr(fn, "__qualname__", None) or type(fn).__name__
    return f"function {name!s}"


def dumps_function(fn: Any) -> bytes:
    """Pickle the job's function, or say which function could not be pickled."""
    try:
        return dumps(fn)
    except Exception as exc:
        raise CannotPickleError(
            f"the {_describe_function(fn)} cannot be pickled for another process: "
            f"{type(exc).__name__}: {exc}"
        ) from exc


def find_unpicklable(values: Sequence[Any]) -> tuple[int, Exception] | None:
    """The position of the first value that does not pickle, and why."""
    for position, value in enumerate(values):
        try:
            dumps(value)
        except Exception as exc:
            return position, exc
    return None


def argument_error(index: int, item: Any, exc: BaseException) -> CannotPickleError:
    error = CannotPickleError(
        f"the argument of item {index} ({describe_item(item)}) cannot be pickled: "
        f"{type(exc).__name__}: {exc}"
    )
    error.__cause__ = exc
    return error


def result_error(value: Any, exc: BaseException) -> CannotPickleError:
    return CannotPickleError(
        f"the result ({describe_item(value)}, of type {type(value).__qualname__}) "
        f"cannot be pickled: {type(exc).__name__}: {exc}"
    )


def round_trip(obj: Any, what: str) -> Any:
    """Pickle and unpickle ``obj`` as process mode would, naming ``what`` on failure."""
    try:
        data = dumps(obj)
    except Exception as exc:
        raise CannotPickleError(
            f"the {what} ({describe_item(obj)}) cannot be pickled: {type(exc).__name__}: {exc}"
        ) from exc
    try:
        return loads(data)
    except Exception as exc:
        raise CannotUnpickleError(
            f"the {what} ({describe_item(obj)}) pickles but cannot be unpickled: "
            f"{type(exc).__name__}: {exc}"
        ) from exc
