"""Results equal the list comprehension, in every mode, for any chunk size."""

from __future__ import annotations

import itertools
import os
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import parallax
from conftest import Backend
from helpers import add, double


@pytest.mark.parametrize("size", [0, 1, 10_007])
def test_map_equals_list_comprehension(backend: Backend, size: int) -> None:
    data = list(range(size))
    assert backend.map(double, data) == [double(x) for x in data]


def test_map_over_a_generator(backend: Backend) -> None:
    assert backend.map(double, (x for x in range(1_000))) == [x * 2 for x in range(1_000)]


@pytest.mark.parametrize("chunksize", [1, 3, 64, 5_000])
def test_explicit_chunk_sizes(backend: Backend, chunksize: int) -> None:
    data = range(777)
    assert backend.map(double, data, chunksize=chunksize) == [x * 2 for x in data]


def test_unordered_returns_every_result_once(backend: Backend) -> None:
    data = range(2_000)
    results = backend.map(double, data, ordered=False, chunksize=7)
    assert sorted(results) == [x * 2 for x in data]


def test_imap_is_lazy_and_ordered(backend: Backend) -> None:
    iterator = backend.imap(double, range(300), chunksize=5)
    assert next(iterator) == 0
    assert list(iterator) == [x * 2 for x in range(1, 300)]


def test_imap_over_an_endless_generator_stops_when_closed(backend: Backend) -> None:
    taken = []
    consumed = itertools.count()

    def endless() -> Iterator[int]:
        yield from consumed

    iterator = backend.imap(double, endless())
    for value in iterator:
        taken.append(value)
        if len(taken) == 1_000:
            break
    iterator.close()  # type: ignore[attr-defined]
    assert taken == [x * 2 for x in range(1_000)]
    # Bounded read-ahead: the input was not drained far past what was used.
    assert next(consumed) < 1_000 + 200_000


def test_starmap(backend: Backend) -> None:
    pairs = [(x, x + 1) for x in range(500)]
    assert backend.starmap(add, pairs) == [add(*pair) for pair in pairs]


def test_lambdas_and_closures_work(backend: Backend) -> None:
    offset = 17
    assert backend.map(lambda x: x + offset, range(100)) == [x + 17 for x in range(100)]


@settings(max_examples=15, deadline=None, suppress_health_check=list(HealthCheck))
@given(
    data=st.lists(st.integers(-1_000, 1_000), max_size=300),
    chunksize=st.one_of(st.just("auto"), st.integers(1, 50)),
    ordered=st.booleans(),
)
@pytest.mark.parametrize("mode", ["serial", "thread", "process"])
def test_property_same_as_list_comprehension(
    mode: str, data: list[int], chunksize: int | str, ordered: bool
) -> None:
    results = Backend(mode).map(double, data, chunksize=chunksize, ordered=ordered)
    expected = [double(x) for x in data]
    assert (results if ordered else sorted(results)) == (expected if ordered else sorted(expected))


def test_closing_imap_cancels_what_has_not_started(backend: Backend, tmp_path: Path) -> None:
    # Each call leaves a file: a counter in this process would not see the
    # calls that process and dask workers make.
    marks = str(tmp_path)

    def counted(x: int) -> int:
        Path(marks, str(x)).touch()
        time.sleep(0.01)
        return x

    iterator = backend.imap(counted, itertools.count(), workers=2, chunksize=1)
    assert next(iterator) == 0
    iterator.close()  # type: ignore[attr-defined]
    at_close = len(os.listdir(marks))
    time.sleep(0.3)
    assert len(os.listdir(marks)) - at_close <= 30  # only what was already running or queued


def test_unknown_length_input_is_not_batched_blindly(backend: Backend) -> None:
    pulled = itertools.count()

    def source() -> Iterator[int]:
        for value in itertools.count():
            next(pulled)
            yield value

    iterator = backend.imap(lambda x: time.sleep(0.01) or x, source(), workers=2)
    assert [next(iterator) for _ in range(20)] == list(range(20))
    iterator.close()  # type: ignore[attr-defined]
    assert next(pulled) < 20 + 200  # read ahead a bounded, small amount


@pytest.mark.parametrize("policy_mode", ["serial", "thread", "process"])
def test_ordered_raise_yields_everything_before_the_first_failure(policy_mode: str) -> None:
    def fail_late(x: int) -> int:
        if x == 2:
            time.sleep(0.2)
            raise ValueError("item 2")
        if x == 4:
            raise KeyError("item 4")
        return x

    seen: list[int] = []
    results = parallax.imap(fail_late, range(8), mode=policy_mode, workers=2, chunksize=1)
    with pytest.raises(ValueError, match="item 2"):
        seen.extend(results)
    assert seen == [0, 1]


def test_a_function_that_grows_its_own_input_runs_over_the_input_as_given(
    backend: Backend,
) -> None:
    # The last chunk of a list is a view, not a copy: it must not run on into
    # items appended while the run goes on (nor hang counting them).
    data = list(range(300))

    def grow(x: int) -> int:
        data.append(x)
        return x

    assert backend.map(grow, data) == list(range(300))
    assert backend.map(grow, data[:300], chunksize=7) == list(range(300))
