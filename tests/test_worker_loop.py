"""The worker's own loop, on its own: ``run_chunk`` and ``worker_loop`` with no pool.

Timing decisions are tested against a fake clock (``_worker.perf_counter``
patched), never against the machine's speed.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest

from helpers import Boom
from parallax import _worker
from parallax._mark import IDLE, MARK_POSITION, MARK_SOMEWHERE, MARK_STARTED, MARK_TOKEN, new_mark
from parallax._units import Chunk, ChunkResult, Failure
from parallax._worker import STOP, inside_worker, run_chunk, worker_loop


def fake_clock(step: float) -> Callable[[], float]:
    """A perf_counter that moves ``step`` seconds on every read."""
    ticks: Iterator[int] = iter(range(1, 10**9))
    return lambda: next(ticks) * step


def double(x: int) -> int:
    return x * 2


def failing(bad: set[int]) -> Callable[[int], int]:
    def fn(x: int) -> int:
        if x in bad:
            raise Boom(f"bad item {x}")
        return x * 2

    return fn


# -- run_chunk: values and failures -------------------------------------------------------


def test_every_item_runs_in_order_into_the_given_list() -> None:
    chunk = Chunk.fresh(3, 10, list(range(5)))
    values: list[Any] = []
    result = run_chunk(double, chunk, new_mark(), values, watch_time=False)
    assert result.values is values
    assert values == [0, 2, 4, 6, 8]
    assert result.chunk is chunk
    assert result.complete
    assert result.failures is None
    assert result.interruption is None
    assert result.started <= result.finished


def test_a_failing_item_is_captured_in_its_place_and_the_rest_runs() -> None:
    result = run_chunk(failing({1, 3}), Chunk.fresh(0, 0, [0, 1, 2, 3, 4]), new_mark(), [],
                       watch_time=False)
    assert result.values == [0, None, 4, None, 8]
    assert result.failures is not None
    assert sorted(result.failures) == [1, 3]
    failure = result.failures[3]
    assert type(failure.exception) is Boom
    assert str(failure.exception) == "bad item 3"
    assert "bad item 3" in failure.traceback
    assert " in fn\n" in failure.traceback  # the worker-side frame is kept as text


@pytest.mark.parametrize("watch_time", [False, True])
def test_stop_at_failure_ends_the_chunk_at_its_first_failing_item(watch_time: bool) -> None:
    ran: list[int] = []

    def fn(x: int) -> int:
        ran.append(x)
        return failing({2, 4})(x)

    result = run_chunk(fn, Chunk.fresh(0, 0, list(range(6))), new_mark(), [],
                       watch_time=watch_time, stop_at_failure=True)
    assert ran == [0, 1, 2]
    assert result.values == [0, 2, None]
    assert result.failures is not None and list(result.failures) == [2]
    assert result.interruption is None
    assert not result.complete


def test_failures_handed_in_are_filled_while_the_chunk_runs() -> None:
    failures: dict[int, Failure] = {}
    seen: list[list[int]] = []

    def fn(x: int) -> int:
        seen.append(sorted(failures))
        if x == 1:
            raise Boom("one")
        return x

    result = run_chunk(fn, Chunk.fresh(0, 0, [0, 1, 2]), new_mark(), [], watch_time=True,
                       failures=failures)
    assert seen == [[], [], [1]]  # item 2 ran after item 1's failure was recorded
    assert result.failures is failures


def test_keyboard_interrupt_stops_the_caller_but_is_an_item_failure_in_a_worker() -> None:
    def interrupted(x: int) -> int:
        raise KeyboardInterrupt

    chunk = Chunk.fresh(0, 0, [0])
    with pytest.raises(KeyboardInterrupt):
        run_chunk(interrupted, chunk, new_mark(), [], watch_time=False, in_caller=True)
    result = run_chunk(interrupted, chunk, new_mark(), [], watch_time=False)
    assert result.failures is not None
    assert isinstance(result.failures[0].exception, KeyboardInterrupt)


# -- run_chunk: timing and the mark -------------------------------------------------------


def test_items_slower_than_the_threshold_are_timed_one_by_one(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    step = 10 * _worker.PER_ITEM_TIMING_THRESHOLD
    monkeypatch.setattr(_worker, "perf_counter", fake_clock(step))
    mark = new_mark()
    positions: list[float] = []

    def fn(x: int) -> int:
        positions.append(mark[MARK_POSITION])
        return x

    result = run_chunk(fn, Chunk.fresh(0, 0, list(range(5))), mark, [], watch_time=False)
    assert result.item_ends is not None
    assert len(result.item_ends) == 5
    assert result.item_ends == sorted(result.item_ends)
    assert positions == [0, 1, 2, 3, 4]  # each item is marked


def test_items_faster_than_the_threshold_are_neither_timed_nor_marked(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    step = _worker.PER_ITEM_TIMING_THRESHOLD / 10
    monkeypatch.setattr(_worker, "perf_counter", fake_clock(step))
    mark = new_mark()
    positions: list[float] = []

    def fn(x: int) -> int:
        positions.append(mark[MARK_POSITION])
        return x

    result = run_chunk(fn, Chunk.fresh(0, 0, list(range(6))), mark, [], watch_time=False)
    assert result.values == [0, 1, 2, 3, 4, 5]
    assert result.item_ends is None  # the records use the chunk's average
    # The first item decides; from the second on, the mark says "somewhere".
    assert positions == [0, MARK_SOMEWHERE, MARK_SOMEWHERE, MARK_SOMEWHERE, MARK_SOMEWHERE,
                         MARK_SOMEWHERE]


def test_without_position_tracking_fast_items_leave_the_mark_alone(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(_worker, "perf_counter", fake_clock(_worker.PER_ITEM_TIMING_THRESHOLD / 10))
    mark = new_mark()
    run_chunk(double, Chunk.fresh(0, 0, list(range(6))), mark, [], watch_time=False,
              track_position=False)
    assert mark[MARK_POSITION] != MARK_SOMEWHERE


def test_a_failure_among_the_first_items_keeps_the_rest_timed(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(_worker, "perf_counter", fake_clock(_worker.PER_ITEM_TIMING_THRESHOLD / 10))
    result = run_chunk(failing({0}), Chunk.fresh(0, 0, list(range(4))), new_mark(), [],
                       watch_time=False)
    assert result.values == [None, 2, 4, 6]
    assert result.item_ends is not None and len(result.item_ends) == 4


def test_watching_time_marks_each_item_and_its_start_before_it_runs(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(_worker, "perf_counter", fake_clock(1.0))
    mark = new_mark()
    seen: list[tuple[float, float]] = []

    def fn(x: int) -> int:
        seen.append((mark[MARK_POSITION], mark[MARK_STARTED]))
        return x

    result = run_chunk(fn, Chunk.fresh(0, 0, [7, 8, 9]), mark, [], watch_time=True)
    assert [position for position, _ in seen] == [0, 1, 2]
    starts = [started for _, started in seen]
    assert starts == sorted(starts) and len(set(starts)) == 3
    assert result.item_ends is not None
    # Each item ends after it started, and the next starts after that.
    assert all(start < end for start, end in zip(starts, result.item_ends, strict=True))


def test_a_watched_chunk_stops_after_the_item_during_which_the_pool_gave_up() -> None:
    mark = new_mark()

    def fn(x: int) -> int:
        if x == 1:
            mark[MARK_TOKEN] = -1.0  # what the pool writes when it abandons the chunk
        return x

    result = run_chunk(fn, Chunk.fresh(0, 0, [0, 1, 2, 3]), mark, [], watch_time=True)
    assert result.values == [0, 1]
    assert result.failures is None and result.interruption is None


# -- worker_loop --------------------------------------------------------------------------


def tasks_of(*chunks: Chunk, fn: Callable[[Any], Any] = double) -> Callable[[], Any]:
    """next_task for worker_loop: each chunk with its seq as tag, then the poison pill."""
    queue: list[Any] = [(fn, chunk, False, False, f"tag-{chunk.seq}") for chunk in chunks]
    queue.append(STOP)
    return lambda: queue.pop(0)


def test_the_loop_runs_every_task_until_the_poison_pill() -> None:
    reported: list[tuple[ChunkResult, Any]] = []
    mark = new_mark()
    recycle = worker_loop(
        tasks_of(Chunk.fresh(0, 0, [1, 2]), Chunk.fresh(1, 2, [3])),
        lambda result, tag: reported.append((result, tag)),
        mark,
        name="worker-1",
    )
    assert recycle is False
    assert [(result.values, tag) for result, tag in reported] == [([2, 4], "tag-0"), ([6], "tag-1")]
    assert {result.worker for result, _ in reported} == {"worker-1"}
    assert mark[MARK_POSITION] == IDLE  # reset after each chunk
    assert mark[MARK_TOKEN] == 2.0  # a new token per chunk


def test_the_loop_asks_for_recycling_after_max_tasks_items() -> None:
    pulled: list[int] = []
    queue = [Chunk.fresh(seq, 2 * seq, [0, 1]) for seq in range(5)]

    def next_task() -> Any:
        chunk = queue.pop(0)
        pulled.append(chunk.seq)
        return double, chunk, False, False, None

    recycle = worker_loop(next_task, lambda result, tag: None, new_mark(), name="w",
                          max_tasks=5)
    assert recycle is True
    assert pulled == [0, 1, 2]  # 6 items >= 5: no fourth chunk taken


def test_the_loop_retires_when_asked_between_chunks() -> None:
    reported: list[ChunkResult] = []
    recycle = worker_loop(
        tasks_of(Chunk.fresh(0, 0, [1]), Chunk.fresh(1, 1, [2])),
        lambda result, tag: reported.append(result),
        new_mark(),
        name="w",
        should_retire=lambda: True,
    )
    assert recycle is True
    assert len(reported) == 1


def test_partial_holds_the_running_chunks_lists() -> None:
    partial: list[tuple[list[Any], dict[int, Failure]]] = []
    snapshots: list[tuple[list[Any], list[int]]] = []

    def fn(x: int) -> int:
        values, failures = partial[0]
        snapshots.append((list(values), sorted(failures)))
        if x == 1:
            raise Boom("one")
        return x

    worker_loop(tasks_of(Chunk.fresh(0, 0, [0, 1, 2]), Chunk.fresh(1, 3, [3]), fn=fn),
                lambda result, tag: None, new_mark(), name="w", partial=partial)
    assert snapshots == [([], []), ([0], []), ([0, None], [1]), ([], [])]
    assert len(partial) == 1  # cleared for each chunk, not accumulated


def test_code_run_by_the_loop_knows_it_is_inside_a_worker() -> None:
    inside: list[bool] = []
    assert not inside_worker()
    worker_loop(tasks_of(Chunk.fresh(0, 0, [0]), fn=lambda x: inside.append(inside_worker())),
                lambda result, tag: None, new_mark(), name="w")
    assert inside == [True]
    assert not inside_worker()


def test_nothing_of_a_task_is_held_while_the_loop_waits_for_the_next() -> None:
    # A submitted call (a BoundCall) is let go of once it ran, even though its
    # job's function stays cached (a process worker's JobCache): CPython's
    # test_ressources_gced_in_workers. A chunk's items and results go too.
    import weakref

    from parallax._calls import BoundCall

    class Thing:
        pass

    argument, item = Thing(), Thing()
    alive = [weakref.ref(argument), weakref.ref(item)]
    call = BoundCall(lambda thing: thing, (argument,))
    tasks: list[Any] = [(lambda thing: thing, Chunk.fresh(1, 1, [item]), False, False, None),
                        (call, Chunk.fresh(0, 0, [None]), False, False, None)]
    del argument, item
    seen: list[list[bool]] = []

    def next_task() -> Any:
        seen.append([ref() is not None for ref in alive])
        return tasks.pop() if tasks else STOP

    worker_loop(next_task, lambda result, tag: None, new_mark(), name="w")
    assert seen == [
        [True, True],
        [False, True],  # the call's argument, once the call ran
        [False, False],  # the item (and the result it was), once its chunk ran
    ]
    assert call.args == ()
