"""The units of work a run is made of, shared by every engine.

A run cuts its input into :class:`Chunk` objects of one :class:`Job`; a worker
hands back a :class:`ChunkResult` per chunk, holding each item's value or its
captured :class:`Failure`. Worker-light: a process worker imports this module,
so no ``typing`` or ``dataclasses`` at run time.
"""

from __future__ import annotations

import itertools

from ._errors import WorkerTraceback, describe_item, format_worker_traceback

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable, Sequence
    from typing import Any, Final

__all__ = [
    "EVERY_ITEM",
    "PROBE_WORKER",
    "SOMEWHERE",
    "Chunk",
    "ChunkRecord",
    "ChunkResult",
    "Failure",
    "Job",
    "Unplaced",
]


class Unplaced(int):
    """Where an interruption struck when it is not one item: see the two below.

    An ``int`` below zero, so it never reads as a position: a position read
    back from a worker's mark (``_mark.py``, where ``SOMEWHERE`` is stored as
    a number) compares equal to it, and :class:`ChunkResult` turns such a
    number back into the named constant.
    """

    __slots__ = ()

    def __repr__(self) -> str:
        return _UNPLACED_NAMES[self]

    def __reduce__(self) -> tuple[Any, ...]:
        return (_unplaced, (int(self),))

    @classmethod
    def named(cls, value: int) -> Unplaced:
        """The constant for ``value``.

        Raises:
            ValueError: ``value`` is neither EVERY_ITEM nor SOMEWHERE.
        """
        try:
            return _UNPLACED[value]
        except KeyError:
            raise ValueError(f"{value} is no item position, nor EVERY_ITEM or SOMEWHERE") from None


#: every undone item of the chunk fails with the interruption (the pool
#: cannot run anything)
EVERY_ITEM: Final = Unplaced(-1)
#: the worker died somewhere in a run of fast items it did not mark one by
#: one: the run re-runs each of them alone to find the culprit
SOMEWHERE: Final = Unplaced(-2)

_UNPLACED: Final = {-1: EVERY_ITEM, -2: SOMEWHERE}
_UNPLACED_NAMES: Final = {EVERY_ITEM: "EVERY_ITEM", SOMEWHERE: "SOMEWHERE"}


def _unplaced(value: int) -> Unplaced:
    return Unplaced.named(value)


_job_ids = itertools.count(1)

class Chunk:
    """Consecutive items of a run, sent to one worker at once.

    ``seq`` orders chunks within a run; ``start`` is the input index of the
    chunk's first item. A chunk re-run after a crash keeps its ``seq`` and
    carries only some ``positions`` of the original chunk. ``submitted`` is
    the ``perf_counter()`` when the run handed the chunk to its backend.
    """

    __slots__ = ("items", "positions", "seq", "start", "submitted")

    def __init__(self, seq: int, start: int, items: Sequence[Any], positions: Sequence[int],
                 submitted: float = 0.0) -> None:
        self.seq = seq
        self.start = start
        self.items = items
        self.positions = positions
        self.submitted = submitted

    def __repr__(self) -> str:
        return f"Chunk(seq={self.seq}, start={self.start}, {len(self.items)} items)"

    @classmethod
    def fresh(cls, seq: int, start: int, items: Sequence[Any]) -> Chunk:
        return cls(seq, start, items, range(len(items)))

    def index_of(self, offset: int) -> int:
        """The input index of this chunk's item at ``offset``."""
        return self.start + self.positions[offset]


class Failure:
    """An exception captured in a worker, with its traceback as text."""

    __slots__ = ("exception", "traceback")

    def __init__(self, exception: BaseException, traceback: str) -> None:
        self.exception = exception
        self.traceback = traceback

    def __repr__(self) -> str:
        return f"Failure({self.exception!r})"

    @classmethod
    def capture(cls, exc: BaseException) -> Failure:
        return cls(exc, format_worker_traceback(exc))

    def to_exception(self, index: int | None, item: Any, worker: str) -> BaseException:
        """The exception as the caller sees it: same type, worker traceback as cause."""
        exc = self.exception
        if self.traceback and not isinstance(exc.__cause__, WorkerTraceback):
            exc.__cause__ = WorkerTraceback(self.traceback)
        where = f" in {worker}" if worker else ""
        if index is not None:
            note = f"parallax: raised by item {index} ({describe_item(item)}){where}"
        else:
            note = f"parallax: raised{where}"
        notes = getattr(exc, "__notes__", ())
        if note not in notes:
            exc.add_note(note)
        return exc


class ChunkResult:
    """What a worker reports for a chunk.

    ``values`` holds results for the chunk's first ``len(values)`` items, with
    ``None`` where ``failures`` holds the exception instead (``failures`` has
    no key past them). A chunk cut short by a dead or stuck worker has
    ``interruption`` set; ``interrupted_at`` says which items it strikes:

    * a position (``>= 0``): that item fails with it; the items neither in
      ``values`` nor interrupted produced no outcome and must run again;
    * :data:`EVERY_ITEM`: every item not in ``values`` fails with it (nothing
      of the chunk can run);
    * :data:`SOMEWHERE`: one unknown item not in ``values`` caused it; each
      of them must run again alone.

    ``item_starts`` holds per-item start times, for engines that run a
    chunk's items concurrently.
    """

    __slots__ = (
        "chunk",
        "cpu",
        "failures",
        "finished",
        "interrupted_at",
        "interruption",
        "item_ends",
        "item_starts",
        "started",
        "values",
        "worker",
    )

    def __init__(
        self,
        chunk: Chunk,
        values: list[Any],
        failures: dict[int, Failure] | None = None,
        worker: str = "",
        started: float = 0.0,
        finished: float = 0.0,
        cpu: float = 0.0,
        item_ends: list[float] | None = None,
        interruption: BaseException | None = None,
        interrupted_at: int | Unplaced = EVERY_ITEM,
        item_starts: list[float] | None = None,
    ) -> None:
        self.chunk = chunk
        self.values = values
        self.failures = failures
        self.worker = worker
        self.started = started
        self.finished = finished
        self.cpu = cpu
        self.item_ends = item_ends
        self.interruption = interruption
        #: a position, or an Unplaced constant (a number read off a mark is named)
        self.interrupted_at: int | Unplaced = (
            interrupted_at
            if type(interrupted_at) is not int or interrupted_at >= 0
            else Unplaced.named(interrupted_at)
        )
        self.item_starts = item_starts

    def __repr__(self) -> str:
        return (f"ChunkResult({self.chunk!r}, {len(self.values)} values, "
                f"failures={self.failures!r}, interruption={self.interruption!r})")

    @property
    def complete(self) -> bool:
        return self.interruption is None and len(self.values) == len(self.chunk.items)


#: the worker name of the items the auto-selector ran in the caller: no pool worker
PROBE_WORKER = "caller (auto-selector probe)"


class ChunkRecord:
    """What a run's stats keep of a finished chunk (about 330 bytes): who ran
    its first ``done`` items, when, with how much CPU, and which failed."""

    __slots__ = ("cpu", "done", "failed", "finished", "item_ends", "item_starts", "positions",
                 "start", "started", "submitted", "worker")

    def __init__(self, submitted: float, start: int, positions: Sequence[int], worker: str,
                 started: float, finished: float, cpu: float, item_ends: list[float] | None,
                 item_starts: list[float] | None, done: int, failed: frozenset[int]) -> None:
        self.submitted = submitted
        self.start = start
        self.positions = positions
        self.worker = worker
        self.started = started
        self.finished = finished
        self.cpu = cpu
        self.item_ends = item_ends
        self.item_starts = item_starts
        self.done = done
        self.failed = failed


class Job:
    """One function applied over one run: what every chunk of the run shares.

    Backends call :meth:`claim` right before a chunk starts (False: drop it)
    and :meth:`deliver` with each finished chunk; they know nothing else of
    the run. ``cutoff`` lets the run drop chunks past a failure while the
    chunks before it still finish; ``stop_at_failure`` says the run wants
    nothing after a chunk's first failing item (``errors="raise"``, no
    retries), so a backend may stop the chunk there. ``all_or_nothing``
    says more: its items are tiny (measured), and the run reads a chunk's
    values only if every item succeeds (``map`` raising at its first failure),
    so a backend running items in the caller may run them as one list
    comprehension, which drops the values before a failure.
    """

    __slots__ = (
        "__weakref__",
        "_deliver",
        "all_or_nothing",
        "cancelled",
        "cutoff",
        "fn",
        "id",
        "payload",
        "stop_at_failure",
        "timeout",
    )

    def __init__(
        self,
        fn: Callable[[Any], Any],
        deliver: Callable[[ChunkResult], None],
        *,
        timeout: float | None = None,
    ) -> None:
        self.id = next(_job_ids)
        self.fn = fn
        self.timeout = timeout
        self.cancelled = False
        self.cutoff: int | None = None
        self.stop_at_failure = False
        self.all_or_nothing = False
        self._deliver = deliver
        #: the function serialized by a backend that needs it, cached per job
        self.payload: bytes | None = None

    def wants(self, chunk: Chunk) -> bool:
        """Does the run still want ``chunk``? A question only: no side effect."""
        if self.cancelled:
            return False
        cutoff = self.cutoff
        return cutoff is None or chunk.seq <= cutoff

    def claim(self, chunk: Chunk) -> bool:
        """Start ``chunk`` if the run still wants it (False: drop it).

        Backends call it once, right before running the chunk; a job may
        attach a side effect (``Executor.submit`` marks its future running).
        """
        return self.wants(chunk)

    def cancel(self) -> None:
        self.cancelled = True

    def deliver(self, result: ChunkResult) -> None:
        self._deliver(result)
