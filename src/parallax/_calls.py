"""Call adapters: a user's function shaped as the one-argument callable a job runs.

A job calls ``fn(item)`` for every item. These small callables turn the
other shapes into that one: ``fn(*args)`` for ``starmap`` (:class:`StarCall`,
:class:`AsyncStarCall`), ``fn(*args, **kwargs)`` ignoring the item for
``submit`` (:class:`BoundCall`), a coroutine function outside asyncio mode
(:class:`RunCoroutine`), and the ``check_pickle`` round trip
(:class:`CheckedCall`, :class:`AsyncCheckedCall`).

Process workers unpickle these by reference (``parallax._calls.StarCall``),
so this module is worker-light: no ``typing`` or ``dataclasses`` at run time,
and ``asyncio`` only when a coroutine runs.
"""

from __future__ import annotations

import threading

from ._serialize import round_trip

TYPE_CHECKING = False  # not typing's: process workers import this module
if TYPE_CHECKING:
    from collections.abc import Callable, Coroutine
    from typing import Any

__all__ = [
    "AsyncCheckedCall", "AsyncStarCall", "BoundCall", "CheckedCall", "RunCoroutine", "StarCall",
]


class StarCall:
    """``fn(*args)`` as a one-argument callable, for ``starmap``; pickles by value."""

    __slots__ = ("fn",)

    def __init__(self, fn: Callable[..., Any]) -> None:
        self.fn = fn

    def __call__(self, args: Any) -> Any:
        return self.fn(*args)

    def __reduce__(self) -> tuple[Any, ...]:
        return (StarCall, (self.fn,))


class AsyncStarCall:
    """:class:`StarCall` for a coroutine function: returns the coroutine to await."""

    __slots__ = ("fn",)

    def __init__(self, fn: Callable[..., Coroutine[Any, Any, Any]]) -> None:
        self.fn = fn

    def __call__(self, args: Any) -> Coroutine[Any, Any, Any]:
        return self.fn(*args)

    def __reduce__(self) -> tuple[Any, ...]:
        return (AsyncStarCall, (self.fn,))


class BoundCall:
    """``fn(*args, **kwargs)`` ignoring its item, for ``submit``."""

    __slots__ = ("args", "fn", "kwargs")

    def __init__(self, fn: Callable[..., Any], args: tuple[Any, ...] = (),
                 kwargs: dict[str, Any] | None = None) -> None:
        self.fn = fn
        self.args = args
        self.kwargs = kwargs or {}

    def __call__(self, _item: Any) -> Any:
        return self.fn(*self.args, **self.kwargs)

    def __reduce__(self) -> tuple[Any, ...]:
        return (BoundCall, (self.fn, self.args, self.kwargs))

    def release(self) -> None:
        """Let go of the function and its arguments once the call's future is
        settled: a worker may keep this object until its next task
        (bpo-16284). Calling it afterwards returns None."""
        self.fn = _nothing
        self.args = ()
        self.kwargs = {}


def _nothing() -> None:
    """What a released :class:`BoundCall` calls."""


class RunCoroutine:
    """A coroutine function as a plain one: each call runs it to completion.

    Lets ``async def`` functions run in serial, thread and process mode (tests
    swapping modes keep working); each item gets a fresh event loop.
    """

    __slots__ = ("fn",)

    def __init__(self, fn: Callable[[Any], Coroutine[Any, Any, Any]]) -> None:
        self.fn = fn

    def __call__(self, item: Any) -> Any:
        import asyncio  # only coroutine functions need it; keeps the first call light

        try:
            asyncio.get_running_loop()
        except RuntimeError:
            return asyncio.run(self.fn(item))
        # Called from inside a running loop (serial mode in async code): the
        # loop's thread cannot block on itself, so a helper thread runs it.
        outcome: list[Any] = []

        def run() -> None:
            try:
                outcome.append((True, asyncio.run(self.fn(item))))
            except BaseException as exc:
                outcome.append((False, exc))

        helper = threading.Thread(target=run, name="parallax-coroutine")
        helper.start()
        helper.join()
        ok, value = outcome[0]
        if ok:
            return value
        raise value

    def __reduce__(self) -> tuple[Any, ...]:
        return (RunCoroutine, (self.fn,))


class CheckedCall:
    """Round-trips each argument and result through pickling around ``fn``
    (serial mode's ``check_pickle=True``, and every mode's under the pytest
    plugin's ``--parallax-check-pickle``)."""

    __slots__ = ("fn",)

    def __init__(self, fn: Any) -> None:
        self.fn = fn

    def __call__(self, item: Any) -> Any:
        return round_trip(self.fn(round_trip(item, "argument")), "result")

    def __reduce__(self) -> tuple[Any, ...]:
        return (CheckedCall, (self.fn,))


class AsyncCheckedCall(CheckedCall):
    """:class:`CheckedCall` around a coroutine function (asyncio mode): the
    result is checked once awaited."""

    __slots__ = ()

    async def __call__(self, item: Any) -> Any:
        return round_trip(await self.fn(round_trip(item, "argument")), "result")

    def __reduce__(self) -> tuple[Any, ...]:
        return (AsyncCheckedCall, (self.fn,))
