"""Cutting the input into chunks, and choosing how big they are.

``chunksize=N`` is taken as given. ``chunksize="auto"`` adapts to measured
task time:

* before anything is measured, chunks hold one item, so a slow function is
  never batched blindly (the first results arrive within milliseconds, and
  the auto-selector's probe often measured the function already);
* once chunks come back, a chunk holds enough items to take about 100x the
  backend's per-chunk overhead (so dispatch costs ~1% of the work);
* when the input's length is known, no chunk holds more than
  ``total / (4 x workers)`` items, which keeps several chunks per worker for
  balance, and chunks shrink towards the end (``remaining / (2 x workers)``,
  but not below ~1 ms of work) so no worker idles at the tail;
* for inputs of unknown length a ceiling keeps memory bounded.

A chunk that runs to the end of a list or tuple is a :class:`Tail` view of
it, not a copy: a run that takes its input in one chunk (serial ``map``)
then touches each item only to call the function on it.
"""

from __future__ import annotations

import itertools
import math
import threading
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any, Final, overload

from ._units import Chunk

__all__ = ["ChunkSizer", "Tail", "chunks"]

#: chunks per worker kept in play when the input's length is known
BALANCE: Final = 4
#: largest auto chunk when the input's length is unknown (bounded memory)
UNKNOWN_LENGTH_CEILING: Final = 10_000
#: shortest chunk duration worth aiming for, whatever the backend's overhead
MIN_TARGET_SECONDS: Final = 0.001


class ChunkSizer:
    """Decides the next chunk's size; learns from finished chunks."""

    def __init__(
        self,
        chunksize: int | str,
        *,
        workers: int,
        total: int | None,
        chunk_overhead: float,
        item_seconds: float | None = None,
    ) -> None:
        self.fixed = chunksize if isinstance(chunksize, int) else None
        self.workers = max(1, workers)
        self.total = total
        self.target_seconds = max(MIN_TARGET_SECONDS, 100 * chunk_overhead)
        self._lock = threading.Lock()
        self._item_seconds = item_seconds
        self._largest = 0
        #: hand out everything that is left as one chunk (see Run.batches)
        self.rest_at_once = False

    @property
    def item_seconds(self) -> float | None:
        """Measured seconds per item so far (None until a chunk returns)."""
        return self._item_seconds

    @property
    def largest(self) -> int:
        """The largest chunk handed out so far."""
        return self._largest

    def assume(self, item_seconds: float) -> None:
        """Take ``item_seconds`` as measured (the auto probe timed the items)."""
        with self._lock:
            self._item_seconds = item_seconds

    def observe(self, items: int, seconds: float) -> None:
        if items <= 0 or self.fixed is not None:
            return
        per_item = max(seconds, 0.0) / items
        with self._lock:
            if self._item_seconds is None:
                self._item_seconds = per_item
            else:  # weight by items so big chunks count more than small ones
                self._item_seconds = 0.7 * self._item_seconds + 0.3 * per_item

    def next_size(self, consumed: int) -> int:
        size = self.fixed if self.fixed is not None else self._auto_size(consumed)
        self._largest = max(self._largest, size)
        return size

    def _auto_size(self, consumed: int) -> int:
        if self.rest_at_once and self.total is not None:
            return max(1, self.total - consumed)
        if self._item_seconds is None:
            # Nothing measured yet: one item at a time, so a slow function is
            # never batched blindly; sizes adapt as soon as a chunk returns.
            return 1
        per_item = max(self._item_seconds, 1e-9)
        size = math.ceil(self.target_seconds / per_item)
        if self.total is None:
            return max(1, min(size, UNKNOWN_LENGTH_CEILING))
        # Balance: several chunks per worker over the whole input...
        size = min(size, math.ceil(self.total / (BALANCE * self.workers)))
        # ...and smaller ones towards the end, so the last chunks finish
        # together, but never so small that dispatch dominates.
        remaining = max(1, self.total - consumed)
        tail = math.ceil(remaining / (2 * self.workers))
        floor = math.ceil(MIN_TARGET_SECONDS / per_item)
        return max(1, min(size, max(tail, floor)))


class Tail(Sequence[Any]):
    """The items of a list or tuple from ``start`` to its end (``stop``: the
    length it had when the run began), without copying them.

    Its length is fixed, as a slice's would be: items the function appends to
    its own input while the run goes on are not run (nor would they be by any
    other mode). Pickles as a plain list of its items, so a process worker
    receives only them.
    """

    __slots__ = ("_length", "_source", "_start")

    def __init__(self, source: list[Any] | tuple[Any, ...], start: int,
                 stop: int | None = None) -> None:
        self._source = source
        self._start = start
        self._length = max(0, (len(source) if stop is None else stop) - start)

    def __len__(self) -> int:
        return self._length

    @overload
    def __getitem__(self, index: int) -> Any: ...

    @overload
    def __getitem__(self, index: slice) -> list[Any]: ...

    def __getitem__(self, index: int | slice) -> Any:
        if isinstance(index, slice):
            return list(self)[index]
        if index < 0:
            index += self._length
        if not 0 <= index < self._length:
            raise IndexError("Tail index out of range")
        return self._source[self._start + index]

    def __iter__(self) -> Iterator[Any]:
        return self.counted()[0]

    def counted(self) -> tuple[Iterator[Any], Callable[[], int]]:
        """Its items, and a function saying how many of them were taken so
        far (read from the source's iterator)."""
        inner = iter(self._source)
        inner.__setstate__(self._start)  # type: ignore[attr-defined]
        source, start = self._source, self._start
        items: Iterator[Any] = inner
        if not isinstance(source, tuple) or len(source) != start + self._length:
            # Bounded (3-4% of the cost of x * 2 on Python 3.11): a live list
            # iterator would run on into items appended meanwhile. A tuple
            # cannot grow: its own iterator stops where the tail does.
            items = itertools.islice(inner, self._length)
        return items, lambda: len(source) - inner.__length_hint__() - start  # type: ignore[attr-defined]

    def __reduce__(self) -> tuple[Any, ...]:
        return (list, (list(self),))

    def __repr__(self) -> str:
        return f"Tail({self._length} items from index {self._start})"


def chunks(
    source: Iterable[Any], sizer: ChunkSizer, *, first_index: int = 0, first_seq: int = 0
) -> Iterator[Chunk]:
    """Cut ``source`` lazily into chunks sized by ``sizer``.

    Items are numbered from ``first_index``: a list, tuple or range is read
    from that index on (it is sliced, not copied whole); any other iterable
    is read from where it stands, the items before it having been taken
    already (by the auto-selector's probe).
    """
    seq = first_seq
    consumed = first_index
    if isinstance(source, list | tuple | range):
        # The length the run started with: what the function appends to its
        # own input meanwhile is not part of the run.
        total = sizer.total if sizer.total is not None else len(source)
        while consumed < total:
            end = consumed + sizer.next_size(consumed)
            items: Sequence[Any]
            if end >= total and not isinstance(source, range):
                items = Tail(source, consumed, total)
            else:
                # A slice of a range is a range: it pickles in a few bytes
                # instead of one entry per item.
                items = source[consumed:end]
            yield Chunk.fresh(seq, consumed, items)
            consumed += len(items)
            seq += 1
        return
    iterator = iter(source)
    while True:
        items = list(itertools.islice(iterator, sizer.next_size(consumed)))
        if not items:
            return
        yield Chunk.fresh(seq, consumed, items)
        consumed += len(items)
        seq += 1
