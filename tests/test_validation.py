"""Bad arguments fail at the call, before any work, saying what is valid."""

from __future__ import annotations

from typing import Any

import pytest

import parallax
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
