"""Pools kept warm between calls, and cleaned up at exit.

``parallax.map`` twice in a row must not start processes twice, so calls lease
a backend from this registry, keyed by mode, worker count and options. A pool
nobody has used for ``PARALLAX_IDLE_TIMEOUT`` seconds (default 300) is shut
down by a reaper thread. Every backend (pooled or owned by an ``Executor``)
is shut down at interpreter exit; the exit hook and the reaper are set up
when the first backend starts, never at import.
"""

from __future__ import annotations

import atexit
import contextlib
import math
import os
import sys
import threading
import weakref
from collections.abc import Hashable
from time import monotonic
from typing import Any

from .backends import Backend, WorkerSetup, create_backend, default_workers

DEFAULT_IDLE_TIMEOUT = 300.0
IDLE_TIMEOUT_VARIABLE = "PARALLAX_IDLE_TIMEOUT"

__all__ = ["acquire", "exiting", "idle_timeout", "new_backend", "reap_idle", "release",
           "shutdown_pools"]


class _Pooled:
    """A shared pool, with its leases and when it was last given back."""

    __slots__ = ("backend", "last_used", "leases")

    def __init__(self, backend: Backend) -> None:
        self.backend = backend
        self.leases = 0
        self.last_used = 0.0


_lock = threading.Lock()
_pools: dict[Hashable, _Pooled] = {}
_every_backend: weakref.WeakSet[Backend] = weakref.WeakSet()
_hooks_installed = False
#: the exit hook ran: every backend is shut down, and the interpreter is on
#: its way out (threads may no longer start)
_exited = False
_reaper: threading.Thread | None = None
_reaper_stop = threading.Event()


def idle_timeout() -> float:
    """Seconds a pool may sit unused before it is shut down (``PARALLAX_IDLE_TIMEOUT``).

    Raises:
        ValueError: the variable is set but is no positive, finite number
            (a negative or ``nan`` value would otherwise keep idle workers
            forever without a word).
    """
    raw = os.environ.get(IDLE_TIMEOUT_VARIABLE, "").strip()
    if not raw:
        return DEFAULT_IDLE_TIMEOUT
    try:
        value = float(raw)
    except ValueError:
        value = math.nan
    if not (math.isfinite(value) and value > 0):
        raise ValueError(
            f"{IDLE_TIMEOUT_VARIABLE} must be a positive number of seconds (default "
            f"{DEFAULT_IDLE_TIMEOUT:g}), not {raw!r}"
        )
    return value


#: module-level locks of other parallax modules that a thread of the parent
#: may hold at a fork; the child gets fresh ones (see _forget_after_fork)
_FORK_LOCKS = (("parallax._recorder", "_monitors_lock"), ("parallax.backends._registry", "_lock"),
               ("parallax.backends._freethreaded", "_warn_lock"))


def _forget_after_fork() -> None:
    """In a child of ``os.fork()``: start with no pools.

    The pools' workers and threads belong to the parent (the child has none
    of the threads that drive them), so they are forgotten, never shut down:
    a call in the child starts a pool of its own, and the child's exit hook
    leaves the parent's workers alone. Locks a parent thread may have held
    at the fork are replaced, so nothing in the child waits on them forever.
    """
    global _lock, _pools, _every_backend, _reaper, _reaper_stop
    _lock = threading.Lock()
    _pools = {}
    _every_backend = weakref.WeakSet()
    _reaper = None
    _reaper_stop = threading.Event()
    for module_name, attribute in _FORK_LOCKS:
        module = sys.modules.get(module_name)
        if module is not None and hasattr(module, attribute):
            setattr(module, attribute, threading.Lock())


if hasattr(os, "register_at_fork"):  # POSIX
    os.register_at_fork(after_in_child=_forget_after_fork)


def exiting() -> bool:
    """True once the interpreter shuts down: parallax's exit hook ran, or it is
    finalizing. A call then runs serially (a new thread would never start,
    and nothing would shut new workers down)."""
    return _exited or sys.is_finalizing()


def _install_hooks() -> None:
    global _hooks_installed
    if not _hooks_installed:
        _hooks_installed = True
        atexit.register(_at_exit)
        # Load the serial backend now: a call at exit falls back on it, and by
        # then nothing can be imported.
        default_workers("serial")


def new_backend(
    mode: str, *, workers: int | None, setup: WorkerSetup, options: dict[str, Any]
) -> Backend:
    """A backend owned by its caller, still shut down at interpreter exit.

    Raises:
        ValueError: ``PARALLAX_IDLE_TIMEOUT`` is set to no valid value.
    """
    idle_timeout()  # a bad setting fails the call that starts workers, not the reaper
    backend = create_backend(mode, workers=workers, setup=setup, options=options)
    with _lock:
        _every_backend.add(backend)
        _install_hooks()
    return backend


def _frozen(value: Any) -> Hashable:
    """``value`` as part of a pool's key: itself if hashable, a dict or list by
    its contents (``preload=["numpy"]`` in every call shares one pool), else
    its identity (the pool holds the value, so the identity stays its own)."""
    if isinstance(value, dict):
        return tuple(sorted((name, _frozen(item)) for name, item in value.items()))
    if isinstance(value, list):
        return ("list", *(_frozen(item) for item in value))
    try:
        hash(value)
    except TypeError:
        return ("id", id(value))
    return value  # type: ignore[no-any-return]


def _key(mode: str, workers: int | None, options: dict[str, Any],
         setup: WorkerSetup) -> Hashable:
    how = tuple(_frozen(getattr(setup, name)) for name in setup.__match_args__)
    return (mode, workers, _frozen(options), how)


def acquire(mode: str, workers: int | None, options: dict[str, Any],
            setup: WorkerSetup | None = None) -> Backend:
    """Lease the shared pool for this mode, options and worker setup, creating
    it if needed. Pools whose workers run an initializer (``@parallel``'s
    ``.submit``) are shared by the calls that name the same one.

    Raises:
        ValueError: ``PARALLAX_IDLE_TIMEOUT`` is set to no valid value.
    """
    global _reaper
    idle_timeout()  # a bad setting fails the call, not the reaper thread later
    setup = setup or WorkerSetup()
    # workers=None and the mode's default count are the same pool
    key = _key(mode, workers or default_workers(mode), options, setup)
    with _lock:
        pooled = _pools.get(key)
        if pooled is not None and pooled.backend.broken is not None:
            stale = _pools.pop(key)
            threading.Thread(target=stale.backend.shutdown, daemon=True).start()
            pooled = None
        if pooled is None:
            backend = create_backend(mode, workers=workers, setup=setup, options=options)
            pooled = _pools[key] = _Pooled(backend)
            _every_backend.add(backend)
            _install_hooks()
            if _reaper is None and not exiting():  # no thread starts at exit
                _reaper = threading.Thread(target=_reap, name="parallax-pool-reaper", daemon=True)
                _reaper.start()
        pooled.leases += 1
        pooled.last_used = monotonic()
        return pooled.backend


def release(backend: Backend) -> None:
    with _lock:
        for pooled in _pools.values():
            if pooled.backend is backend:
                pooled.leases -= 1
                pooled.last_used = monotonic()
                return


def _reap() -> None:
    while not _reaper_stop.wait(min(5.0, _reaper_timeout() / 2)):
        reap_idle(_reaper_timeout())


def _reaper_timeout() -> float:
    """The idle timeout, or the default if the variable went bad since the
    pools started (the next call that starts workers says so)."""
    try:
        return idle_timeout()
    except ValueError:
        return DEFAULT_IDLE_TIMEOUT


def reap_idle(limit: float | None = None) -> int:
    """Shut down pools unused for longer than ``limit`` seconds (default: the
    idle timeout); how many were."""
    limit = idle_timeout() if limit is None else limit
    now = monotonic()
    with _lock:
        idle = [
            key
            for key, pooled in _pools.items()
            if pooled.leases == 0 and now - pooled.last_used > limit
        ]
        expired = [_pools.pop(key).backend for key in idle]
    if expired:
        import logging  # not on the way of a first call

        logger = logging.getLogger("parallax")
    for backend in expired:
        logger.debug("parallax: shutting down idle %s pool", backend.name)
        backend.shutdown(wait=True)
    return len(expired)


def shutdown_pools(wait: bool = True) -> None:
    """Shut down every pooled backend (the next call starts fresh ones)."""
    with _lock:
        pools = [pooled.backend for pooled in _pools.values()]
        _pools.clear()
    for backend in pools:
        backend.shutdown(wait=wait)


def _at_exit() -> None:
    global _exited
    _exited = True
    _reaper_stop.set()
    with _lock:
        backends = list(_every_backend)
        _pools.clear()
    for backend in backends:
        with contextlib.suppress(Exception):
            # As the standard library's pools: work submitted runs to the end.
            backend.shutdown(wait=True)
