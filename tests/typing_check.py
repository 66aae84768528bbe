"""Checked by mypy --strict in CI: the public API keeps static types."""

from __future__ import annotations

from collections.abc import Sized
from concurrent.futures import Future
from typing import assert_type

import parallax


@parallax.parallel
def bare(x: int, y: str = "") -> float:
    return float(x)


@parallax.parallel(mode="process", workers=2)
def called(x: int) -> str:
    return str(x)


def join(x: int, y: str) -> str:
    return f"{x}{y}"


def check() -> None:
    assert_type(bare(1, "a"), float)
    assert_type(called(1), str)
    assert_type(bare.submit(1, y="b"), Future[float])
    assert_type(called.map([1, 2]), list[str])
    assert_type(parallax.map(len, ["a"]), list[int])
    with parallax.Executor("thread") as executor:
        assert_type(executor.submit(len, "abc"), Future[int])
    plan: parallax.Plan = parallax.plan(len, ["a"])
    assert_type(plan.mode, str)


async def check_keywords() -> None:
    # Every common keyword is a typed parameter: a wrong type is an error
    # (the ignores below would be unused, and so errors, if they were not).
    assert_type(
        parallax.map(len, ["a"], retries=2, retry_on=(ValueError, OSError), backoff=0.1,
                     max_tasks_per_worker=10, record_tasks=False),
        list[int],
    )
    assert_type(parallax.starmap(join, [(7, "a")], retries=1, retry_on=ZeroDivisionError),
                list[str])
    assert_type(await parallax.amap(len, ["a"], backoff=0.5, record_tasks=True), list[int])
    for length in parallax.imap(len, ["a"], max_tasks_per_worker=None, retries=0):
        assert_type(length, int)
    parallax.map(len, ["a"], retries="2")  # type: ignore[arg-type]
    parallax.map(len, ["a"], retry_on=ValueError())  # type: ignore[arg-type]
    parallax.map(len, ["a"], backoff="fast")  # type: ignore[arg-type]
    parallax.map(len, ["a"], record_tasks=None)  # type: ignore[arg-type]
    parallax.imap(len, ["a"], max_tasks_per_worker="10")  # type: ignore[arg-type]
    decorate = parallax.parallel(retries=3, retry_on=OSError, backoff=1.0,
                                 max_tasks_per_worker=5, record_tasks=False)
    assert_type(decorate(len), parallax.ParallelFunction[[Sized], int])
    parallax.parallel(retries="3")  # type: ignore[call-overload]
    # and so is each keyword of a decorated function's .map, .imap and .starmap
    assert_type(
        called.map([1], mode="thread", workers=2, chunksize=4, ordered=False, timeout=1.0,
                   errors="return", retries=2, retry_on=(ValueError, OSError), backoff=0.1,
                   max_tasks_per_worker=10, record_tasks=False),
        list[str],
    )
    for text in called.imap([1], retries=1, progress=True):
        assert_type(text, str)
    assert_type(bare.starmap([(1, "a")], initializer=print, initargs=("hi",)), list[float])
    called.map([1], retries="2")  # type: ignore[arg-type]
    called.map([1], errors="ignore")  # type: ignore[arg-type]
    called.imap([1], workers="2")  # type: ignore[arg-type]
    called.imap([1], retry_on=ValueError())  # type: ignore[arg-type]
    bare.starmap([(1, "a")], record_tasks=None)  # type: ignore[arg-type]
    bare.starmap([(1, "a")], max_tasks_per_worker="10")  # type: ignore[arg-type]
    # backend options still travel as keywords
    parallax.map(len, ["a"], mode="serial", check_pickle=True)
