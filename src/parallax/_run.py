"""The run driver: feeds chunks to a backend and gathers what comes back.

Everything that must behave the same in every mode lives here, once:

* a bounded number of chunks in play (submitted, or finished but waiting for
  an earlier one in ordered mode), so an endless input runs in bounded memory;
* ordered or unordered delivery;
* the error policy (``raise`` at the first failure and cancel what has not
  started, ``return`` the exception in the item's place, ``skip`` it);
* re-running the items of a chunk that an interrupted worker left undone,
  and retrying failed items;
* timings for the chunk sizer and the stats.
"""

from __future__ import annotations

import queue
from collections.abc import Callable, Generator, Iterable, Iterator
from time import monotonic, perf_counter
from typing import Any, Final, Literal

from ._chunking import ChunkSizer, chunks
from ._errors import ParallaxError
from ._recorder import StatsRecorder
from ._records import FrozenRecord
from ._units import EVERY_ITEM, SOMEWHERE, Chunk, ChunkResult, Failure, Job
from ._worker import PER_ITEM_TIMING_THRESHOLD
from .backends import Backend

__all__ = ["ErrorPolicy", "Raised", "RetryPolicy", "Run"]

ErrorPolicy = Literal["raise", "return", "skip"]
ERROR_POLICIES: Final = ("raise", "return", "skip")

#: how often a waiting run checks that its backend can still deliver
_LIVENESS_POLL: Final = 0.5
_CANCELLED: Final = object()


class RetryPolicy(FrozenRecord):
    """Which failures are run again, how often, and how long to wait between."""

    __match_args__ = ("retries", "retry_on", "backoff", "max_backoff")  # the fields, in order
    __slots__ = __match_args__
    retries: int
    retry_on: tuple[type[BaseException], ...]
    backoff: float
    max_backoff: float

    def __init__(self, retries: int = 0,
                 retry_on: tuple[type[BaseException], ...] = (Exception,),
                 backoff: float = 0.0, max_backoff: float = 30.0) -> None:
        _set = object.__setattr__
        _set(self, "retries", retries)
        _set(self, "retry_on", retry_on)
        _set(self, "backoff", backoff)
        _set(self, "max_backoff", max_backoff)

    def allows(self, error: BaseException, attempt: int) -> bool:
        return attempt <= self.retries and isinstance(error, self.retry_on)

    def delay(self, attempt: int) -> float:
        """Exponential backoff with jitter, before attempt number ``attempt + 1``."""
        if self.backoff <= 0:
            return 0.0
        import random  # only runs that back off need it

        base: float = min(self.max_backoff, self.backoff * 2 ** (attempt - 1))
        return base * (0.5 + random.random() / 2)


#: the policy of a run without retries (policies cannot change: one serves all)
_NO_RETRIES: Final = RetryPolicy()


class _ChunkState:
    """A chunk in play: its items' outcomes so far, and how many are final.

    Each item of the chunk is *settled* exactly once, when its outcome is
    final: a value, or an error no retry will replace (:meth:`settle`); or
    *dropped* once, when the run no longer wants it (:meth:`drop`). Items
    that fail and are retried, or that an interrupted worker left undone,
    settle later, from the result of their re-run. The chunk is done when
    every item is settled or dropped.
    """

    __slots__ = ("attempts", "chunk", "dropped", "errors", "settled", "values")

    def __init__(self, chunk: Chunk) -> None:
        self.chunk = chunk
        self.values: list[Any] | None = None
        self.errors: dict[int, BaseException] = {}
        self.attempts: dict[int, int] | None = None
        #: items with a final outcome (they count as done in the run's progress)
        self.settled = 0
        #: items the run stopped wanting (after a failure under errors="raise")
        self.dropped = 0

    def settle(self, count: int = 1) -> None:
        self.settled += count

    def drop(self, count: int) -> None:
        self.dropped += count

    @property
    def done(self) -> bool:
        return self.settled + self.dropped == len(self.chunk.items)


class Raised(FrozenRecord):
    """An item's exception, kept in its place (``Executor.map`` raises it there)."""

    __match_args__ = ("error",)  # the fields, in order
    __slots__ = __match_args__
    error: BaseException

    def __init__(self, error: BaseException) -> None:
        object.__setattr__(self, "error", error)


class Run:
    """One pass of a function over an input on a backend.

    Constructing a run checks what can be checked before any work starts
    (the function pickles, for process mode); iterating it does the work.
    Leaving the iteration early (``break``, an exception, garbage collection)
    cancels the chunks that have not started.
    """

    def __init__(
        self,
        backend: Backend,
        fn: Callable[[Any], Any],
        iterable: Iterable[Any],
        *,
        chunksize: int | str = "auto",
        ordered: bool = True,
        errors: ErrorPolicy | Literal["wrap"] = "raise",
        timeout: float | None = None,
        deadline: float | None = None,
        retry: RetryPolicy | None = None,
        total: int | None = None,
        recorder: StatsRecorder | None = None,
        on_progress: Callable[[int], None] | None = None,
        on_finish: Callable[[Run], None] | None = None,
    ) -> None:
        self.backend = backend
        self._inbox: queue.SimpleQueue[ChunkResult | object] = queue.SimpleQueue()
        self.job = Job(fn, self._inbox.put, timeout=timeout)
        self.ordered = ordered
        self.errors = errors
        self.deadline = deadline
        self.retry = retry or _NO_RETRIES
        self.job.stop_at_failure = errors == "raise" and not self.retry.retries
        backend.prepare(self.job)
        self.recorder = recorder
        if chunksize == "auto":
            chunksize = backend.auto_chunksize() or "auto"
        self.sizer = ChunkSizer(
            chunksize,
            workers=backend.chunk_slots,
            total=total,
            chunk_overhead=backend.chunk_overhead,
        )
        self.window = max(2, backend.chunk_slots * (2 + backend.prefetch))
        self._iterable = iterable
        self._preloaded: ChunkResult | None = None
        #: the first chunk, still running in the caller (:meth:`reserve_first`)
        self._reserved: Chunk | None = None
        self._reserved_since: float | None = None
        self._source = chunks(iterable, self.sizer)
        self._on_progress = on_progress
        self._on_finish = on_finish
        self._delayed: list[tuple[float, Chunk]] = []
        self._states: dict[int, _ChunkState] = {}
        self._next_seq = 0
        self._exhausted = False
        self._started = False
        self.items_done = 0
        self.finished = False
        self._iterator: Generator[list[Any], None, None] | None = None

    def preload(self, result: ChunkResult) -> None:
        """Make ``result`` the run's first chunk, already finished (the auto probe's
        items, run in the caller); the run goes on after its items. Only before
        the run starts: the caller may keep adding items while a pool boots.
        """
        if self._started:
            raise RuntimeError("a run's first chunk can only be preloaded before it starts")
        self._preloaded = result
        if result.values:
            self.sizer.assume((result.finished - result.started) / len(result.values))
        self._source = chunks(
            self._iterable, self.sizer, first_index=len(result.chunk.items), first_seq=1
        )

    def reserve_first(self, chunk: Chunk, started: float) -> None:
        """Make ``chunk`` the run's first, running since ``started`` (a
        perf_counter() reading) elsewhere: in the caller, the auto probe's
        item that showed it waits. The run goes on after its items and, in
        order, delivers theirs once :meth:`finish_first` hands them over.
        Only before the run starts.
        """
        if self._started:
            raise RuntimeError("a run's first chunk can only be reserved before it starts")
        self._reserved = chunk
        self._reserved_since = started
        self._source = chunks(self._iterable, self.sizer, first_index=len(chunk.items),
                              first_seq=1)

    @property
    def first_chunk(self) -> Chunk | None:
        """The reserved first chunk (:meth:`reserve_first`), if any."""
        return self._reserved

    def finish_first(self, result: ChunkResult) -> None:
        """The outcome of the reserved first chunk (any thread)."""
        self._inbox.put(result)

    # -- iteration -------------------------------------------------------------

    def start(self) -> None:
        """Submit the first window of chunks now rather than at first ``next()``."""
        if not self._started:
            self._started = True
            if self.recorder is not None:
                preloaded = self._preloaded
                self.recorder.begin(preloaded.started if preloaded is not None
                                    else self._reserved_since)
            if self._reserved is not None:
                self._states[0] = _ChunkState(self._reserved)
            self._fill()

    def batches(self, *, all_at_once: bool = False) -> Generator[list[Any], None, None]:
        """Results chunk by chunk (for ``map``, which extends a list with them).

        ``all_at_once``: the caller wants every result before using any (no
        streaming). On a backend that runs chunks in the caller's thread, with
        no progress to report, the rest of the input then goes as one chunk:
        cutting it up would only cost time.
        """
        if self._iterator is None:
            if all_at_once:
                self._take_rest_at_once()
            self._iterator = self._drive()
        return self._iterator

    def _take_rest_at_once(self) -> bool:
        """For a caller that wants every result before using any: on a
        backend that runs chunks in the caller's thread, with no progress to
        report, the rest of the input goes as one chunk (cutting it up would
        only cost time). Whether it does."""
        if not (self.backend.runs_in_caller and self._on_progress is None
                and not self._started):
            return False
        self.sizer.rest_at_once = True
        item_seconds = self.sizer.item_seconds
        job = self.job
        # A failure raises before any value is read (map), and the
        # items were measured tiny: see Job.all_or_nothing.
        job.all_or_nothing = (job.stop_at_failure and job.timeout is None
                              and item_seconds is not None
                              and item_seconds < PER_ITEM_TIMING_THRESHOLD)
        return True

    def all_at_once(self) -> list[Any] | None:
        """Every result as one list, for a run whose first chunk was
        preloaded without a failure (the auto probe's) and whose rest goes
        to the caller's thread as one chunk of tiny items (an auto ``map`` of
        tiny work); None for any other run, which ``batches(all_at_once=True)``
        then delivers.

        The same chunks, records and outcome as the driver's, without its
        machinery, which costs a tiny call as much as the items themselves.
        If the rest fails, the driver takes over from there (and raises).
        """
        preloaded = self._preloaded
        if (preloaded is None or preloaded.failures or preloaded.interruption is not None
                or self._iterator is not None or not self.ordered or self.deadline is not None
                or self._on_finish is not None or not self._take_rest_at_once()
                or not self.job.all_or_nothing):
            return None
        self._iterator = self._drive()  # takes over should the rest not succeed
        self._started = True
        recorder = self.recorder
        if recorder is not None:
            recorder.begin(preloaded.started)
        chunk = next(self._source, None)
        result: ChunkResult | None = None
        if chunk is not None:
            self._states[chunk.seq] = _ChunkState(chunk)
            self._submit(chunk)  # runs now, in this thread, and lands in the inbox
            try:
                received = self._inbox.get_nowait()
            except queue.Empty:
                return None  # not run (the backend refused it): the driver says why
            if (not isinstance(received, ChunkResult) or received.failures
                    or received.interruption is not None or not received.complete):
                self._inbox.put(received)
                return None
            result = received
            del self._states[chunk.seq]
        self._exhausted = True
        self._preloaded = None
        self._iterator = None
        values = preloaded.values
        for done in (preloaded, result):
            if done is None:
                continue
            if recorder is not None:
                recorder.add(done)
            if done.values:
                self.sizer.observe(len(done.values), done.finished - done.started)
            self.items_done += len(done.values)
        if result is not None:
            values = result.values
            values[:0] = preloaded.values  # the probe's few values, moved in front
        self.finished = True
        if recorder is not None:
            recorder.finish(self.items_done, chunksize=self._chunksize_used())
        return values

    def __iter__(self) -> Generator[Any, None, None]:
        batches = self.batches()
        try:
            for batch in batches:
                yield from batch
        finally:
            # Closing this iterator (break, garbage collection) closes the
            # driver, whose cleanup cancels what has not started.
            self.close()

    def close(self) -> None:
        """Stop the run: cancel what has not started; idempotent."""
        if self._iterator is not None:
            self._iterator.close()
        elif not self.finished:
            self.finished = True
            self.backend.cancel(self.job)

    def cancel(self) -> None:
        """Stop the run from another thread; its iterator raises CancelledError."""
        self.backend.cancel(self.job)
        self._inbox.put(_CANCELLED)

    def _fill(self) -> None:
        states = self._states
        if self.job.cutoff is not None:
            return  # a failure was recorded: nothing new starts
        while not self._exhausted and len(states) < self.window:
            chunk = next(self._source, None)
            if chunk is None:
                self._exhausted = True
                return
            states[chunk.seq] = _ChunkState(chunk)
            self._submit(chunk)

    def _drive(self) -> Generator[list[Any], None, None]:
        states = self._states
        completed = False
        interrupted = False
        try:
            self.start()
            if self._preloaded is not None:
                preloaded, self._preloaded = self._preloaded, None
                states[0] = _ChunkState(preloaded.chunk)
                self._absorb(states[0], preloaded)
            while True:
                yield from self._ready(states)
                self._fill()
                if not states:
                    completed = True
                    return
                self._release_due()
                result = self._receive()
                if result is None:
                    continue
                state = states.get(result.chunk.seq)
                if state is None or state.done:
                    continue  # a straggler from before a cancellation
                self._absorb(state, result)
        except KeyboardInterrupt:
            interrupted = True
            raise
        finally:
            self.finished = True
            if not completed:
                self.backend.cancel(self.job, interrupt=interrupted)
            if self.recorder is not None:
                self.recorder.finish(self.items_done, chunksize=self._chunksize_used())
            if self._on_finish is not None:
                self._on_finish(self)

    def _ready(self, states: dict[int, _ChunkState]) -> Iterator[list[Any]]:
        """Pop and yield the chunks that may be delivered now."""
        if self.ordered:
            while (state := states.get(self._next_seq)) is not None and state.done:
                del states[self._next_seq]
                self._next_seq += 1
                if state.errors and self.errors == "raise":
                    # In order: the items before the first failure, then it.
                    first = min(state.errors)
                    yield (state.values or [])[:first]
                    raise state.errors[first]
                yield self._outcomes(state)
        else:
            for seq in [seq for seq, state in states.items() if state.done]:
                yield self._outcomes(states.pop(seq))

    def _chunksize_used(self) -> int | str:
        if self.sizer.fixed is not None:
            return self.sizer.fixed
        return f"auto (up to {self.sizer.largest})" if self.sizer.largest else "auto"

    def _submit(self, chunk: Chunk) -> None:
        chunk.submitted = perf_counter()
        self.backend.submit(self.job, chunk)

    def _release_due(self) -> None:
        """Submit retries whose backoff has passed."""
        if not self._delayed:
            return
        now = monotonic()
        due = [chunk for when, chunk in self._delayed if when <= now]
        if due:
            self._delayed = [(when, chunk) for when, chunk in self._delayed if when > now]
            for chunk in due:
                self._submit(chunk)

    def _receive(self) -> ChunkResult | None:
        broken_polls = 0
        while True:
            wait = _LIVENESS_POLL
            if self.deadline is not None:
                wait = min(wait, self.deadline - monotonic())
                if wait <= 0:
                    raise TimeoutError("the run did not finish within its timeout")
            if self._delayed:
                soonest = min(when for when, _ in self._delayed) - monotonic()
                if soonest <= 0:
                    return None
                wait = min(wait, soonest)
            try:
                result = self._inbox.get(timeout=wait)
            except queue.Empty:
                # A broken backend fails what it holds itself; this is the
                # safety net should a chunk still go missing.
                broken = self.backend.broken
                broken_polls = broken_polls + 1 if broken is not None else 0
                if broken is not None and broken_polls > 2:
                    raise ParallaxError(f"the {self.backend.name} backend failed") from broken
                continue
            if result is _CANCELLED:
                from concurrent.futures import CancelledError  # only executors cancel runs

                raise CancelledError("the run was cancelled (its executor was shut down)")
            assert isinstance(result, ChunkResult)
            return result

    # -- merging results -------------------------------------------------------

    def _absorb(self, state: _ChunkState, result: ChunkResult) -> None:
        """Merge a result of ``state``'s chunk (or of a re-run of some of its items)."""
        chunk = result.chunk
        settled_before = state.settled
        if self.recorder is not None:
            self.recorder.add(result)
        done = len(result.values)
        if done:
            self.sizer.observe(done, result.finished - result.started)
        fresh = state.values is None and chunk is state.chunk
        if fresh and result.complete:
            state.values = result.values  # the common case: no copying
        else:
            if state.values is None:
                state.values = [None] * len(state.chunk.items)
            positions = chunk.positions
            for offset, value in enumerate(result.values):
                state.values[positions[offset]] = value
        failures = result.failures
        # A value is final; a failure is settled (or retried) by _fail.
        state.settle(done - len(failures) if failures else done)
        if failures:
            for offset, failure in failures.items():
                self._fail(state, chunk, offset, failure, result.worker)
        if result.interruption is not None:
            self._interrupted(state, result)
        elif done < len(chunk.items) and failures and self.job.stop_at_failure:
            # The backend stopped the chunk at a failure (Job.stop_at_failure):
            # the rest of it is not wanted, so it is dropped without running.
            state.drop(len(chunk.items) - done)
        finalized = state.settled - settled_before
        self.items_done += finalized
        if self._on_progress is not None and finalized:
            self._on_progress(finalized)

    def _interrupted(self, state: _ChunkState, result: ChunkResult) -> None:
        chunk = result.chunk
        error = result.interruption
        assert error is not None
        undone = range(len(result.values), len(chunk.items))
        at = result.interrupted_at
        if at == SOMEWHERE:
            # The worker died among fast items it did not mark one by one:
            # run each again alone, so the culprit shows itself and only it fails.
            for offset in undone:
                self._rerun(chunk, [offset])
        elif at == EVERY_ITEM:  # nothing of the chunk can run
            for offset in undone:
                # One error object for every item (it is about the pool, not
                # the item): no per-item note, or they would pile up on it.
                self._record_error(state, chunk, offset, Failure(error, ""), result.worker,
                                   note=False)
        else:
            self._fail(state, chunk, at, Failure(error, ""), result.worker)
            others = [offset for offset in undone if offset != at]
            if others:
                # The dead worker's other items never produced an outcome: run
                # them again, so one poison item does not fail its neighbours.
                self._rerun(chunk, others)

    def _rerun(self, chunk: Chunk, offsets: list[int], delay: float = 0) -> None:
        """Submit some items of ``chunk`` again; they stay unsettled meanwhile."""
        rerun = Chunk(
            chunk.seq,
            chunk.start,
            [chunk.items[offset] for offset in offsets],
            [chunk.positions[offset] for offset in offsets],
        )
        if delay > 0:
            self._delayed.append((monotonic() + delay, rerun))
        else:
            self._submit(rerun)

    def _fail(
        self, state: _ChunkState, chunk: Chunk, offset: int, failure: Failure, worker: str
    ) -> None:
        """An item failed: retry it if the policy says so, else record the error."""
        position = chunk.positions[offset]
        if self.retry.retries:
            if state.attempts is None:
                state.attempts = {}
            attempt = state.attempts.get(position, 1)
            if self.retry.allows(failure.exception, attempt):
                state.attempts[position] = attempt + 1
                if self.recorder is not None:
                    self.recorder.retried(chunk.start + position)
                self._rerun(chunk, [offset], self.retry.delay(attempt))
                return
        self._record_error(state, chunk, offset, failure, worker)

    def _record_error(
        self,
        state: _ChunkState,
        chunk: Chunk,
        offset: int,
        failure: Failure,
        worker: str,
        *,
        note: bool = True,
    ) -> None:
        """The item's final outcome is ``failure``: settle it with the error."""
        position = chunk.positions[offset]
        index = chunk.start + position
        error = (
            failure.to_exception(index, chunk.items[offset], worker) if note else failure.exception
        )
        state.errors[position] = error
        state.settle()
        if self.recorder is not None:
            self.recorder.failed(index, error)
        if self.errors == "raise":
            if not self.ordered:
                raise error
            self._stop_after(chunk.seq)

    def _stop_after(self, seq: int) -> None:
        """Ordered ``errors="raise"``: chunks before ``seq`` finish, later ones are dropped.

        The run then delivers every result before the first failing item and
        raises that item's exception, as ``[fn(x) for x in data]`` would.
        """
        cutoff = self.job.cutoff
        if cutoff is not None and cutoff <= seq:
            return
        self.job.cutoff = seq
        for later in [other for other in self._states if other > seq]:
            del self._states[later]
        self._delayed = [(when, chunk) for when, chunk in self._delayed if chunk.seq <= seq]

    def _outcomes(self, state: _ChunkState) -> list[Any]:
        values = state.values
        assert values is not None
        if not state.errors:
            return values
        if self.errors == "return":
            for position, error in state.errors.items():
                values[position] = error
            return values
        if self.errors == "wrap":
            for position, error in state.errors.items():
                values[position] = Raised(error)
            return values
        return [value for position, value in enumerate(values) if position not in state.errors]

