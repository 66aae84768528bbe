"""The exceptions parallax raises, and how worker-side failures travel home.

The tree::

    Exception
     └── ParallaxError                       anything parallax itself reports
          ├── TaskTimeoutError (+ TimeoutError)   an item ran past ``timeout=``
          ├── WorkerCrashedError                  a worker died while running an item
          └── SerializationError (+ pickle.PickleError)
                                                  a function, argument, result or
                                                  exception could not be pickled

Exceptions raised by the user's function are *not* wrapped: they reach the
caller as their own type, with the worker-side traceback attached as
``__cause__`` (a :class:`WorkerTraceback`) and a note naming the failing item.
"""

from __future__ import annotations

import pickle
import reprlib

TYPE_CHECKING = False  # not typing's: workers do not import typing
if TYPE_CHECKING:
    from typing import Any

__all__ = [
    "ParallaxError",
    "SerializationError",
    "TaskTimeoutError",
    "WorkerCrashedError",
    "WorkerTraceback",
    "describe_item",
]

_short = reprlib.Repr()
_short.maxstring = 40
_short.maxother = 40
_short.maxlist = 4
_short.maxtuple = 4
_short.maxdict = 4


def describe_item(item: Any) -> str:
    """A short, never-failing repr of an input item for error messages."""
    try:
        return _short.repr(item)
    except Exception:  # a broken __repr__ must not hide the real error
        return f"<{type(item).__name__} object>"


class ParallaxError(Exception):
    """Base class of every error parallax raises on its own account."""


class TaskTimeoutError(ParallaxError, TimeoutError):
    """An item ran longer than the per-task ``timeout=``.

    In process mode the worker running it was killed and replaced; in thread
    and asyncio mode the item was abandoned or cancelled (see docs/reliability.md).
    """


class WorkerCrashedError(ParallaxError):
    """A worker process died while it was running an item.

    Only the item that was running fails; the pool replaces the worker and the
    other items of the run carry on. ``exitcode`` is the process's exit code
    (negative: killed by that signal number), ``worker`` names the worker.
    """

    def __init__(self, message: str, *, exitcode: int | None = None, worker: str = "") -> None:
        super().__init__(message)
        self.exitcode = exitcode
        self.worker = worker

    def __reduce__(self) -> tuple[Any, ...]:
        return (_rebuild_crash, (str(self), self.exitcode, self.worker))


def _rebuild_crash(message: str, exitcode: int | None, worker: str) -> WorkerCrashedError:
    return WorkerCrashedError(message, exitcode=exitcode, worker=worker)


class SerializationError(ParallaxError, pickle.PickleError):
    """Something that had to cross a process boundary could not be pickled.

    The message says what it was: the function, an item's argument, an item's
    result or an exception, and the item's index where there is one.
    """


class WorkerTraceback(Exception):
    """The formatted traceback of an exception raised in a worker.

    Set as ``__cause__`` of the exception the caller receives, so the worker's
    frames show up in the caller's traceback as "The above exception was the
    direct cause of ...".
    """

    def __init__(self, text: str) -> None:
        super().__init__(text)
        self.text = text

    def __str__(self) -> str:
        return f'\n"""\n{self.text}"""'


def format_worker_traceback(exc: BaseException) -> str:
    """The traceback text of ``exc`` as it looked inside the worker."""
    import traceback  # only failures need it; keeps a worker's start-up light

    return "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
