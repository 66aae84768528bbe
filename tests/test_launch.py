"""The launch path's own decisions (``parallax._launch``).

Which backend a call gets (a private one or a lease on a shared pool), that
the auto probe's items become the run's first results and run once, that
checks raise before any work and each keyword is checked once, and that a
backend is given back whatever happens.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from typing import Any

import pytest

import parallax
from helpers import Boom, double, fail_on
from parallax import _auto, _pools
from parallax._config import check_progress
from parallax._launch import CallOptions, launch, open_engine, submit_call
from parallax._units import Chunk, Job
from parallax.backends import Backend, WorkerSetup

calls: list[Any] = []
_calls_lock = threading.Lock()


def record(x: int) -> int:
    with _calls_lock:
        calls.append(x)
    return x * 2


def fails_on_two(x: int) -> int:
    if x == 2:
        raise ValueError("two")
    return x


def setup_nothing() -> None:
    pass


@pytest.fixture(autouse=True)
def _reset() -> None:
    calls.clear()


def leases() -> dict[str, int]:
    """Leases held on each shared pool, by mode."""
    return {pooled.backend.name: pooled.leases for pooled in _pools._pools.values()}


class CountingSink:
    """A progress callable that counts how often it is compared (each check compares it)."""

    def __init__(self) -> None:
        self.comparisons = 0

    def __call__(self, update: parallax.ProgressUpdate) -> None:
        pass

    def __eq__(self, other: object) -> bool:
        self.comparisons += 1
        return self is other

    __hash__ = object.__hash__


def assert_shut_down(backend: Backend) -> None:
    with pytest.raises(RuntimeError, match="after shutdown"):
        backend.submit(Job(double, lambda result: None), Chunk.fresh(0, 0, [1]))


def comparisons_per_check() -> int:
    sink = CountingSink()
    check_progress(sink)
    assert sink.comparisons > 0  # else the tests below prove nothing
    return sink.comparisons


# -- which backend ---------------------------------------------------------------------------


def test_a_plain_call_leases_a_shared_pool_and_gives_it_back() -> None:
    launched = launch(record, [1, 2, 3], CallOptions.checked(mode="thread"))
    assert not launched.engine.owned
    assert leases() == {"thread": 1}  # held while the run is consumed
    assert launched.collect() == [2, 4, 6]
    assert leases() == {"thread": 0}  # given back, and the pool kept warm
    assert not launched.engine.backend.broken


@pytest.mark.parametrize(
    "keywords",
    [{"initializer": setup_nothing}, {"max_tasks_per_worker": 5}],
    ids=["initializer", "max_tasks_per_worker"],
)
def test_worker_setup_gets_a_private_backend(keywords: dict[str, Any]) -> None:
    launched = launch(record, [1, 2, 3], CallOptions.checked(mode="serial", **keywords))
    assert launched.engine.owned
    assert leases() == {}  # no shared pool was touched
    assert launched.collect() == [2, 4, 6]
    assert_shut_down(launched.engine.backend)  # it ended with the call


def test_amap_on_the_callers_loop_gets_a_private_backend() -> None:
    async def twice(x: int) -> int:
        return 2 * x

    async def main() -> list[int]:
        return await parallax.amap(twice, [1, 2, 3], mode="asyncio")

    assert asyncio.run(main()) == [2, 4, 6]
    assert leases() == {}  # a pool bound to one loop is never shared


def test_an_executor_owns_its_backend() -> None:
    with parallax.Executor("thread", workers=2) as executor:
        assert list(executor.map(double, [1, 2])) == [2, 4]
        assert leases() == {}
    assert executor.stats.reason == "mode='thread' requested"
    assert_shut_down(executor._backend)


def test_an_auto_executor_decides_by_machine_without_probing() -> None:
    with parallax.Executor("auto", workers=1) as executor:
        assert executor.mode in ("process", "free-threaded")
        assert list(executor.map(double, [1, 2])) == [2, 4]
    assert "nothing measured yet" in executor.stats.reason
    assert leases() == {}


def test_an_engine_gives_its_lease_back_once() -> None:
    engine = open_engine("thread", "test", workers=2, options={})
    other = open_engine("thread", "test", workers=2, options={})
    assert other.backend is engine.backend and leases() == {"thread": 2}
    engine.close()
    engine.close()
    assert leases() == {"thread": 1}
    other.close()
    assert leases() == {"thread": 0}


def test_an_owned_engine_shuts_its_backend_down() -> None:
    engine = open_engine("thread", "test", workers=1, options={}, setup=WorkerSetup())
    assert engine.owned and leases() == {}
    engine.close()
    assert_shut_down(engine.backend)


def test_submit_returns_its_lease_at_once_and_still_completes() -> None:
    future = submit_call(double, (21,), {}, CallOptions.checked(mode="thread"), None)
    assert leases() == {"thread": 0}
    assert future.result(timeout=30) == 42


# -- the auto probe ------------------------------------------------------------------------


def test_only_the_probed_items_run_before_the_launch_returns(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # A first item that seems to wait (its thread kept off the GIL by another
    # thread of this busy test process, say) would have the rest started
    # while it runs, by design (_auto._FirstItemWatch, tested in test_auto):
    # not watched here, so this test's promise is the probe's alone.
    monkeypatch.setattr(_auto, "WATCH_AFTER", 3600.0)
    data = list(range(100))
    launched = launch(record, data, CallOptions.checked(mode="auto"))
    probed = list(calls)
    assert probed and probed == data[: len(probed)]  # the probe ran the first items
    if launched.engine.backend.name == "serial":  # serial runs the rest as it is consumed
        assert len(probed) < len(data)
    assert launched.collect() == [2 * x for x in data]
    assert sorted(calls) == data  # the probed items were not run again


def test_a_generator_input_goes_on_after_the_probed_items() -> None:
    read: list[int] = []

    def numbers() -> Iterator[int]:
        for number in range(50):
            read.append(number)
            yield number

    # The probe's items come first, then the rest from the same iterator:
    # none lost, none repeated, the input read once.
    assert parallax.map(double, numbers()) == [2 * x for x in range(50)]
    assert read == list(range(50))


def test_a_probed_failure_keeps_its_place() -> None:
    results = parallax.map(fails_on_two, range(6), errors="return")
    assert results[:2] == [0, 1] and results[3:] == [3, 4, 5]
    assert isinstance(results[2], ValueError) and str(results[2]) == "two"


# -- checks --------------------------------------------------------------------------------


def test_bad_input_raises_before_a_backend_is_opened() -> None:
    with pytest.raises(TypeError, match="iterable"):
        launch(record, 42, CallOptions.checked(mode="thread"))  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="callable"):
        launch(42, [1], CallOptions.checked(mode="thread"))  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="async def"):
        launch(record, [1], CallOptions.checked(mode="asyncio"))
    assert leases() == {} and calls == []


def test_a_failure_while_building_the_run_gives_the_backend_back() -> None:
    lock = threading.Lock()

    def holds_a_lock(x: int) -> int:  # a lock cannot be pickled for a process
        with lock:
            return x

    with pytest.raises(parallax.SerializationError):
        parallax.map(holds_a_lock, [1, 2], mode="process")
    assert leases() == {"process": 0}


def test_call_keywords_are_checked_once() -> None:
    once = comparisons_per_check()
    sink = CountingSink()
    assert parallax.map(double, [1, 2], mode="serial", progress=sink) == [2, 4]
    assert sink.comparisons == once


def test_decorator_defaults_are_checked_once_at_decoration() -> None:
    once = comparisons_per_check()
    sink = CountingSink()
    decorated = parallax.parallel(mode="serial", progress=sink)(double)
    assert sink.comparisons == once
    assert decorated.map([1, 2]) == [2, 4]
    assert decorated.map([3]) == [6]
    assert sink.comparisons == once  # the calls did not check the defaults again


def test_options_on_top_of_checked_ones_keep_the_rest() -> None:
    base = CallOptions.checked(chunksize=4, check_pickle=True, retry_on=KeyError)
    assert base.retry_on == (KeyError,)  # one type becomes a tuple
    options = CallOptions.checked(base, workers=2, timeout=5)
    assert (options.chunksize, options.workers, options.timeout) == (4, 2, 5)
    assert options.backend == {"check_pickle": True}
    with pytest.raises(ValueError, match="workers"):
        CallOptions.checked(base, workers=0)
    with pytest.raises(TypeError, match="'nonsense'"):
        CallOptions.checked(base, nonsense=1)


def test_every_call_keyword_has_its_check_and_using_knows_it() -> None:
    from parallax._config import COMMON_KEYWORDS
    from parallax._launch import _CHECKS, _KEYWORDS

    assert {name for name, _ in _CHECKS} == _KEYWORDS
    assert _KEYWORDS - {"mode"} == COMMON_KEYWORDS


# -- plan().chunksize (issue #12) ------------------------------------------------------------


def test_plan_chunksize_is_the_int_its_reason_names(monkeypatch: pytest.MonkeyPatch) -> None:
    from parallax import _launch
    from parallax._auto import Facts, Probe

    cpu_bound = Facts(probed=1, item_wall=0.012, item_cpu=0.0115, total=400, cpus=2)
    monkeypatch.setattr(_launch, "probe", lambda *args, **kwargs: Probe(cpu_bound))
    plan = parallax.plan(double, range(400))
    assert plan.mode == "process"
    assert isinstance(plan.chunksize, int)
    assert plan.reason.endswith(f"chunks of {plan.chunksize}")


def test_plan_chunksize_is_what_the_run_uses() -> None:
    async def coroutine(x: int) -> int:
        return x

    plan = parallax.plan(coroutine, range(50))
    with parallax.monitor() as monitor:
        parallax.map(coroutine, range(50))
    assert plan.mode == monitor.runs[0].mode == "asyncio"
    assert plan.chunksize == monitor.runs[0].chunksize
    for fn in (double, lambda x: x + 1):
        assert isinstance(parallax.plan(fn, range(100)).chunksize, int)


# -- @parallel(initializer=...).submit (issue #12) -------------------------------------------

#: what the initializer set, in the worker's copy of this module
worker_state: dict[str, int] = {}


def remember_pid() -> None:
    import os

    worker_state["initialized in"] = os.getpid()


def initialized_here(_: int) -> bool:
    import os

    return worker_state.get("initialized in") == os.getpid()


def pid_of(_: int) -> int:
    import os

    return os.getpid()


@pytest.mark.parametrize("mode", ["thread", "process"])
def test_submit_honours_the_decorators_initializer(mode: str) -> None:
    worker_state.clear()
    decorated = parallax.parallel(mode=mode, workers=1, initializer=remember_pid)(
        initialized_here)
    assert decorated.submit(1).result(timeout=60) is True
    assert decorated.submit(2).result(timeout=60) is True
    assert leases() == {mode: 0}  # a shared pool of its own, its lease given back


def test_submit_honours_max_tasks_per_worker() -> None:
    decorated = parallax.parallel(mode="process", workers=1, max_tasks_per_worker=1)(pid_of)
    pids = [decorated.submit(number).result(timeout=60) for number in range(3)]
    assert len(set(pids)) == 3  # a fresh worker for each call


def test_submit_pools_with_and_without_an_initializer_are_apart() -> None:
    plain = parallax.parallel(mode="thread", workers=1)(pid_of)
    set_up = parallax.parallel(mode="thread", workers=1, initializer=setup_nothing)(pid_of)
    plain.submit(1).result(timeout=60)
    set_up.submit(1).result(timeout=60)
    set_up.submit(2).result(timeout=60)
    assert len(_pools._pools) == 2


# -- tiny work: what a call with every keyword at its default skips (issue #17) ----------------


def test_the_signature_defaults_skipping_the_checks_are_the_api_signatures() -> None:
    import inspect

    from parallax._launch import _SIGNATURE

    for function in (parallax.map, parallax.imap, parallax.starmap, parallax.amap):
        defaults = {name: parameter.default
                    for name, parameter in inspect.signature(function).parameters.items()
                    if parameter.kind is inspect.Parameter.KEYWORD_ONLY}
        assert defaults == _SIGNATURE, function.__name__


def test_a_call_at_every_default_gets_the_options_the_checks_would_make() -> None:
    from parallax._launch import _SIGNATURE, _SIGNATURE_DEFAULTS

    arguments = {"fn": double, "iterable": [1], "options": {}, **_SIGNATURE}
    assert CallOptions.from_call(arguments) is _SIGNATURE_DEFAULTS
    assert CallOptions.checked(**_SIGNATURE) == _SIGNATURE_DEFAULTS
    # Equal values of the caller's own objects count as the defaults too.
    assert CallOptions.from_call({**arguments, "backoff": float("0"), "retry_on": (Exception,),
                                  "mode": "".join(["au", "to"])}) is _SIGNATURE_DEFAULTS


@pytest.mark.parametrize("changed", [
    {"ordered": 1}, {"retries": False}, {"progress": 0}, {"backoff": 0},
    {"retry_on": (ValueError,)}, {"initargs": (1,)}, {"chunksize": 4}, {"mode": "serial"},
])
def test_any_keyword_off_its_default_is_checked(changed: dict[str, Any]) -> None:
    from parallax._launch import _SIGNATURE, _SIGNATURE_DEFAULTS

    arguments = {"fn": double, "iterable": [1], "options": {}, **_SIGNATURE, **changed}
    try:
        options = CallOptions.from_call(arguments)
    except (TypeError, ValueError):
        return  # refused by its check, as it should be if it is not a valid value
    assert options is not _SIGNATURE_DEFAULTS
    assert options == CallOptions.checked(**{**_SIGNATURE, **changed})


def test_a_backend_option_is_checked_even_with_every_keyword_at_its_default() -> None:
    with pytest.raises(TypeError, match="'nonsense'"):
        parallax.map(double, [1, 2], nonsense=1)


def absorbed(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Counts the chunk results the run driver merges (``Run._absorb``)."""
    from parallax._run import Run

    merged: list[int] = []
    absorb = Run._absorb

    def counting(self: Run, state: Any, result: Any) -> None:
        merged.append(len(result.values))
        absorb(self, state, result)

    monkeypatch.setattr(Run, "_absorb", counting)
    return merged


@pytest.mark.parametrize("data", [list(range(3000)), tuple(range(3000)), range(3000)])
def test_tiny_auto_work_is_collected_at_once_with_the_drivers_records(
    monkeypatch: pytest.MonkeyPatch, data: Any,
) -> None:
    from parallax._units import PROBE_WORKER

    merged = absorbed(monkeypatch)
    with parallax.monitor() as seen:
        assert parallax.map(double, data) == [x * 2 for x in data]
    assert merged == []  # the driver did not run
    (stats,) = seen.runs
    assert (stats.mode, stats.tasks, stats.failed) == ("serial", 3000, 0)
    chunks = stats._chunks
    assert [record.worker for record in chunks] == [PROBE_WORKER, "the caller's thread"]
    assert chunks[1].start == chunks[0].done and chunks[0].done + chunks[1].done == 3000
    assert stats.chunksize == f"auto (up to {chunks[1].done})"


def test_tiny_auto_work_failing_after_the_probe_raises_through_the_driver(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    merged = absorbed(monkeypatch)
    with parallax.monitor() as seen, pytest.raises(Boom, match="bad item 2500") as raised:
        parallax.map(fail_on({2500, 2700}), list(range(3000)))
    assert "item 2500" in " ".join(raised.value.__notes__)
    assert merged and merged[-1] < 3000  # the driver took over: the rest failed
    (stats,) = seen.runs
    assert stats.failed == 1


@pytest.mark.parametrize("keywords", [{"ordered": False}, {"errors": "return"},
                                      {"progress": lambda update: None}, {"retries": 1}])
def test_other_tiny_auto_calls_go_through_the_driver(
    monkeypatch: pytest.MonkeyPatch, keywords: dict[str, Any],
) -> None:
    merged = absorbed(monkeypatch)
    assert sorted(parallax.map(double, list(range(3000)), **keywords)) == [
        x * 2 for x in range(3000)]
    assert merged
