"""Bad arguments fail at the call, before any work, saying what is valid."""

from __future__ import annotations

from typing import Any

import pytest

import parallax
from conftest import Backend, as_coroutine, child_pids
from helpers import double

calls: list[int] = []


def record(x: int) -> int:
    calls.append(x)
    return x


@pytest.fixture(autouse=True)
def _reset() -> None:
    calls.clear()


@pytest.mark.parametrize(
    ("keywords", "error", "message"),
    [
        ({"mode": "warp"}, ValueError, "valid modes are: auto, serial, thread, process"),
        ({"workers": 0}, ValueError, "workers must be a positive integer"),
        ({"workers": -2}, ValueError, "workers must be a positive integer"),
        ({"workers": 1.5}, ValueError, "workers must be a positive integer"),
        ({"chunksize": -1}, ValueError, 'chunksize must be a positive integer or "auto"'),
        ({"chunksize": 0}, ValueError, "chunksize"),
        ({"chunksize": "big"}, ValueError, "chunksize"),
        ({"errors": "ignore"}, ValueError, "errors must be one of 'raise', 'return', 'skip'"),
        ({"timeout": 0}, ValueError, "timeout must be a positive number"),
        ({"timeout": "1"}, ValueError, "timeout"),
        ({"ordered": "yes"}, TypeError, "ordered"),
        ({"initializer": 3}, TypeError, "initializer must be callable"),
        ({"initargs": [1]}, TypeError, "initargs must be a tuple"),
        ({"retries": -1}, ValueError, "retries"),
        ({"nonsense": 1}, TypeError, "unexpected keyword argument 'nonsense'"),
    ],
)
@pytest.mark.parametrize("api", ["map", "imap", "starmap"])
def test_bad_arguments_fail_before_any_work(
    api: str, keywords: dict[str, Any], error: type[Exception], message: str
) -> None:
    function = getattr(parallax, api)
    data = [(1,), (2,)] if api == "starmap" else [1, 2]
    with pytest.raises(error, match=message):
        function(record, data, **keywords)
    assert calls == []


def test_non_iterable_input() -> None:
    with pytest.raises(TypeError, match="iterable"):
        parallax.map(double, 42)  # type: ignore[arg-type]


def test_non_callable_function() -> None:
    with pytest.raises(TypeError, match="callable"):
        parallax.map(42, [1])  # type: ignore[arg-type]


def test_sync_function_in_asyncio_mode_names_the_fix() -> None:
    with pytest.raises(TypeError, match="async def"):
        parallax.map(record, [1, 2], mode="asyncio")
    assert calls == []


def test_executor_rejects_bad_arguments() -> None:
    with pytest.raises(ValueError, match="valid modes"):
        parallax.Executor("warp")
    with pytest.raises(ValueError, match="workers"):
        parallax.Executor("thread", workers=0)
    with pytest.raises(TypeError, match="'frobnicate'"):
        parallax.Executor("thread", frobnicate=True)
    with pytest.raises(ValueError, match="max_tasks_per_worker"):
        parallax.Executor("process", max_tasks_per_worker=0)


def test_option_for_another_backend_is_ignored() -> None:
    # check_pickle belongs to serial mode; thread mode ignores it.
    assert parallax.map(double, [1, 2], mode="thread", check_pickle=True) == [2, 4]
    with parallax.using("thread"):
        assert parallax.map(double, [1, 2], mode="serial", check_pickle=True) == [2, 4]


def test_register_backend_validates() -> None:
    with pytest.raises(ValueError, match="auto"):
        parallax.register_backend("auto", lambda **_: None)  # type: ignore[arg-type,return-value]
    with pytest.raises(TypeError, match="callable"):
        parallax.register_backend("x", 3)  # type: ignore[arg-type]


# -- values that used to slip through (issue #13.6) ---------------------------------------

NAN = float("nan")
INF = float("inf")


@pytest.mark.parametrize(
    ("keywords", "error", "message"),
    [
        ({"retries": 1, "backoff": NAN}, ValueError, "backoff must be a finite, non-negative"),
        ({"retries": 1, "backoff": INF}, ValueError, "backoff must be a finite"),
        ({"retries": 1, "backoff": -1}, ValueError, "backoff"),
        ({"retries": 1, "backoff": True}, ValueError, "backoff"),
        ({"progress": 1}, TypeError, "progress must be True, False or a callable, not 1"),
        ({"progress": 0}, TypeError, "progress must be True, False or a callable"),
        ({"progress": 1.0}, TypeError, "progress"),
        ({"mode": None}, ValueError, "unknown mode None; valid modes are: auto, serial"),
        ({"workers": True}, ValueError, "workers must be a positive integer"),
        ({"workers": False}, ValueError, "workers must be a positive integer"),
        ({"chunksize": True}, ValueError, "chunksize must be a positive integer"),
        ({"timeout": NAN}, ValueError, "timeout must be a positive number"),
        ({"timeout": INF}, ValueError, "timeout must be a positive number"),
        ({"timeout": -1}, ValueError, "timeout must be a positive number"),
        ({"timeout": True}, ValueError, "timeout"),
        ({"retries": True}, ValueError, "retries must be a non-negative integer"),
        ({"retries": 1.5}, ValueError, "retries"),
        ({"max_tasks_per_worker": True}, ValueError, "max_tasks_per_worker"),
        ({"max_tasks_per_worker": -1}, ValueError, "max_tasks_per_worker"),
        ({"record_tasks": 1}, TypeError, "record_tasks must be True or False"),
    ],
)
@pytest.mark.parametrize("api", ["map", "imap", "starmap", "parallel", "parallel.map"])
def test_nan_bool_and_lookalike_values_are_rejected(
    api: str, keywords: dict[str, Any], error: type[Exception], message: str
) -> None:
    data = [(1,), (2,)] if api == "starmap" else [1, 2]
    calls_of = {
        "parallel": lambda: parallax.parallel(**keywords)(record),
        "parallel.map": lambda: parallax.parallel(record).map(data, **keywords),
    }
    call = calls_of.get(api, lambda: getattr(parallax, api)(record, data, **keywords))
    with pytest.raises(error, match=message):
        call()
    assert calls == []


def test_parallel_of_none_is_a_type_error() -> None:
    with pytest.raises(TypeError, match="parallel takes the function to decorate"):
        parallax.parallel(None)  # type: ignore[call-overload]
    with pytest.raises(TypeError, match="not int"):
        parallax.parallel(3)  # type: ignore[call-overload]


def test_a_bad_idle_timeout_fails_the_call_before_any_work(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    for raw in ("-5", "0", "nan", "inf", "soon"):
        monkeypatch.setenv("PARALLAX_IDLE_TIMEOUT", raw)
        with pytest.raises(ValueError, match="PARALLAX_IDLE_TIMEOUT must be a positive number"):
            parallax.map(record, [1, 2], mode="thread")
        with pytest.raises(ValueError, match="PARALLAX_IDLE_TIMEOUT"):
            parallax.Executor("thread")
    assert calls == []
    monkeypatch.setenv("PARALLAX_IDLE_TIMEOUT", " 2.5 ")
    assert parallax.map(record, [1, 2], mode="thread") == [1, 2]


def test_executor_checks_its_per_call_arguments() -> None:
    with parallax.Executor("serial") as executor:
        with pytest.raises(TypeError, match="ordered must be True or False"):
            executor.imap(record, [1], ordered="yes")  # type: ignore[arg-type]
        with pytest.raises(ValueError, match="timeout must be a number of seconds or None"):
            executor.map(record, [1], timeout=float("nan"))
        with pytest.raises(ValueError, match="timeout"):
            executor.map(record, [1], timeout="1")  # type: ignore[arg-type]
    assert calls == []


# -- absurd worker counts (issue #13.2) ----------------------------------------------------


def test_an_absurd_worker_count_is_refused_before_any_work(backend: Backend) -> None:
    before = child_pids()
    if backend.mode == "serial":  # one worker, the caller: the count means nothing
        assert backend.map(record, [1, 2], workers=10**7) == [1, 2]
        return
    with pytest.raises(ValueError, match=rf"workers=10000000 is more than {backend.mode} mode "
                                         r"allows: at most \d+ \("):
        backend.map(record, [1, 2], workers=10**7)
    with pytest.raises(ValueError, match="at most"):
        backend.executor(workers=10**7)
    decorated = parallax.parallel(mode=backend.mode, workers=10**7, **backend.options)
    with pytest.raises(ValueError, match="at most"):
        decorated(backend.fn(record)).submit(1)
    assert calls == []
    assert child_pids() == before


def test_the_bound_is_per_kind_of_worker() -> None:
    cpus = parallax.backends.usable_cpus()
    with pytest.raises(ValueError, match=f"32 worker processes per usable CPU, {cpus} here"):
        parallax.map(record, [1], mode="process", workers=32 * cpus + 1)
    with pytest.raises(ValueError, match=r"at most 4096 \(threads in one pool"):
        parallax.map(record, [1], mode="thread", workers=4097)
    with pytest.raises(ValueError, match="at most 100000"):
        parallax.map(as_coroutine(record), [1], mode="asyncio", workers=100_001)
    assert calls == []
    # At the bound is fine: a thread pool starts its threads as work arrives.
    assert parallax.map(record, [1, 2], mode="thread", workers=4096) == [1, 2]


def test_auto_refuses_a_count_its_costliest_pick_cannot_start() -> None:
    with pytest.raises(ValueError, match=r"more than mode='auto' may start.*mode='thread'"):
        parallax.map(record, [1, 2], workers=10**7)
    with pytest.raises(ValueError, match="at most"):
        parallax.Executor(workers=10**7)
    assert calls == []  # not even the probe ran


# -- "did you mean" ------------------------------------------------------------------------

MISSPELLED = [
    ("chunk_size", "chunksize"),
    ("worker", "workers"),
    ("max_tasks", "max_tasks_per_worker"),
    ("retry", "retries"),
    ("Ordered", "ordered"),
    ("check_pikle", "check_pickle"),
    ("adress", "address"),
]


@pytest.mark.parametrize(("wrong", "right"), MISSPELLED)
def test_a_misspelled_keyword_names_the_closest_valid_one(
    backend: Backend, wrong: str, right: str
) -> None:
    with pytest.raises(TypeError) as raised:
        backend.map(record, [1, 2], **{wrong: 3})
    message = str(raised.value)
    assert f"unexpected keyword argument {wrong!r} (did you mean " in message
    assert repr(right) in message.split("the keywords are", maxsplit=1)[0]
    # every valid keyword and every backend option is listed
    assert "the keywords are: mode, workers, chunksize" in message
    assert "max_tasks_per_worker" in message and "serial: check_pickle" in message
    assert calls == []


@pytest.mark.parametrize(
    "door",
    ["map", "imap", "starmap", "amap", "using", "Executor", "parallel", "parallel.map"],
)
def test_every_door_suggests_the_keyword(backend: Backend, door: str) -> None:
    options = dict(backend.options)

    def call() -> object:
        if door == "amap":
            import asyncio

            return asyncio.run(parallax.amap(record, [1], mode=backend.mode, chunk_size=3,
                                             **options))
        if door == "using":
            with parallax.using(backend.mode, chunk_size=3, **options):
                return None
        if door == "Executor":
            return parallax.Executor(backend.mode, chunk_size=3, **options)
        if door == "parallel":
            return parallax.parallel(mode=backend.mode, chunk_size=3, **options)
        if door == "parallel.map":
            return parallax.parallel(record).map([1], mode=backend.mode, chunk_size=3, **options)
        data = [(1,)] if door == "starmap" else [1]
        return getattr(parallax, door)(record, data, mode=backend.mode, chunk_size=3, **options)

    with pytest.raises(TypeError, match=r"'chunk_size' \(did you mean 'chunksize'\?\)"):
        call()
    assert calls == []


def test_the_executor_lists_its_own_keywords() -> None:
    with pytest.raises(TypeError) as raised:
        parallax.Executor("thread", retries=2)
    message = str(raised.value)
    assert "the keywords are: mode, workers, chunksize, timeout, initializer" in message
    assert "errors" not in message.split("backend options", maxsplit=1)[0]


def test_using_does_not_offer_mode_as_a_keyword() -> None:
    with pytest.raises(TypeError) as raised, parallax.using("serial", workrs=2):
        pass
    assert "(did you mean 'workers'?)" in str(raised.value)
    assert "the keywords are: workers," in str(raised.value)


@pytest.mark.parametrize(
    ("wrong", "right"),
    [("proces", "process"), ("threads", "thread"), ("Serial", "serial"), ("asyncoi", "asyncio"),
     ("free_threaded", "free-threaded"), ("dsk", "dask")],
)
@pytest.mark.parametrize("door", ["map", "using", "Executor", "parallel"])
def test_an_unknown_mode_names_the_closest(wrong: str, right: str, door: str) -> None:
    def call() -> object:
        if door == "using":
            with parallax.using(wrong):
                return None
        if door == "Executor":
            return parallax.Executor(wrong)
        if door == "parallel":
            return parallax.parallel(mode=wrong)
        return parallax.map(record, [1], mode=wrong)

    with pytest.raises(ValueError, match=rf"unknown mode '{wrong}' \(did you mean '{right}'"
                                         r"( or '[a-z-]+')?\?\); valid modes are: auto, serial"):
        call()
    assert calls == []


def test_nothing_close_suggests_nothing() -> None:
    with pytest.raises(TypeError) as raised:
        parallax.map(record, [1], zzzz=1)
    assert "did you mean" not in str(raised.value)
    with pytest.raises(ValueError, match="unknown mode") as wrong_mode:
        parallax.map(record, [1], mode="gpu")
    assert "did you mean" not in str(wrong_mode.value)
