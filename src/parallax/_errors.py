"""The exceptions parallax raises, and how worker-side failures travel home.

The tree::

    Exception
     └── ParallaxError                       anything parallax itself reports
          ├── TaskTimeoutError (+ TimeoutError)   an item ran past ``timeout=``
          ├── WorkerCrashedError (+ BrokenProcessPool)
          │                                       a worker died while running an item
          ├── InitializerError (+ BrokenExecutor) the worker initializer failed:
          │    ├── ThreadInitializerError (+ BrokenThreadPool)    in thread mode
          │    └── ProcessInitializerError (+ BrokenProcessPool)  in process mode
          └── SerializationError (+ pickle.PickleError)
               │                                  a function, argument, result or
               │                                  exception could not cross over:
               ├── CannotPickleError (+ pickle.PicklingError)     pickling it failed
               └── CannotUnpickleError (+ pickle.UnpicklingError) unpickling it failed

The errors that are also ``concurrent.futures``' ``BrokenExecutor`` family are
defined in ``_broken``: their bases live in ``concurrent.futures``, whose
import (``logging``, ``multiprocessing``) a process worker, which imports this
module, must not pay.

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
    "CannotPickleError",
    "CannotUnpickleError",
    "ParallaxError",
    "SerializationError",
    "TaskTimeoutError",
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


class SerializationError(ParallaxError, pickle.PickleError):
    """Something that had to cross a process boundary could not be pickled.

    The message says what it was: the function, an item's argument, an item's
    result or an exception, and the item's index where there is one.
    """


class CannotPickleError(SerializationError, pickle.PicklingError):
    """Pickling failed: what had to cross a process boundary could not be sent."""


class CannotUnpickleError(SerializationError, pickle.UnpicklingError):
    """Unpickling failed: what crossed a process boundary could not be rebuilt."""


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
