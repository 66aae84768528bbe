"""parallax's errors that are also ``concurrent.futures``' ``BrokenExecutor`` family.

Code written for the standard library's executors catches
``BrokenProcessPool`` when a worker process dies and ``BrokenExecutor`` (or
``BrokenThreadPool``) when an initializer fails: parallax's errors for those
cases are subclasses of both, so such code works unchanged. Reached through
``parallax._errors`` (see there why this module is separate).
"""

from __future__ import annotations

from concurrent.futures import BrokenExecutor
from concurrent.futures.process import BrokenProcessPool
from concurrent.futures.thread import BrokenThreadPool
from typing import Any

from ._errors import ParallaxError

__all__ = [
    "InitializerError",
    "ProcessInitializerError",
    "ThreadInitializerError",
    "WorkerCrashedError",
]


class WorkerCrashedError(ParallaxError, BrokenProcessPool):
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


class InitializerError(ParallaxError, BrokenExecutor):
    """The worker initializer raised (its exception is the ``__cause__``): no item
    can run in this pool."""


class ThreadInitializerError(InitializerError, BrokenThreadPool):
    """The initializer of a thread pool raised."""


class ProcessInitializerError(InitializerError, BrokenProcessPool):
    """The initializer of a process pool raised."""
