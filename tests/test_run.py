"""The run driver on its own, over a fake backend the test steers.

``FakeBackend`` runs each chunk in the caller when it is submitted, or holds
chunks until the test releases them in an order of its choosing; a
``script`` may stand in for a chunk's result (a dead worker, a broken pool).
No pool, no thread, no clock: what is asserted is what ``Run`` does with the
results it gets.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from helpers import Boom
from parallax._broken import WorkerCrashedError
from parallax._errors import ParallaxError
from parallax._mark import new_mark
from parallax._recorder import StatsRecorder
from parallax._run import ErrorPolicy, RetryPolicy, Run
from parallax._units import SOMEWHERE, Chunk, ChunkResult, Job
from parallax._worker import run_chunk
from parallax.backends import Backend, failed_chunk

Script = Callable[[Chunk], ChunkResult | None]


class FakeBackend(Backend):
    name = "fake"

    def __init__(self, *, hold: bool = False, script: Script | None = None) -> None:
        self.workers = 2
        self.hold = hold
        self.script = script
        self.held: list[tuple[Job, Chunk]] = []
        self.submitted: list[Chunk] = []
        self.cancelled: list[Job] = []

    def submit(self, job: Job, chunk: Chunk) -> None:
        self.submitted.append(chunk)
        if self.hold:
            self.held.append((job, chunk))
        else:
            self.run(job, chunk)

    def run(self, job: Job, chunk: Chunk) -> None:
        if not job.claim(chunk):
            return
        result = self.script(chunk) if self.script is not None else None
        if result is None:
            result = run_chunk(job.fn, chunk, new_mark(), [], watch_time=False,
                               stop_at_failure=job.stop_at_failure)
            result.worker = "fake-1"
        job.deliver(result)

    def release(self, *order: int) -> None:
        """Run the held chunks in this order of their seq; run later ones at once."""
        self.hold = False
        held = {chunk.seq: (job, chunk) for job, chunk in self.held}
        self.held.clear()
        for seq in order:
            self.run(*held.pop(seq))
        assert not held, f"chunks not released: {sorted(held)}"

    def cancel(self, job: Job, *, interrupt: bool = False) -> None:
        self.cancelled.append(job)
        job.cancel()

    def shutdown(self, wait: bool = True, *, cancel_pending: bool = False) -> None:
        pass


def double(x: int) -> int:
    return x * 2


def fail_on(*bad: int) -> Callable[[int], int]:
    def fn(x: int) -> int:
        if x in bad:
            raise Boom(f"bad item {x}")
        return x * 2

    return fn


def new_run(backend: Backend, fn: Callable[[Any], Any], data: Any, *,
            progress: list[int] | None = None, **kw: Any) -> Run:
    kw.setdefault("chunksize", 1)
    return Run(backend, fn, data,
               on_progress=progress.append if progress is not None else None, **kw)


# -- ordering ------------------------------------------------------------------------------


def test_ordered_results_come_in_input_order_whatever_order_chunks_finish() -> None:
    backend = FakeBackend(hold=True)
    run = new_run(backend, double, range(4))
    run.start()
    backend.release(3, 1, 2, 0)
    assert list(run) == [0, 2, 4, 6]


def test_unordered_results_come_as_chunks_finish() -> None:
    backend = FakeBackend(hold=True)
    run = new_run(backend, double, range(4), ordered=False)
    run.start()
    backend.release(3, 1, 2, 0)
    assert list(run) == [6, 2, 4, 0]


def test_only_a_window_of_chunks_is_in_play() -> None:
    backend = FakeBackend(hold=True)
    run = new_run(backend, double, range(100))
    run.start()
    assert len(backend.submitted) == run.window < 100
    backend.release(*range(run.window))
    assert list(run) == [x * 2 for x in range(100)]


def test_leaving_the_iteration_early_cancels_the_job() -> None:
    backend = FakeBackend()
    run = new_run(backend, double, range(10))
    for _ in run:
        break
    assert backend.cancelled == [run.job]
    assert run.job.cancelled and run.finished


# -- error policy --------------------------------------------------------------------------


def test_raise_in_order_delivers_what_came_before_the_failure_then_raises_it() -> None:
    backend = FakeBackend(hold=True)
    run = new_run(backend, fail_on(2), range(5))
    run.start()
    backend.release(4, 3, 2, 1, 0)  # the later chunks finish first
    received: list[int] = []
    with pytest.raises(Boom, match="bad item 2") as caught:
        received.extend(run)
    assert received == [0, 2]
    assert "parallax: raised by item 2 (2) in fake-1" in caught.value.__notes__


def test_raise_unordered_raises_as_soon_as_the_failure_arrives() -> None:
    backend = FakeBackend(hold=True)
    run = new_run(backend, fail_on(0), range(3), ordered=False)
    run.start()
    backend.release(1, 0, 2)
    received: list[int] = []
    with pytest.raises(Boom):
        received.extend(run)
    assert received == [2]


def test_raise_stops_a_chunk_at_its_failure_and_drops_the_rest() -> None:
    ran: list[int] = []

    def fn(x: int) -> int:
        ran.append(x)
        return fail_on(2)(x)

    progress: list[int] = []
    run = new_run(FakeBackend(), fn, range(5), chunksize=5, progress=progress)
    assert run.job.stop_at_failure
    with pytest.raises(Boom):
        list(run)
    assert ran == [0, 1, 2]
    assert sum(progress) == run.items_done == 3  # the dropped items are not progress


@pytest.mark.parametrize(
    ("errors", "expected"),
    [("return", [0, 2, Boom, 6, 8]), ("skip", [0, 2, 6, 8])],
)
def test_return_and_skip_keep_the_run_going(errors: ErrorPolicy, expected: list[Any]) -> None:
    progress: list[int] = []
    results = list(new_run(FakeBackend(), fail_on(2), range(5), errors=errors,
                           progress=progress))
    assert [type(value) if isinstance(value, BaseException) else value
            for value in results] == expected
    assert sum(progress) == 5


# -- interrupted chunks --------------------------------------------------------------------


def crash(chunk: Chunk, at: int, values: list[Any]) -> ChunkResult:
    error = WorkerCrashedError(f"died at {at}", exitcode=-9, worker="fake-1")
    return ChunkResult(chunk, values, worker="fake-1", interruption=error, interrupted_at=at)


def test_a_dead_workers_item_fails_and_its_undone_neighbours_run_again() -> None:
    def script(chunk: Chunk) -> ChunkResult | None:
        if len(chunk.items) == 5:  # the first attempt dies at position 2
            return crash(chunk, 2, [0, 2])
        return None

    backend = FakeBackend(script=script)
    progress: list[int] = []
    results = list(new_run(backend, double, range(5), chunksize=5, errors="return",
                           progress=progress))
    assert results[:2] == [0, 2] and results[3:] == [6, 8]
    assert isinstance(results[2], WorkerCrashedError)
    rerun = backend.submitted[-1]
    assert (rerun.seq, rerun.start, list(rerun.items), list(rerun.positions)) == (0, 0, [3, 4],
                                                                                 [3, 4])
    assert sum(progress) == 5


@pytest.mark.parametrize("somewhere", [SOMEWHERE, -2], ids=["named", "as-read-off-a-mark"])
def test_a_death_somewhere_among_fast_items_reruns_each_alone(somewhere: int) -> None:
    def script(chunk: Chunk) -> ChunkResult | None:
        if len(chunk.items) == 4:
            return crash(chunk, somewhere, [0])
        if list(chunk.items) == [2]:  # the culprit dies again, alone
            return crash(chunk, 0, [])
        return None

    backend = FakeBackend(script=script)
    results = list(new_run(backend, double, range(4), chunksize=4, errors="return"))
    assert results[:2] == [0, 2] and results[3] == 6
    assert isinstance(results[2], WorkerCrashedError)
    assert [list(chunk.positions) for chunk in backend.submitted[1:]] == [[1], [2], [3]]


def test_a_broken_pool_fails_every_undone_item_with_one_error() -> None:
    error = ParallaxError("the pool is broken")
    progress: list[int] = []
    backend = FakeBackend(script=lambda chunk: failed_chunk(chunk, error))
    results = list(new_run(backend, double, range(3), chunksize=3, errors="return",
                           progress=progress))
    assert all(result is error for result in results)
    assert not getattr(error, "__notes__", None)  # about the pool, not one item
    assert sum(progress) == 3


# -- retries -------------------------------------------------------------------------------


def flaky(failures: int) -> tuple[Callable[[int], int], dict[int, int]]:
    """fn fails item 1 on its first ``failures`` calls; and the calls per item."""
    calls: dict[int, int] = {}

    def fn(x: int) -> int:
        calls[x] = calls.get(x, 0) + 1
        if x == 1 and calls[x] <= failures:
            raise Boom("flaky")
        return x * 2

    return fn, calls


def test_a_failed_item_is_retried_alone_and_its_value_takes_its_place() -> None:
    fn, calls = flaky(failures=2)
    backend = FakeBackend()
    progress: list[int] = []
    recorder = StatsRecorder("fake", "", 2, 3)
    run = new_run(backend, fn, range(3), chunksize=3, retry=RetryPolicy(retries=2),
                  recorder=recorder, progress=progress)
    assert not run.job.stop_at_failure  # a retry needs the rest of the chunk
    assert list(run) == [0, 2, 4]
    assert calls == {0: 1, 1: 3, 2: 1}
    assert [list(chunk.positions) for chunk in backend.submitted[1:]] == [[1], [1]]
    assert sum(progress) == run.items_done == 3
    assert recorder.stats.retried == 2 and recorder.stats.failed == 0
    attempts = [record.attempt for record in recorder.stats.task_records if record.index == 1]
    assert attempts == [1, 2, 3]


def test_an_item_that_keeps_failing_fails_after_its_retries() -> None:
    fn, calls = flaky(failures=10)
    progress: list[int] = []
    results = list(new_run(FakeBackend(), fn, range(3), retry=RetryPolicy(retries=2),
                           errors="return", progress=progress))
    assert isinstance(results[1], Boom) and results[::2] == [0, 4]
    assert calls[1] == 3
    assert sum(progress) == 3


def test_only_errors_the_policy_names_are_retried() -> None:
    fn, calls = flaky(failures=1)
    policy = RetryPolicy(retries=3, retry_on=(KeyError,))
    results = list(new_run(FakeBackend(), fn, range(3), retry=policy, errors="return"))
    assert isinstance(results[1], Boom)
    assert calls[1] == 1


def test_a_dead_workers_item_is_retried_like_a_failure() -> None:
    def script(chunk: Chunk) -> ChunkResult | None:
        if len(chunk.items) == 3:
            return crash(chunk, 1, [0])
        return None

    backend = FakeBackend(script=script)
    progress: list[int] = []
    policy = RetryPolicy(retries=1, retry_on=(WorkerCrashedError,))
    run = new_run(backend, double, range(3), chunksize=3, retry=policy, progress=progress)
    assert list(run) == [0, 2, 4]
    # The culprit and its undone neighbour, each run again.
    assert sorted(list(chunk.positions) for chunk in backend.submitted[1:]) == [[1], [2]]
    assert sum(progress) == run.items_done == 3
