"""The per-item timeout's shared pieces, on their own: the error, reading an
overrun off a worker's mark, abandoning a chunk, flagging after the fact."""

from __future__ import annotations

import pickle

import pytest

from parallax import TaskTimeoutError
from parallax._mark import MARK_POSITION, MARK_SOMEWHERE, MARK_STARTED, MARK_TOKEN, new_mark
from parallax._timeouts import abandon, flag_overruns, time_left, timeout_error
from parallax._units import EVERY_ITEM, SOMEWHERE, Chunk, ChunkResult, Failure, Unplaced


def test_the_error_names_the_item_by_its_input_index_and_says_what_became_of_it() -> None:
    chunk = Chunk(0, 10, ["a", "b"], [3, 7])  # a re-run chunk: positions 3 and 7
    error = timeout_error(chunk, 1, 0.5, "; it was stopped", where=" in worker-1")
    assert isinstance(error, TaskTimeoutError)
    assert str(error) == "item 17 ('b') ran past the 0.5 s timeout in worker-1; it was stopped"


def test_the_error_of_an_item_that_finished_says_how_long_it_ran() -> None:
    error = timeout_error(Chunk.fresh(0, 0, [1]), 0, 0.5, " (it ran on)", elapsed=2.0)
    assert str(error) == "item 0 (1) ran 2 s, over the 0.5 s timeout (it ran on)"


def test_time_left_reads_the_running_item_off_the_mark() -> None:
    mark = new_mark()
    assert time_left(mark, 1.0, now=100.0)[1] == float("inf")  # nothing runs
    mark[MARK_STARTED] = 99.5
    mark[MARK_POSITION] = 4
    assert time_left(mark, 1.0, now=100.0) == (4, 0.5)
    assert time_left(mark, 1.0, now=101.0) == (4, -0.5)


def test_fast_items_marked_somewhere_have_no_deadline() -> None:
    mark = new_mark()
    mark[MARK_POSITION] = MARK_SOMEWHERE
    position, left = time_left(mark, 1.0, now=1e9)
    assert position < 0 and left == float("inf")


def test_abandon_stops_the_worker_and_keeps_what_finished_before_the_stuck_item() -> None:
    mark = new_mark()
    mark[MARK_TOKEN] = 3.0
    values = [0, None, 2]
    failures = {1: Failure(ValueError("one"), ""), 3: Failure(ValueError("three"), "")}
    kept, failed = abandon(mark, values, failures, 2)
    assert mark[MARK_TOKEN] < 0  # the worker stops after the stuck item
    assert kept == [0, None] and kept is not values
    assert failed is not None and list(failed) == [1]
    assert abandon(new_mark(), [0], {}, 1) == ([0], None)


def test_overruns_are_flagged_after_the_fact_from_item_end_times() -> None:
    chunk = Chunk.fresh(0, 5, ["a", "b", "c"])
    result = ChunkResult(chunk, [1, 2, 3], started=10.0, finished=13.5,
                         item_ends=[10.5, 12.5, 13.0])
    flag_overruns(result, 1.0, "nothing could stop it")
    assert result.values == [1, None, 3]
    assert result.failures is not None and list(result.failures) == [1]
    assert str(result.failures[1].exception) == (
        "item 6 ('b') ran 2 s, over the 1 s timeout (nothing could stop it, so it ran to the end)"
    )


def test_untimed_items_are_not_flagged() -> None:
    result = ChunkResult(Chunk.fresh(0, 0, [1]), [1], started=0.0, finished=100.0)
    flag_overruns(result, 1.0, "why")
    assert result.failures is None


# -- where an interruption struck --------------------------------------------------------


def test_a_negative_interruption_place_is_one_of_two_named_constants() -> None:
    chunk = Chunk.fresh(0, 0, [1, 2])
    assert ChunkResult(chunk, [], interrupted_at=-2).interrupted_at is SOMEWHERE
    assert ChunkResult(chunk, []).interrupted_at is EVERY_ITEM
    assert ChunkResult(chunk, [], interrupted_at=1).interrupted_at == 1
    assert repr(SOMEWHERE) == "SOMEWHERE" and SOMEWHERE == MARK_SOMEWHERE
    assert pickle.loads(pickle.dumps(EVERY_ITEM)) is EVERY_ITEM
    with pytest.raises(ValueError, match="-3"):
        ChunkResult(chunk, [], interrupted_at=-3)
    assert isinstance(SOMEWHERE, Unplaced) and isinstance(SOMEWHERE, int)
