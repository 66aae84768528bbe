"""Queued work runs to completion before the interpreter exits.

The thread, free-threaded and asyncio backends run on daemon threads (a pool
must never keep a finished program alive by itself), and daemon threads are
frozen where they stand at exit. ``concurrent.futures`` instead runs every
submitted work item before the interpreter exits, and so do these backends:
each registers here when it is created, and a hook that runs as the main
thread finishes (``threading``'s own exit hooks, before ``atexit``'s and before
daemon threads stop) shuts each live one down gracefully: its workers take
every queued chunk, then stop.
"""

from __future__ import annotations

import atexit
import contextlib
import logging
import threading
import weakref
from collections.abc import Callable
from typing import Protocol

__all__ = ["finish_at_exit"]

logger = logging.getLogger("parallax")


class _Finishing(Protocol):
    def shutdown(self, wait: bool = True, *, cancel_pending: bool = False) -> None: ...


_lock = threading.Lock()
_backends: weakref.WeakSet[_Finishing] = weakref.WeakSet()
_installed = False


def finish_at_exit(backend: _Finishing) -> None:
    """Have ``backend`` finish its queued work before the interpreter exits."""
    global _installed
    with _lock:
        _backends.add(backend)
        if _installed:
            return
        _installed = True
    # Private, but what concurrent.futures itself uses (3.9+): it runs before
    # the interpreter stops daemon threads and before atexit hooks (which
    # would drop what is still queued).
    register: Callable[[Callable[[], None]], object] = getattr(
        threading, "_register_atexit", atexit.register
    )
    with contextlib.suppress(RuntimeError):  # registered while already exiting: too late
        register(_finish_all)


def _finish_all() -> None:
    with _lock:
        backends = list(_backends)
    for backend in backends:
        try:
            backend.shutdown(wait=True)
        except Exception:  # one backend's failure must not keep the others' work from running
            logger.exception("parallax: finishing queued work at exit failed")
