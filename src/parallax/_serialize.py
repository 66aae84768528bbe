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

A ``memoryview`` (which pickle refuses) travels as its bytes, a
``pickle.PickleBuffer`` (out of band, so through shared memory when large),
and is rebuilt as a memoryview of the same format, shape and read-only flag
(:func:`_reduce_memoryview`).

Code objects of functions sent by value keep their file name (cloudpickle
writes ``"<dynamic-code>"`` there): a worker's traceback then names the
caller's script, line and source line, as it would in the caller.
"""

from __future__ import annotations

import io
import marshal
import pickle
import sys
from collections.abc import Sequence

from ._errors import CannotPickleError, CannotUnpickleError, describe_item

TYPE_CHECKING = False  # not typing's: workers do not import typing
if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import Any, ClassVar

PROTOCOL = 5
#: the bytecode a code object is marshalled for: only this interpreter may load it
_BYTECODE = sys.implementation.cache_tag

__all__ = ["PROTOCOL", "by_value_pickler", "dumps", "dumps_plain", "find_unpicklable",
           "load_memoryview", "loads", "needs_cloudpickle", "round_trip"]

_pickler: type | None = None


def dumps(obj: Any) -> bytes:
    """Pickle ``obj`` for another process, by value where it must be (cloudpickle)."""
    with io.BytesIO() as file:
        by_value_pickler()(file, protocol=PROTOCOL).dump(obj)
        return file.getvalue()


def by_value_pickler() -> type:
    """cloudpickle's pickler, with code objects that keep their file name.

    Built on first use: cloudpickle is imported then, so a worker that only
    returns plain values never pays for it (it also pulls in ``typing`` and more).
    """
    global _pickler
    if _pickler is None:
        from collections import ChainMap
        from types import CodeType

        import cloudpickle

        inherited = cloudpickle.Pickler.dispatch_table
        by_fields = inherited[CodeType]  # cloudpickle's own reducer

        def reduce_code(code: CodeType) -> tuple[Any, ...]:
            return _reduce_code(code, by_fields)

        class Pickler(cloudpickle.Pickler):  # type: ignore[misc]
            dispatch_table: ClassVar[ChainMap[Any, Any]] = ChainMap(
                {CodeType: reduce_code, memoryview: _reduce_memoryview}, inherited)

        _pickler = Pickler
    return _pickler


def _reduce_code(code: Any, by_fields: Callable[[Any], tuple[Any, ...]]) -> tuple[Any, ...]:
    """A code object as its marshalled bytes, ``co_filename`` and all.

    cloudpickle rebuilds code from its fields with the file name replaced by
    ``"<dynamic-code>"`` (for byte-identical payloads wherever the code was
    defined, which parallax does not need). A worker runs the caller's
    interpreter, so the bytecode, and so marshal's format, is the same there:
    its tracebacks name the caller's file and line, and ``linecache`` shows
    the source line. A code object with a constant marshal refuses (only code
    built by hand, ``code.replace(co_consts=...)``) keeps cloudpickle's way,
    ``by_fields``, which pickles the constant.
    """
    try:
        data = marshal.dumps(code)
    except ValueError:
        return by_fields(code)
    return load_code, (_BYTECODE, data)


def load_code(bytecode: str | None, data: bytes) -> Any:
    """The code object :func:`_reduce_code` marshalled.

    Raises:
        CannotUnpickleError: another interpreter marshalled it (its bytecode
            would not run here).
    """
    if bytecode != _BYTECODE:
        raise CannotUnpickleError(
            f"a function sent by value was compiled by {bytecode} and cannot run on "
            f"{_BYTECODE}: the workers need the caller's Python version"
        )
    return marshal.loads(data)


#: the formats ``memoryview.cast`` rebuilds a view in: native, one item each
_CAST_FORMATS = frozenset("?bBcdefhHiIlLnNPqQ")


def _reduce_memoryview(view: memoryview) -> tuple[Any, ...]:
    """A memoryview as its bytes and what rebuilds it (:func:`load_memoryview`).

    A C-contiguous view goes as a ``PickleBuffer`` of itself: out of band, no
    copy until the buffer is written (into shared memory when it is large);
    any other layout as a copy in C order (``bytearray``, as ``tobytes()``
    would order it), which the receiver gets as a C-contiguous view.

    Raises:
        pickle.PicklingError: a view ``memoryview.cast`` cannot rebuild (a
            format that is not native and of one item, such as ctypes' ``<d``;
            a zero in the shape of a view of two dimensions or more).
    """
    fmt = view.format
    if fmt.removeprefix("@") not in _CAST_FORMATS:
        raise pickle.PicklingError(
            f"a memoryview of format {fmt!r} cannot be sent (only native formats of one "
            f"item are rebuilt): send view.cast('B'), or its bytes")
    if view.ndim > 1 and 0 in (view.shape or ()):
        raise pickle.PicklingError(
            f"a memoryview of shape {view.shape} (empty, of {view.ndim} dimensions) "
            "cannot be sent: memoryview.cast does not rebuild it")
    data = view if view.c_contiguous else bytearray(view)
    return load_memoryview, (pickle.PickleBuffer(data), fmt, view.shape, view.readonly)


def load_memoryview(data: Any, fmt: str, shape: tuple[int, ...], readonly: bool) -> memoryview:
    """The view :func:`_reduce_memoryview` sent, over ``data``: the shared
    memory's mapping, no copy (out of band), or the ``bytes``/``bytearray``
    pickle rebuilt an in-band buffer as."""
    raw: Any = memoryview(data)  # (of bytes: typeshed types cast by its format)
    view: memoryview = raw.cast(fmt) if len(shape) == 1 else raw.cast(fmt, shape)
    return view.toreadonly() if readonly and not view.readonly else view


def needs_cloudpickle(data: bytes | bytearray) -> bool:
    """Whether loading ``data`` imports cloudpickle: it names the module of
    cloudpickle's rebuilders (``cloudpickle.cloudpickle``, and
    ``cloudpickle.cloudpickle_fast`` before cloudpickle 3), so something in
    it went by value (a function or class of ``__main__``, a lambda, a
    closure). Bytes of the data that happen to spell that name count too:
    that costs a needless import, never a missing one."""
    return b"cloudpickle.cloudpickle" in data


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
