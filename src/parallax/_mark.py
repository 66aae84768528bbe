"""A worker's *mark*: which item it runs, and since when.

Three floats ``[chunk token, item position, item start time]`` the worker
updates as it goes and its pool reads from another thread (or, for process
workers, from shared memory, so the mark outlives a dead worker). The pool
reads it to name the item a dead worker was running, to spot an item that
ran past its timeout, and writes the token to tell a worker to give up its
chunk.

Worker-light: a process worker imports this module.
"""

from __future__ import annotations

from ._units import SOMEWHERE

TYPE_CHECKING = False  # not typing's: workers do not import typing
if TYPE_CHECKING:
    from typing import Final

    #: a worker's mark: three floats in (possibly shared) memory
    Mark = memoryview[float]
else:
    Mark = memoryview

__all__ = [
    "ABANDONED",
    "IDLE",
    "MARK_POSITION",
    "MARK_SIZE",
    "MARK_STARTED",
    "MARK_TOKEN",
    "Mark",
    "new_mark",
    "running_item",
]

MARK_TOKEN, MARK_POSITION, MARK_STARTED = 0, 1, 2
MARK_SIZE: Final = 3

#: the position when no item runs (between chunks)
IDLE: Final = -1.0
#: the token a pool writes to make a worker stop its chunk after the current item
ABANDONED: Final = -1.0
#: the position while a worker runs fast items it does not mark one by one
MARK_SOMEWHERE: Final = float(SOMEWHERE)


def new_mark() -> Mark:
    """A mark for a worker that lives in this process."""
    mark = memoryview(bytearray(8 * MARK_SIZE)).cast("d")
    mark[MARK_POSITION] = IDLE
    return mark


def running_item(mark: Mark) -> tuple[int, float]:
    """``(position, started)`` of the item the mark says runs now.

    ``position`` is negative when no single item is marked (idle, or running
    unmarked fast items). The worker writes the start time before the
    position, so a position read here is never paired with the start time of
    the item before it; a position that changed while being read counts as
    none marked (the caller looks again soon).
    """
    position = mark[MARK_POSITION]
    started = mark[MARK_STARTED]
    if position < 0 or mark[MARK_POSITION] != position:
        return -1, started
    return int(position), started
