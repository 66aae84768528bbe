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
import logging
import os
import threading
import weakref
from collections.abc import Hashable
from dataclasses import dataclass
from time import monotonic
from typing import Any

from .backends import Backend, WorkerSetup, create_backend, default_workers

logger = logging.getLogger("parallax")

DEFAULT_IDLE_TIMEOUT = 300.0

__all__ = ["acquire", "idle_timeout", "new_backend", "reap_idle", "release", "shutdown_pools"]


@dataclass(slots=True)
class _Pooled:
    backend: Backend
    leases: int = 0
    last_used: float = 0.0


_lock = threading.Lock()
_pools: dict[Hashable, _Pooled] = {}
_every_backend: weakref.WeakSet[Backend] = weakref.WeakSet()
_hooks_installed = False
_reaper: threading.Thread | None = None
_reaper_stop = threading.Event()


def idle_timeout() -> float:
    raw = os.environ.get("PARALLAX_IDLE_TIMEOUT")
    if raw:
        try:
            value = float(raw)
        except ValueError:
            logger.warning("parallax: ignoring PARALLAX_IDLE_TIMEOUT=%r (not a number)", raw)
        else:
            if value > 0:
                return value
    return DEFAULT_IDLE_TIMEOUT


def _install_hooks() -> None:
    global _hooks_installed
    if not _hooks_installed:
        _hooks_installed = True
        atexit.register(_at_exit)


def new_backend(
    mode: str, *, workers: int | None, setup: WorkerSetup, options: dict[str, Any]
) -> Backend:
    """A backend owned by its caller, still shut down at interpreter exit."""
    backend = create_backend(mode, workers=workers, setup=setup, options=options)
    with _lock:
        _every_backend.add(backend)
        _install_hooks()
    return backend


def _key(mode: str, workers: int | None, options: dict[str, Any]) -> Hashable:
    try:
        frozen = tuple(sorted((name, value) for name, value in options.items()))
        hash(frozen)
    except TypeError:  # unhashable option values: key on identity instead
        frozen = tuple(sorted((name, id(value)) for name, value in options.items()))
    return (mode, workers, frozen)


def acquire(mode: str, workers: int | None, options: dict[str, Any]) -> Backend:
    """Lease the shared pool for this mode and options, creating it if needed."""
    global _reaper
    # workers=None and the mode's default count are the same pool
    key = _key(mode, workers or default_workers(mode), options)
    with _lock:
        pooled = _pools.get(key)
        if pooled is not None and pooled.backend.broken is not None:
            stale = _pools.pop(key)
            threading.Thread(target=stale.backend.shutdown, daemon=True).start()
            pooled = None
        if pooled is None:
            backend = create_backend(mode, workers=workers, setup=WorkerSetup(), options=options)
            pooled = _pools[key] = _Pooled(backend)
            _every_backend.add(backend)
            _install_hooks()
            if _reaper is None:
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
    while not _reaper_stop.wait(min(5.0, idle_timeout() / 2)):
        reap_idle()


def reap_idle() -> int:
    """Shut down pools unused for longer than the idle timeout; how many were."""
    limit = idle_timeout()
    now = monotonic()
    with _lock:
        idle = [
            key
            for key, pooled in _pools.items()
            if pooled.leases == 0 and now - pooled.last_used > limit
        ]
        expired = [_pools.pop(key).backend for key in idle]
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
    _reaper_stop.set()
    with _lock:
        backends = list(_every_backend)
        _pools.clear()
    for backend in backends:
        with contextlib.suppress(Exception):
            # As the standard library's pools: work submitted runs to the end.
            backend.shutdown(wait=True)
