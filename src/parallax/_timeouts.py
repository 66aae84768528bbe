"""The per-item timeout, one idea for every engine.

An item that runs longer than ``timeout=`` fails with :class:`TaskTimeoutError`.
Engines differ only in what they can do about it, and say so in the message:

* a process worker is killed (``backends/_process.py``);
* a thread, or a Dask task, cannot be killed: its chunk is *abandoned*, the
  finished items kept (:func:`abandon`), the stuck item left to run out
  (``backends/_thread.py``, ``backends/_dask.py``);
* a coroutine is cancelled (``backends/_asyncio.py``);
* the caller's own thread cannot be interrupted: the item is flagged after it
  returns (:func:`flag_overruns`; serial mode, the auto-selector's probe).

Those that watch a running item read it off the worker's mark with
:func:`time_left`. Every one of them builds the error with
:func:`timeout_error`. Worker-light: a process worker imports this module.
"""

from __future__ import annotations

from ._errors import TaskTimeoutError, describe_item
from ._mark import ABANDONED, MARK_TOKEN, running_item
from ._units import Failure

TYPE_CHECKING = False  # not typing's: workers do not import typing
if TYPE_CHECKING:
    from typing import Any

    from ._mark import Mark
    from ._units import Chunk, ChunkResult

__all__ = ["ABANDONED_THREAD", "abandon", "flag_overruns", "time_left", "timeout_error"]

_NEVER = float("inf")

#: what becomes of an item whose thread is abandoned: the documented sentence,
#: then why it matters (the thread runs on, on a CPU and, with the GIL, slowing
#: every other thread of the process) and what to do about it
ABANDONED_THREAD = (
    "; the thread was abandoned (threads cannot be killed) and replaced. "
    "It runs on until the item returns, still using a CPU (and, with the GIL, "
    "slowing every other thread): for CPU-bound work that may not return, use "
    "mode=\"process\", whose stuck workers are killed"
)


def timeout_error(
    chunk: Chunk,
    offset: int,
    timeout: float,
    outcome: str,
    *,
    where: str = "",
    elapsed: float | None = None,
) -> TaskTimeoutError:
    """The error of ``chunk``'s item at ``offset``, which ran past ``timeout``.

    ``outcome`` says what became of the item, ``where`` where it ran (both
    read as part of one sentence, so they start with their own separator);
    ``elapsed`` is how long it ran, when it is known because it finished.
    """
    if elapsed is None:
        ran = f"ran past the {timeout:g} s timeout"
    else:
        ran = f"ran {elapsed:.3g} s, over the {timeout:g} s timeout"
    item = describe_item(chunk.items[offset])
    return TaskTimeoutError(f"item {chunk.index_of(offset)} ({item}) {ran}{where}{outcome}")


def time_left(mark: Mark, timeout: float, now: float) -> tuple[int, float]:
    """``(position, seconds)``: the item a worker's mark says runs, and how long
    it has left before ``timeout`` (zero or less: it ran past).

    ``position`` is negative, and the time left infinite, when no single item
    is marked as running.
    """
    position, started = running_item(mark)
    if position < 0:
        return position, _NEVER
    return position, started + timeout - now


def abandon(
    mark: Mark, values: list[Any], failures: dict[int, Failure], position: int
) -> tuple[list[Any], dict[int, Failure] | None]:
    """Give up on a chunk stuck at ``position``; what finished before it.

    The worker running on ``mark`` stops the chunk after the stuck item (it
    cannot be stopped during it). Returns a copy of the values and captured
    failures of the items before ``position``: the worker may still append to
    the lists it fills.
    """
    mark[MARK_TOKEN] = ABANDONED
    kept = {offset: failure for offset, failure in failures.items() if offset < position}
    return values[:position], kept or None


def flag_overruns(result: ChunkResult, timeout: float, why: str) -> None:
    """Turn items that ran past ``timeout`` into TaskTimeoutError, after the fact.

    For items that ran in a thread nothing could interrupt; ``why`` says so.
    Only timed items are checked (``result.item_ends``).
    """
    ends = result.item_ends
    if not ends:
        return
    previous = result.started
    for position, end in enumerate(ends):
        if end - previous > timeout:
            error = timeout_error(
                result.chunk, position, timeout, f" ({why}, so it ran to the end)",
                elapsed=end - previous,
            )
            result.values[position] = None
            if result.failures is None:
                result.failures = {}
            result.failures[position] = Failure(error, "")
        previous = end
