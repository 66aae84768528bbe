"""The chunk sizer and the chunker, on their own: no backend, no run."""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterator

import pytest

from parallax._chunking import (
    BALANCE,
    MIN_TARGET_SECONDS,
    UNKNOWN_LENGTH_CEILING,
    ChunkSizer,
    Tail,
    chunks,
)


def sizer(chunksize: int | str = "auto", *, workers: int = 2, total: int | None = None,
          overhead: float = 1e-5, item_seconds: float | None = None) -> ChunkSizer:
    return ChunkSizer(chunksize, workers=workers, total=total, chunk_overhead=overhead,
                      item_seconds=item_seconds)


# -- ChunkSizer --------------------------------------------------------------------------


def test_a_fixed_size_is_taken_as_given_and_learns_nothing() -> None:
    fixed = sizer(7, total=1000)
    fixed.observe(100, 50.0)
    assert fixed.item_seconds is None
    assert [fixed.next_size(consumed) for consumed in (0, 500, 999)] == [7, 7, 7]


def test_auto_hands_out_one_item_until_something_is_measured() -> None:
    auto = sizer(total=1_000_000)
    assert auto.item_seconds is None
    assert auto.next_size(0) == 1
    assert auto.next_size(1) == 1


def test_auto_aims_at_a_hundred_times_the_chunk_overhead() -> None:
    auto = sizer(overhead=1e-4)
    assert auto.target_seconds == pytest.approx(0.01)
    auto.observe(10, 10 * 1e-5)  # 10 µs per item
    assert auto.item_seconds == pytest.approx(1e-5)
    assert auto.next_size(0) == math.ceil(auto.target_seconds / 1e-5)
    assert 999 <= auto.next_size(0) <= 1001


def test_the_target_never_drops_below_the_minimum_duration() -> None:
    auto = sizer(overhead=1e-9)
    assert auto.target_seconds == MIN_TARGET_SECONDS
    auto.observe(1, 1e-5)
    assert auto.next_size(0) == math.ceil(MIN_TARGET_SECONDS / 1e-5)


def test_later_measurements_move_the_estimate_by_a_weighted_average() -> None:
    auto = sizer()
    auto.observe(4, 4.0)  # 1 s per item: taken as is
    auto.observe(2, 1.0)  # 0.5 s per item
    assert auto.item_seconds == pytest.approx(0.7 * 1.0 + 0.3 * 0.5)
    auto.observe(0, 1.0)  # nothing ran: no news
    assert auto.item_seconds == pytest.approx(0.85)


def test_a_known_length_keeps_several_chunks_per_worker() -> None:
    auto = sizer(workers=2, total=8000, item_seconds=1e-9)  # cheap items: the cap decides
    assert auto.next_size(0) == math.ceil(8000 / (BALANCE * 2))


def test_chunks_shrink_towards_the_end_but_not_below_a_millisecond_of_work() -> None:
    per_item = 1e-6
    auto = sizer(workers=2, total=100_000, overhead=1e-4, item_seconds=per_item)
    full = math.ceil(auto.target_seconds / per_item)  # 10 ms of work
    assert 9_000 < full <= 10_001
    assert auto.next_size(0) == full
    # 10,000 left: half a share per worker...
    assert auto.next_size(90_000) == 2_500
    # ...but never under 1 ms of work (about 1,000 items)
    assert auto.next_size(99_900) == math.ceil(MIN_TARGET_SECONDS / per_item)


def test_an_unknown_length_is_capped_for_bounded_memory() -> None:
    auto = sizer(item_seconds=1e-12)
    assert auto.next_size(0) == UNKNOWN_LENGTH_CEILING


def test_rest_at_once_hands_out_everything_that_is_left() -> None:
    auto = sizer(total=500)
    auto.rest_at_once = True
    assert auto.next_size(120) == 380


def test_assume_takes_a_probe_measurement_as_measured() -> None:
    auto = sizer(overhead=1e-4)
    auto.assume(1e-3)
    assert auto.item_seconds == 1e-3
    assert auto.next_size(0) in (10, 11)  # 10 ms of work, give or take a rounding


def test_largest_remembers_the_biggest_chunk_handed_out() -> None:
    auto = sizer(7)
    assert auto.largest == 0
    auto.next_size(0)
    assert auto.largest == 7


# -- chunks() ----------------------------------------------------------------------------


def layout(source: object, chunksize: int, **kw: int) -> list[tuple[int, int, list[int]]]:
    """(seq, start, items) of every chunk."""
    return [(chunk.seq, chunk.start, list(chunk.items))
            for chunk in chunks(source, sizer(chunksize), **kw)]  # type: ignore[arg-type]


def test_a_sequence_is_cut_into_consecutive_numbered_chunks() -> None:
    assert layout(list(range(10)), 4) == [
        (0, 0, [0, 1, 2, 3]), (1, 4, [4, 5, 6, 7]), (2, 8, [8, 9]),
    ]


def test_chunks_of_a_range_are_ranges_and_carry_every_position() -> None:
    cut = list(chunks(range(100, 107), sizer(3)))
    assert [chunk.items for chunk in cut] == [range(100, 103), range(103, 106), range(106, 107)]
    assert [list(chunk.positions) for chunk in cut] == [[0, 1, 2], [0, 1, 2], [0]]
    assert cut[1].index_of(2) == 5


def test_the_chunk_running_to_the_end_of_a_list_is_a_view_of_it() -> None:
    data: list[object] = [0, 1, 2, 3, 4]
    cut = list(chunks(data, sizer(3)))
    assert isinstance(cut[-1].items, Tail)
    data[4] = "changed"  # a view sees it; a copy would not
    assert list(cut[-1].items) == [3, "changed"]


def test_a_sequence_is_read_from_first_index_with_numbering_from_first_seq() -> None:
    assert layout(list(range(6)), 2, first_index=3, first_seq=1) == [
        (1, 3, [3, 4]), (2, 5, [5]),
    ]


def test_a_list_that_grows_during_the_run_is_cut_at_its_starting_length() -> None:
    data = [0, 1, 2]
    source = chunks(data, sizer(2))
    first = next(source)
    data.extend([3, 4])
    assert list(first.items) + [item for chunk in source for item in chunk.items] == [0, 1, 2]


def test_an_iterator_is_read_lazily_from_where_it_stands() -> None:
    taken: list[int] = []

    def numbers() -> Iterator[int]:
        for number in itertools.count():
            taken.append(number)
            yield number

    source = numbers()
    next(source)  # taken already (by the probe)
    cut = chunks(source, sizer(3), first_index=1, first_seq=1)
    chunk = next(cut)
    assert (chunk.seq, chunk.start, chunk.items) == (1, 1, [1, 2, 3])
    assert taken == [0, 1, 2, 3]  # nothing read ahead of the chunk


def test_an_empty_input_makes_no_chunk() -> None:
    assert list(chunks([], sizer(3))) == []
    assert list(chunks(iter([]), sizer(3))) == []


def test_a_tuples_tail_counts_what_was_taken_and_ends_where_it_does() -> None:
    data = tuple(range(10))
    tail = Tail(data, 4)
    items, taken = tail.counted()
    assert (next(items), next(items), taken()) == (4, 5, 2)
    assert list(items) == [6, 7, 8, 9] and taken() == 6
    assert list(Tail(data, 4, 7)) == [4, 5, 6]  # a tail short of the end stays bounded


def test_a_lists_tail_counts_what_was_taken_though_the_list_grows() -> None:
    data = list(range(6))
    items, taken = Tail(data, 2).counted()
    assert next(items) == 2 and taken() == 1
    data.extend([6, 7])
    assert list(items) == [3, 4, 5] and taken() == 4
