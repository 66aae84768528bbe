"""Free-threaded mode: threads that run Python on several cores at once.

On CPython built without the GIL (3.13t, 3.14t) threads execute Python
bytecode in parallel, so CPU-bound work speeds up with no pickling and no
process start-up. On an ordinary build this mode still works, as plain
threads, and warns once that there is no CPU parallelism to be had.
"""

from __future__ import annotations

import os
import sys
import threading
import warnings

from .._host import gil_enabled, usable_cpus
from ._base import WorkerSetup
from ._thread import ThreadBackend

_warned = False
_warn_lock = threading.Lock()


class FreeThreadedBackend(ThreadBackend):
    name = "free-threaded"
    chunk_overhead = 2e-5

    def __init__(self, workers: int | None = None, setup: WorkerSetup | None = None) -> None:
        super().__init__(workers, setup)
        if gil_enabled():
            _warn_once()

    @classmethod
    def default_workers(cls) -> int:
        return usable_cpus()


def _warn_once() -> None:
    global _warned
    with _warn_lock:
        if _warned:
            return
        _warned = True
    warnings.warn(
        "parallax: mode='free-threaded' on a Python with the GIL enabled runs as plain "
        "threads, with no CPU parallelism; use a free-threaded build (python3.13t) or "
        "mode='process' for CPU-bound work",
        RuntimeWarning,
        stacklevel=_first_caller_outside_parallax(),
    )


def _first_caller_outside_parallax() -> int:
    """The stacklevel that points a warning at the user's line, not ours."""
    package = os.path.dirname(os.path.dirname(os.path.realpath(__file__)))
    level = 1
    frame = sys._getframe(1)
    while frame is not None and frame.f_code.co_filename.startswith(package):
        frame = frame.f_back  # type: ignore[assignment]
        level += 1
    return level
