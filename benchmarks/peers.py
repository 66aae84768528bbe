"""The cases: parallax and its peers, each behind one small runner interface.

A runner is used by ``benchmarks/case.py`` in a fresh interpreter as::

    runner.load()           # import the library (timed: "import")
    runner.start()          # create the pool, if the library has one (cold time starts here)
    runner.map(fn, items)   # first call: cold time ends when the results are in hand
    runner.map(fn, items)   # second call on the same pool: warm time
    runner.stop()           # not timed

Which case runs on which workload, and why some do not, is decided by
:func:`plan_cases`.
"""

from __future__ import annotations

import math
import os
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any

from .workloads import Workload

#: worker processes for every process pool: the machine's CPUs
CPUS = os.cpu_count() or 1
#: thread count of the "tuned" thread pools on blocking I/O, and asyncio concurrency
IO_CONCURRENCY = 256
#: chunk size of the "tuned" peers on a generator of unknown length
STREAM_CHUNK = 10_000


def tuned_chunk(size: int, workers: int = CPUS) -> int:
    """The classic balanced chunk size: four chunks per worker."""
    return max(1, math.ceil(size / (4 * workers)))


# -- runners ---------------------------------------------------------------------------


class Runner(ABC):
    """One way of running ``fn`` over the items."""

    def load(self) -> None:  # noqa: B027 - optional hook
        """Import the library."""

    def start(self) -> None:  # noqa: B027 - optional hook
        """Create the pool (timed as part of the cold call)."""

    @abstractmethod
    def map(self, fn: Callable[[Any], Any], items: list[Any]) -> list[Any]:
        """All results, in input order."""

    def imap(self, fn: Callable[[Any], Any], source: Iterator[Any]) -> Iterable[Any]:
        """Results in order, lazily (stream workload)."""
        raise NotImplementedError(f"{type(self).__name__} has no lazy map")

    def stop(self) -> None:  # noqa: B027 - optional hook
        """Shut the pool down (not timed)."""

    def describe(self, fn: Callable[[Any], Any], sample: Iterable[Any]) -> str:
        """Extra words for the report (parallax auto: what it chose)."""
        return ""


class SerialRunner(Runner):
    """The baseline: a list comprehension calling the function."""

    def map(self, fn: Callable[[Any], Any], items: list[Any]) -> list[Any]:
        return [fn(item) for item in items]

    def imap(self, fn: Callable[[Any], Any], source: Iterator[Any]) -> Iterable[Any]:
        return (fn(item) for item in source)


class ParallaxRunner(Runner):
    """``parallax.map`` / ``imap`` / ``amap`` in one mode; its pools are its own business."""

    def __init__(self, mode: str, *, workers: int | None = None, use_amap: bool = False) -> None:
        self.mode = mode
        self.options: dict[str, Any] = {"mode": mode}
        if workers is not None:
            self.options["workers"] = workers
        self.use_amap = use_amap

    def load(self) -> None:
        import importlib

        import parallax

        # parallax loads its modules on first use; load them here so that, as
        # for the peers, the library's import is not timed as pool start-up.
        for module in ("_api", "_executor", "backends._serial", "backends._thread",
                       "backends._process", "backends._asyncio", "backends._freethreaded"):
            importlib.import_module(f"parallax.{module}")
        self.parallax = parallax

    def map(self, fn: Callable[[Any], Any], items: list[Any]) -> list[Any]:
        if self.use_amap:
            import asyncio

            async def main() -> list[Any]:
                results: list[Any] = await self.parallax.amap(fn, items, **self.options)
                return results

            return asyncio.run(main())
        return self.parallax.map(fn, items, **self.options)

    def imap(self, fn: Callable[[Any], Any], source: Iterator[Any]) -> Iterable[Any]:
        return self.parallax.imap(fn, source, **self.options)

    def describe(self, fn: Callable[[Any], Any], sample: Iterable[Any]) -> str:
        if self.mode != "auto":
            return ""
        plan = self.parallax.plan(fn, sample)
        return f"auto -> {plan.mode}: {plan.reason}"


class PoolRunner(Runner):
    """``multiprocessing.Pool(CPUS)``: ``map`` / ``imap``."""

    def __init__(self, chunksize: int | None = None) -> None:
        self.chunksize = chunksize

    def load(self) -> None:
        import multiprocessing

        self.multiprocessing = multiprocessing

    def start(self) -> None:
        self.pool = self.multiprocessing.Pool(CPUS)

    def map(self, fn: Callable[[Any], Any], items: list[Any]) -> list[Any]:
        return self.pool.map(fn, items, self.chunksize)

    def imap(self, fn: Callable[[Any], Any], source: Iterator[Any]) -> Iterable[Any]:
        return self.pool.imap(fn, source, self.chunksize or 1)

    def stop(self) -> None:
        self.pool.terminate()
        self.pool.join()


class ProcessPoolExecutorRunner(Runner):
    """``concurrent.futures.ProcessPoolExecutor(workers).map`` (CPUS workers by default)."""

    def __init__(self, chunksize: int = 1, workers: int = CPUS) -> None:
        self.chunksize = chunksize
        self.workers = workers

    def load(self) -> None:
        from concurrent.futures import ProcessPoolExecutor

        self.factory = ProcessPoolExecutor

    def start(self) -> None:
        self.executor = self.factory(self.workers)

    def map(self, fn: Callable[[Any], Any], items: list[Any]) -> list[Any]:
        return list(self.executor.map(fn, items, chunksize=self.chunksize))

    def stop(self) -> None:
        self.executor.shutdown(wait=True, cancel_futures=True)


class ThreadPoolExecutorRunner(Runner):
    """``concurrent.futures.ThreadPoolExecutor(workers).map``."""

    def __init__(self, workers: int | None = None) -> None:
        self.workers = workers

    def load(self) -> None:
        from concurrent.futures import ThreadPoolExecutor

        self.factory = ThreadPoolExecutor

    def start(self) -> None:
        self.executor = self.factory(self.workers)

    def map(self, fn: Callable[[Any], Any], items: list[Any]) -> list[Any]:
        return list(self.executor.map(fn, items))

    def stop(self) -> None:
        self.executor.shutdown(wait=True, cancel_futures=True)


class JoblibRunner(Runner):
    """``joblib.Parallel(n_jobs, backend)(delayed(fn)(x) for x in items)``."""

    def __init__(self, backend: str, *, n_jobs: int = -1, batch_size: int | str = "auto") -> None:
        self.backend = backend
        self.n_jobs = n_jobs
        self.batch_size = batch_size

    def load(self) -> None:
        import joblib

        self.joblib = joblib

    def _parallel(self, return_as: str) -> Any:
        return self.joblib.Parallel(n_jobs=self.n_jobs, backend=self.backend,
                                    batch_size=self.batch_size, return_as=return_as)

    def start(self) -> None:
        self.parallel = self._parallel("list")
        self.parallel.__enter__()  # keeps the workers for the second call

    def map(self, fn: Callable[[Any], Any], items: list[Any]) -> list[Any]:
        delayed = self.joblib.delayed(fn)
        results: list[Any] = self.parallel(delayed(item) for item in items)
        return results

    def imap(self, fn: Callable[[Any], Any], source: Iterator[Any]) -> Iterable[Any]:
        delayed = self.joblib.delayed(fn)
        results: Iterable[Any] = self._parallel("generator")(delayed(item) for item in source)
        return results

    def stop(self) -> None:
        self.parallel.__exit__(None, None, None)


class MpireRunner(Runner):
    """``mpire.WorkerPool(n_jobs, keep_alive=True).map`` / ``imap``."""

    def __init__(self, *, n_jobs: int = CPUS, chunk_size: int | None = None,
                 start_method: str | None = None) -> None:
        self.n_jobs = n_jobs
        self.chunk_size = chunk_size
        self.start_method = start_method

    def load(self) -> None:
        import mpire

        self.mpire: Any = mpire

    def start(self) -> None:
        extra = {"start_method": self.start_method} if self.start_method else {}
        self.pool = self.mpire.WorkerPool(n_jobs=self.n_jobs, keep_alive=True, **extra)

    def map(self, fn: Callable[[Any], Any], items: list[Any]) -> list[Any]:
        # mpire unpacks tuples and dicts into arguments; every item here is neither
        results: list[Any] = self.pool.map(fn, items, chunk_size=self.chunk_size)
        return results

    def imap(self, fn: Callable[[Any], Any], source: Iterator[Any]) -> Iterable[Any]:
        results: Iterable[Any] = self.pool.imap(fn, source, chunk_size=self.chunk_size)
        return results

    def stop(self) -> None:
        self.pool.terminate()


class PebbleRunner(Runner):
    """``pebble.ProcessPool(CPUS)`` or ``pebble.ThreadPool(workers)``: ``map(...).result()``."""

    def __init__(self, *, chunksize: int = 1, threads: int | None = None) -> None:
        self.chunksize = chunksize
        self.threads = threads

    def load(self) -> None:
        import pebble

        self.pebble: Any = pebble

    def start(self) -> None:
        self.pool: Any
        if self.threads is None:
            self.pool = self.pebble.ProcessPool(max_workers=CPUS)
        else:
            self.pool = self.pebble.ThreadPool(max_workers=self.threads)

    def map(self, fn: Callable[[Any], Any], items: list[Any]) -> list[Any]:
        return list(self.pool.map(fn, items, chunksize=self.chunksize).result())

    def stop(self) -> None:
        self.pool.stop()
        self.pool.join()


class AsyncioGatherRunner(Runner):
    """``asyncio.run(asyncio.gather(...))``, with a semaphore bounding concurrency or not."""

    def __init__(self, limit: int | None) -> None:
        self.limit = limit

    def load(self) -> None:
        import asyncio

        self.asyncio = asyncio

    def map(self, fn: Callable[[Any], Any], items: list[Any]) -> list[Any]:
        asyncio = self.asyncio
        limit = self.limit

        async def main() -> list[Any]:
            if limit is None:
                return list(await asyncio.gather(*(fn(item) for item in items)))
            semaphore = asyncio.Semaphore(limit)

            async def bounded(item: Any) -> Any:
                async with semaphore:
                    return await fn(item)

            return list(await asyncio.gather(*(bounded(item) for item in items)))

        results: list[Any] = asyncio.run(main())
        return results


# -- the cases -------------------------------------------------------------------------


@dataclass(frozen=True)
class Case:
    """One row of a workload's table."""

    id: str
    label: str
    make: Callable[[], Runner]
    #: the parallax mode this row runs (None for peers and the serial loop)
    parallax_mode: str | None = None


@dataclass(frozen=True)
class Planned:
    """A case planned for a workload: runs, or is skipped with a note."""

    case: Case
    skip: str | None = None


def _parallax(mode: str, *, workers: int | None = None, use_amap: bool = False,
              label: str | None = None, suffix: str = "") -> Case:
    case_id = f"parallax-{mode}{suffix}"
    return Case(case_id, label or f"parallax {mode}",
                lambda: ParallaxRunner(mode, workers=workers, use_amap=use_amap), mode)


def plan_cases(workload: Workload, size: int) -> list[Planned]:
    """Every row of ``workload``'s table, in order; the ones that make no sense carry a note."""
    chunk = tuned_chunk(size)
    serial = Case("serial", "serial loop", SerialRunner)
    no_pool_on_coroutines = "coroutine function: thread and process pools are not its engine"

    if workload.kind == "async":
        computed = f"computed: {size} x {workload.computed_task_seconds} s, not run"
        rows = [
            Planned(serial, computed),
            Planned(Case("gather-sem", f"asyncio.gather + Semaphore({IO_CONCURRENCY})",
                         lambda: AsyncioGatherRunner(IO_CONCURRENCY))),
            Planned(Case("gather", "asyncio.gather (unbounded)",
                         lambda: AsyncioGatherRunner(None))),
            Planned(_parallax("auto", use_amap=True, label="parallax auto (amap)")),
            Planned(_parallax("asyncio", use_amap=True, label="parallax asyncio (amap)")),
            Planned(_parallax("thread", workers=IO_CONCURRENCY, suffix="-256",
                              label=f"parallax thread ({IO_CONCURRENCY} workers, "
                                    "asyncio.run per item)")),
        ]
        skipped = ["multiprocessing.Pool.map", "ProcessPoolExecutor.map",
                   "ThreadPoolExecutor.map", "joblib", "mpire", "pebble"]
        rows += [Planned(Case(f"skip-{name}", name, SerialRunner), no_pool_on_coroutines)
                 for name in skipped]
        return rows

    if workload.kind == "stream":
        not_lazy = "submits every item up front (Executor.map is not lazy): nothing to measure"
        return [
            Planned(serial),
            Planned(_parallax("auto", label="parallax auto (imap)")),
            Planned(_parallax("serial", label="parallax serial (imap)")),
            Planned(_parallax("thread", label="parallax thread (imap)")),
            Planned(_parallax("process", label="parallax process (imap)")),
            Planned(Case("pool-imap", "multiprocessing.Pool.imap (chunksize=1)", PoolRunner)),
            Planned(Case("pool-imap-tuned", f"multiprocessing.Pool.imap (chunksize={STREAM_CHUNK})",
                         lambda: PoolRunner(STREAM_CHUNK))),
            Planned(Case("joblib-loky", "joblib loky (return_as='generator')",
                         lambda: JoblibRunner("loky"))),
            Planned(Case("mpire", "mpire imap (default chunk_size)", MpireRunner),
                    "mpire needs iterable_len or chunk_size for a generator"),
            Planned(Case("mpire-tuned", f"mpire imap (chunk_size={STREAM_CHUNK})",
                         lambda: MpireRunner(chunk_size=STREAM_CHUNK))),
            Planned(Case("ppe", "ProcessPoolExecutor.map", ProcessPoolExecutorRunner), not_lazy),
            Planned(Case("tpe", "ThreadPoolExecutor.map", ThreadPoolExecutorRunner), not_lazy),
            Planned(Case("pebble", "pebble ProcessPool.map", PebbleRunner),
                    "submits every chunk up front (not lazy): nothing to measure"),
        ]

    if workload.name == "io_sleep":
        computed = f"computed: {size} x {workload.computed_task_seconds} s, not run"
        two_workers = (f"{CPUS} workers: {size} x {workload.computed_task_seconds} s / {CPUS} = "
                       f"{size * (workload.computed_task_seconds or 0) / CPUS:.0f} s by arithmetic;"
                       " not run")
        io = IO_CONCURRENCY
        return [
            Planned(serial, computed),
            Planned(_parallax("auto")),
            Planned(_parallax("thread", label="parallax thread (default workers)")),
            Planned(_parallax("thread", workers=io, suffix="-256",
                              label=f"parallax thread ({io} workers)")),
            Planned(_parallax("process"), two_workers),
            Planned(Case("tpe", "ThreadPoolExecutor() defaults", ThreadPoolExecutorRunner)),
            Planned(Case("tpe-256", f"ThreadPoolExecutor({io})",
                         lambda: ThreadPoolExecutorRunner(io))),
            Planned(Case("joblib-threading", "joblib threading (n_jobs=-1)",
                         lambda: JoblibRunner("threading")), two_workers),
            Planned(Case("joblib-threading-256", f"joblib threading (n_jobs={io})",
                         lambda: JoblibRunner("threading", n_jobs=io))),
            Planned(Case("mpire-threading-256", f"mpire threading (n_jobs={io})",
                         lambda: MpireRunner(n_jobs=io, start_method="threading"))),
            Planned(Case("pebble-thread-256", f"pebble ThreadPool({io})",
                         lambda: PebbleRunner(threads=io))),
            Planned(Case("pool", "multiprocessing.Pool.map", PoolRunner), two_workers),
            Planned(Case("ppe", "ProcessPoolExecutor.map", ProcessPoolExecutorRunner),
                    two_workers),
            Planned(Case("joblib-loky", "joblib loky", lambda: JoblibRunner("loky")), two_workers),
        ]

    # cpu_medium, cpu_small, tiny, payload, startup: plain lists, every peer
    startup = workload.kind == "startup"
    rows = [
        Planned(serial),
        Planned(_parallax("auto")),
        Planned(_parallax("serial")),
        Planned(_parallax("thread")),
        Planned(_parallax("process")),
    ]
    if workload.name in ("cpu_medium", "cpu_small", "tiny"):
        rows.append(Planned(_parallax("free-threaded")))
    rows += [
        Planned(Case("pool", "multiprocessing.Pool.map (default chunksize = tuned)", PoolRunner)),
        Planned(Case("ppe", "ProcessPoolExecutor.map (chunksize=1)", ProcessPoolExecutorRunner)),
    ]
    if not startup:
        rows.append(Planned(Case("ppe-tuned", f"ProcessPoolExecutor.map (chunksize={chunk})",
                                 lambda: ProcessPoolExecutorRunner(chunk))))
    rows.append(Planned(Case("tpe", "ThreadPoolExecutor() defaults", ThreadPoolExecutorRunner)))
    rows.append(Planned(Case("joblib-loky", "joblib loky (batch_size='auto')",
                             lambda: JoblibRunner("loky"))))
    if not startup:
        rows.append(Planned(Case("joblib-loky-tuned", f"joblib loky (batch_size={chunk})",
                                 lambda: JoblibRunner("loky", batch_size=chunk))))
    rows.append(Planned(Case("joblib-threading", "joblib threading (n_jobs=-1)",
                             lambda: JoblibRunner("threading"))))
    rows.append(Planned(Case("mpire", "mpire map (default chunk_size)", MpireRunner)))
    if not startup:
        rows.append(Planned(Case("mpire-tuned", f"mpire map (chunk_size={chunk})",
                                 lambda: MpireRunner(chunk_size=chunk))))
    rows.append(Planned(Case("pebble", "pebble ProcessPool.map (chunksize=1)", PebbleRunner)))
    if not startup:
        rows.append(Planned(Case("pebble-tuned", f"pebble ProcessPool.map (chunksize={chunk})",
                                 lambda: PebbleRunner(chunksize=chunk))))
    return rows


def find_case(workload: Workload, size: int, case_id: str) -> Case:
    for planned in plan_cases(workload, size):
        if planned.case.id == case_id:
            return planned.case
    raise KeyError(f"no case {case_id!r} for workload {workload.name!r}")
