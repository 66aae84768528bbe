"""Shared fixtures: every backend through one fixture, and a leak check.

``backend`` parametrises a test over every mode, so a new backend is tested
by the whole suite at once. Modes that run coroutine functions (asyncio) get
the test's plain function wrapped in ``async def``; everything else about the
call is the same.

The dask mode runs against one real ``LocalCluster`` (worker processes, on
loopback) for the whole session, started the first time a test needs it and
passed to every call as ``address=``, so no call starts a cluster of its
own. Its tests are marked ``dask`` (``-m "not dask"`` deselects them) and
skipped when ``distributed`` is not installed. The leak check leaves that
cluster's processes alone but still sees any cluster a test's calls start.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import pytest

import parallax
from parallax import _pools
from parallax._config import BUILTIN_MODES

#: every built-in mode but "auto", which only picks one of the others
MODES = tuple(mode for mode in BUILTIN_MODES if mode != "auto")

HAVE_DISTRIBUTED = importlib.util.find_spec("distributed") is not None


def as_coroutine(fn: Callable[..., Any]) -> Callable[..., Any]:
    async def wrapper(*args: Any) -> Any:
        return fn(*args)

    wrapper.__name__ = getattr(fn, "__name__", "wrapper")
    return wrapper


@dataclass(frozen=True)
class Backend:
    """A mode under test, and how to call parallax in it."""

    mode: str
    #: backend options passed on every call (dask: the session cluster's address)
    options: Mapping[str, Any] = field(default_factory=dict)

    @property
    def coroutines(self) -> bool:
        return self.mode == "asyncio"

    @property
    def processes(self) -> bool:
        return self.mode == "process"

    def fn(self, fn: Callable[..., Any]) -> Callable[..., Any]:
        return as_coroutine(fn) if self.coroutines else fn

    def map(self, fn: Callable[..., Any], data: Iterable[Any], **kw: Any) -> list[Any]:
        return parallax.map(self.fn(fn), data, mode=self.mode, **self.options, **kw)

    def imap(self, fn: Callable[..., Any], data: Iterable[Any], **kw: Any) -> Iterator[Any]:
        return parallax.imap(self.fn(fn), data, mode=self.mode, **self.options, **kw)

    def starmap(self, fn: Callable[..., Any], data: Iterable[Any], **kw: Any) -> list[Any]:
        return parallax.starmap(self.fn(fn), data, mode=self.mode, **self.options, **kw)

    def executor(self, **kw: Any) -> parallax.Executor:
        return parallax.Executor(self.mode, **self.options, **kw)


@pytest.fixture(
    params=[pytest.param(mode, marks=pytest.mark.dask) if mode == "dask" else mode
            for mode in MODES]
)
def backend(request: pytest.FixtureRequest) -> Backend:
    if request.param == "dask":
        if not HAVE_DISTRIBUTED:
            pytest.skip("dask mode needs the 'distributed' package: pip install 'parallax[dask]'")
        cluster = request.getfixturevalue("dask_cluster")
        return Backend("dask", {"address": str(cluster.scheduler_address)})
    return Backend(request.param)


# -- the session's dask cluster -----------------------------------------------------------

#: Dask settings while the session cluster runs. A worker killed on purpose
#: is restarted by its nanny, but LocalCluster closes a nanny whose worker is
#: down when it looks again 15 s after a death (lost-worker-timeout), which a
#: burst of kills can hit; and fetching a result from a worker that just died
#: retries the connection for the connect timeout (30 s by default).
DASK_CONFIG = {
    "distributed.deploy.lost-worker-timeout": "1h",
    "distributed.comm.timeouts.connect": "3s",
    # Its sampling profiler reads other threads' running frames, which crashes
    # a free-threaded interpreter (segfault in distributed/profile.py).
    "distributed.worker.profile.enabled": False,
}

#: the session cluster, once a test has started it
_session_cluster: Any = None


def start_dask_cluster() -> Any:
    """A LocalCluster of 2 worker processes, 1 thread each, on loopback."""
    import distributed

    return distributed.LocalCluster(
        n_workers=2,
        threads_per_worker=1,
        processes=True,
        host="127.0.0.1",
        dashboard_address="127.0.0.1:0",  # not 8787: several clusters at once
        silence_logs=logging.ERROR,
    )


@pytest.fixture(scope="session")
def dask_cluster() -> Iterator[Any]:
    """One dask cluster for every test that needs one, closed at the session's end."""
    global _session_cluster
    import dask

    with dask.config.set(DASK_CONFIG):
        cluster = start_dask_cluster()
        _session_cluster = cluster
        try:
            yield cluster
        finally:
            _pools.shutdown_pools(wait=True)
            _session_cluster = None
            cluster.close()


def session_pids() -> set[int]:
    """The session dask cluster's own processes: its workers (as its nannies
    restart them) and multiprocessing's resource tracker, which starting them
    started."""
    cluster = _session_cluster
    if cluster is None:
        return set()
    pids = {getattr(nanny, "pid", None) for nanny in list(cluster.workers.values())}
    from multiprocessing import resource_tracker

    tracker = getattr(resource_tracker, "_resource_tracker", None)
    pids.add(getattr(tracker, "_pid", None))
    return {pid for pid in pids if isinstance(pid, int)}


# -- leak check ---------------------------------------------------------------------------


def child_pids() -> set[int]:
    """Live child processes of this process (Linux /proc), but for those of the
    session's dask cluster (see :func:`session_pids`).

    Process workers forked by a fork template (``parallax._template``) count
    as children, the templates themselves (kept for the session: the shared
    one, and one per ``preload=`` set) do not.
    """
    from parallax import _template

    me = os.getpid()
    templates = _template.running_pids()
    found = set()
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as stat:
                fields = stat.read().rsplit(b")", 1)[1].split()
        except OSError:
            continue
        state, parent = fields[0], int(fields[1])
        if (parent == me or parent in templates) and state != b"Z":
            found.add(int(entry))
    return found - session_pids() - templates


def parallax_threads() -> list[threading.Thread]:
    return [
        thread
        for thread in threading.enumerate()
        if thread.name.startswith("parallax-")
        and thread.name not in ("parallax-pool-reaper", "parallax-template")
    ]


def wait_until(condition: Callable[[], bool], seconds: float = 10.0) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.02)
    return condition()


@pytest.fixture(autouse=True)
def no_leftovers() -> Iterator[None]:
    """After each test: pools shut down, no child process or worker thread left."""
    before = child_pids()
    yield
    _pools.shutdown_pools(wait=True)
    assert wait_until(lambda: not (child_pids() - before)), (
        f"leftover child processes: {child_pids() - before}"
    )
    assert wait_until(lambda: not parallax_threads()), (
        f"leftover threads: {[thread.name for thread in parallax_threads()]}"
    )
