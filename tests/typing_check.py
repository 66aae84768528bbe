"""Checked by mypy --strict in CI: the public API keeps static types."""

from __future__ import annotations

from concurrent.futures import Future
from typing import assert_type

import parallax


@parallax.parallel
def bare(x: int, y: str = "") -> float:
    return float(x)


@parallax.parallel(mode="process", workers=2)
def called(x: int) -> str:
    return str(x)


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
